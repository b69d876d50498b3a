//! Arbitrary bytes as OTLP/JSON: `decode_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = smolder_profiles_proto::decode_json(data) {
        common::accepted(&profile);
    }
});
