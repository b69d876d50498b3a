//! Arbitrary bytes as pprof `profile.proto` (plain or gzip): `decode_pprof`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = smolder_profiles_proto::decode_pprof(data) {
        common::accepted(&profile);
    }
});
