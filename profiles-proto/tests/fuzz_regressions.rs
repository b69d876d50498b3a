//! Inputs the cargo-fuzz targets of `profiles-proto/fuzz` found to panic,
//! hang or blow up memory, minimised, under
//! `profiles-proto/fuzz/regressions/<target>/`. Each is run through the body
//! of the target that found it and must return (Ok or Err) without
//! panicking, within a time limit. See bench/FUZZING.md.

mod support;

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{
    decode_binary, decode_json, decode_pprof, detect, fold, read_folded, read_perf_script,
    read_perf_script_from, read_profile, validate, FoldOptions,
};

/// What the targets do with a profile a decoder accepted.
fn accepted(data: &ProfilesData) {
    validate(data).expect("a decoded profile passes validate");
    let _ = fold(data, &FoldOptions::default());
}

#[test]
fn otlp_binary() {
    support::check(env!("CARGO_MANIFEST_DIR"), "otlp_binary", |data| {
        if let Ok(p) = decode_binary(data) {
            accepted(&p);
        }
    });
}

#[test]
fn otlp_json() {
    support::check(env!("CARGO_MANIFEST_DIR"), "otlp_json", |data| {
        if let Ok(p) = decode_json(data) {
            accepted(&p);
        }
    });
}

#[test]
fn pprof() {
    support::check(env!("CARGO_MANIFEST_DIR"), "pprof", |data| {
        if let Ok(p) = decode_pprof(data) {
            accepted(&p);
        }
    });
}

#[test]
fn folded() {
    support::check(env!("CARGO_MANIFEST_DIR"), "folded", |data| {
        if let Ok(p) = read_folded(&String::from_utf8_lossy(data)) {
            accepted(&p);
        }
    });
}

#[test]
fn perf_script() {
    // As the target: the first byte picks the slice or a small BufReader.
    support::check(env!("CARGO_MANIFEST_DIR"), "perf_script", |data| {
        let Some((&mode, text)) = data.split_first() else {
            return;
        };
        let result = if mode & 1 == 0 {
            read_perf_script(text)
        } else {
            let capacity = 1 + usize::from(mode >> 1);
            read_perf_script_from(std::io::BufReader::with_capacity(capacity, text))
        };
        if let Ok(p) = result {
            accepted(&p);
        }
    });
}

#[test]
fn detect_and_read_profile() {
    support::check(env!("CARGO_MANIFEST_DIR"), "detect", |data| {
        let _ = detect(data);
        if let Ok(d) = read_profile(data) {
            accepted(&d.data);
        }
    });
}
