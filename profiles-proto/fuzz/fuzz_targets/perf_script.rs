//! Arbitrary bytes as `perf script` text: `read_perf_script` on the slice and
//! `read_perf_script_from` on a stream (a tiny `BufReader` capacity, so the
//! format sniffing sees only the first bytes and lines cross buffer
//! boundaries). The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::let_the_library_catch_panics();
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let result = if mode & 1 == 0 {
        smolder_profiles_proto::read_perf_script(text)
    } else {
        let capacity = 1 + usize::from(mode >> 1);
        smolder_profiles_proto::read_perf_script_from(std::io::BufReader::with_capacity(
            capacity, text,
        ))
    };
    if let Ok(profile) = result {
        common::accepted(&profile);
    }
});
