//! Arbitrary bytes as OTLP binary (plain or gzip): `decode_binary`, then
//! `validate` on what it accepts. Err is fine; panics, aborts, hangs and huge
//! allocations are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = smolder_profiles_proto::decode_binary(data) {
        common::accepted(&profile);
    }
});
