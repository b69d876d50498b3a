//! Arbitrary bytes through the content sniffer: `detect`, then
//! `read_profile` (detect + gunzip + the decoder it picked + validate).
//! `read_profile` must agree with `detect` on the format it reports.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let detected = smolder_profiles_proto::detect(data);
    if let Ok(decoded) = smolder_profiles_proto::read_profile(data) {
        let (format, gzip) = detected.expect("read_profile accepted what detect rejected");
        assert_eq!((decoded.format, decoded.gzip), (format, gzip));
        common::accepted(&decoded.data);
    }
});
