//! Arbitrary bytes, made UTF-8 lossily, as folded stacks: `read_folded`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(profile) = smolder_profiles_proto::read_folded(&text) {
        common::accepted(&profile);
    }
});
