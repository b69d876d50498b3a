//! Arbitrary bytes as `perf script` text, read both ways: straight to
//! folded stacks (`read_stacks_from`, the flamegraph's fast path) and as an
//! OTLP profile (`read_profile_from`, inferno's collapser) then folded. The
//! first byte picks the fold options and the reader's buffer size. Where
//! the OTLP path reads the text as `perf script`, the fast path must give
//! the same stacks; where the OTLP path fails (inferno panics on some
//! names), the fast path may read it, but must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smolder_profiles_proto::{
    read_profile_from, read_stacks_from, FoldOptions, FoldedStacks, Format, ReadOptions,
};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::let_the_library_catch_panics();
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let options = FoldOptions {
        process_roots: mode & 1 != 0,
        thread_roots: mode & 2 != 0,
        kernel_frames: mode & 4 == 0,
        inlined_frames: mode & 8 == 0,
        ..FoldOptions::default()
    };
    let read = ReadOptions::default();
    let capacity = 1 + usize::from(mode >> 4);
    let fast = read_stacks_from(std::io::BufReader::with_capacity(capacity, text), &read, &options);
    let Ok(slow) = read_profile_from(text, &read) else {
        return;
    };
    if slow.format != Format::PerfScript {
        return;
    }
    common::accepted(&slow.data);
    let slow = FoldedStacks::of(&slow.data, &options);
    match fast {
        Ok(fast) => assert_eq!(fast, slow, "fast path and OTLP path disagree"),
        Err(e) => panic!("the fast path refused what the OTLP path read: {e}"),
    }
});
