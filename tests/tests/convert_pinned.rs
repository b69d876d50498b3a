//! `smolder convert` writes the same bytes as it did before the flamegraph
//! fast path of issue 18: the output of each format for committed fixtures
//! is pinned by a hash taken with the binary of commit 747719e (built from
//! `git archive 747719e`). A change that alters an output on purpose
//! updates the hash here, in the same commit, and says why.
//!
//! Left out: `-f cpuprofile` of `workload.perf.txt.gz`, on which 747719e
//! asked for 80 GB and aborted (cpu-clock periods in nanoseconds expanded
//! into one entry per nanosecond); fixed since, it is checked by
//! `bad_input::cpuprofile_of_a_perf_recording_has_one_sample_per_event`.

use smolder_e2e::{smolder_ok, workspace_root};

/// FNV-1a, 64 bits: stable across Rust versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where each fixture is, below the workspace root.
const FIXTURES: [(&str, &str); 3] = [
    ("workload.perf.txt.gz", "bench/fixtures"),
    ("perf_g_mixed.folded", "profiles-proto/fuzz/corpus/folded"),
    ("annotated.folded", "profiles-proto/fuzz/corpus/folded"),
];

/// `(fixture, convert arguments, FNV-1a of the output)`, from 747719e.
const PINNED: &[(&str, &str, u64)] = &[
    ("workload.perf.txt.gz", "-f otlp", 0x82793ab59cf73019),
    ("workload.perf.txt.gz", "-f otlp-json", 0x90779ff24787ff68),
    ("workload.perf.txt.gz", "-f pprof", 0x7283f238c7f465fc),
    ("workload.perf.txt.gz", "-f folded", 0xa7ff397420547007),
    (
        "workload.perf.txt.gz",
        "-f folded --process-root",
        0x904435d0c6eacb4b,
    ),
    ("workload.perf.txt.gz", "-f speedscope", 0xdd25a4b3dc19cc95),
    ("perf_g_mixed.folded", "-f otlp", 0xc541acd3e5b55de3),
    ("perf_g_mixed.folded", "-f otlp-json", 0x5412268b9ccca96c),
    ("perf_g_mixed.folded", "-f pprof", 0x8bd9cda3ba1777fe),
    ("perf_g_mixed.folded", "-f folded", 0x5eba6e82fa3510cb),
    (
        "perf_g_mixed.folded",
        "-f folded --process-root",
        0x5eba6e82fa3510cb,
    ),
    ("perf_g_mixed.folded", "-f speedscope", 0xa28bc1d250a0a255),
    ("perf_g_mixed.folded", "-f cpuprofile", 0xb9a2254d1da3f721),
    ("annotated.folded", "-f otlp", 0x86329992535c8e44),
    ("annotated.folded", "-f otlp-json", 0xebb8b3033a28dbaa),
    ("annotated.folded", "-f pprof", 0xf5054093f2e2a6f7),
    ("annotated.folded", "-f folded", 0x3ad07fb3f3fffa8b),
    (
        "annotated.folded",
        "-f folded --process-root",
        0x3ad07fb3f3fffa8b,
    ),
    ("annotated.folded", "-f speedscope", 0x95ee541c6efe63c0),
    ("annotated.folded", "-f cpuprofile", 0x012ae6a172ae30b4),
];

#[test]
fn convert_outputs_are_byte_identical_to_before() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut changed = Vec::new();
    for &(fixture, args, pinned) in PINNED {
        let (_, folder) = FIXTURES
            .iter()
            .find(|(name, _)| *name == fixture)
            .expect("a known fixture");
        let input = workspace_root().join(folder).join(fixture);
        let mut all: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), input.as_os_str()];
        all.extend(["-o".as_ref(), out.as_os_str()]);
        all.extend(args.split(' ').map(std::ffi::OsStr::new));
        smolder_ok(all);
        let bytes = std::fs::read(&out).unwrap();
        assert!(!bytes.is_empty(), "{fixture} {args}: empty output");
        let hash = fnv1a(&bytes);
        if hash != pinned {
            changed.push(format!(
                "{fixture} {args}: {hash:#018x}, pinned {pinned:#018x}"
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "outputs changed:\n{}",
        changed.join("\n")
    );
}
