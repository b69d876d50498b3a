//! Arbitrary bytes through the content sniffer: `detect`, then
//! `read_profile` (detect + gunzip + the decoder it picked + validate), then
//! the same bytes as a stream, `read_profile_from`, handed out a few bytes
//! per `read` call. Both readers must agree with `detect` on the format.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use smolder_profiles_proto::{detect, read_profile, read_profile_from, ReadOptions};

#[path = "common.rs"]
mod common;

/// A reader that returns at most `chunk` bytes per call.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    common::let_the_library_catch_panics();
    let detected = detect(data);
    if let Ok(decoded) = read_profile(data) {
        let (format, gzip) = detected
            .as_ref()
            .expect("read_profile accepted what detect rejected");
        assert_eq!((decoded.format, decoded.gzip), (*format, *gzip));
        common::accepted(&decoded.data);
    }
    let stream = Chunked {
        data,
        chunk: 1 + data.len() % 13,
    };
    if let Ok(decoded) = read_profile_from(stream, &ReadOptions::default()) {
        let (format, gzip) = detected
            .as_ref()
            .expect("read_profile_from accepted what detect rejected");
        assert_eq!((decoded.format, decoded.gzip), (*format, *gzip));
        common::accepted(&decoded.data);
    }
});
