//! Bad input to the CLI: every case gives exit status 1 and a one-line
//! error naming the file and what is wrong, never a panic, and never an
//! output file.

use std::path::{Path, PathBuf};

use smolder_e2e::{rich_profile, smolder};
use smolder_profiles_proto::{encode_binary, gzip, write_profile, Format};

fn expect_failure(input: &Path, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "flamegraph".into(),
            input.as_os_str().to_owned(),
            "-o".into(),
            dir.path().join("out.svg").into_os_string(),
        ],
        vec![
            "convert".into(),
            input.as_os_str().to_owned(),
            "-o".into(),
            dir.path().join("out.pb").into_os_string(),
            "-f".into(),
            "otlp".into(),
        ],
    ] {
        let out = smolder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr}"
        );
        assert!(
            stderr.contains(&input.display().to_string()),
            "error does not name the file: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(needle),
            "error does not say {needle:?}: {stderr}"
        );
        let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "output left behind: {left:?}");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn missing_file_directory_and_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    expect_failure(&dir.path().join("nope.pb"), "no such file");
    let sub = dir.path().join("adir");
    std::fs::create_dir(&sub).unwrap();
    expect_failure(&sub, "directory");
    expect_failure(&write(dir.path(), "empty", b""), "empty");
}

#[test]
fn truncated_and_garbled_files_of_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = rich_profile();
    let otlp = encode_binary(&data);
    let pprof = write_profile(&data, Format::Pprof).unwrap();
    let json = write_profile(&data, Format::OtlpJson).unwrap();
    // Truncated protobuf and gzip streams.
    expect_failure(&write(dir.path(), "trunc.pb", &otlp[..otlp.len() / 2]), "");
    expect_failure(
        &write(dir.path(), "trunc.pb.gz", &gzip(&otlp)[..200]),
        "gzip",
    );
    expect_failure(
        &write(dir.path(), "trunc.pprof", &pprof[..pprof.len() / 2]),
        "gzip",
    );
    let plain_pprof = smolder_profiles_proto::gunzip(&pprof).unwrap();
    expect_failure(
        &write(
            dir.path(),
            "trunc-plain.pprof",
            &plain_pprof[..plain_pprof.len() - 7],
        ),
        "",
    );
    expect_failure(
        &write(dir.path(), "trunc.json", &json[..json.len() / 2]),
        "json",
    );
    // Garbled bytes.
    let mut garbled = otlp.clone();
    for b in garbled.iter_mut().skip(10).step_by(7) {
        *b ^= 0x5a;
    }
    expect_failure(&write(dir.path(), "garbled.pb", &garbled), "");
    expect_failure(
        &write(
            dir.path(),
            "random.bin",
            &(0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect::<Vec<_>>(),
        ),
        "",
    );
    expect_failure(
        &write(
            dir.path(),
            "garbled.json",
            b"{\"resourceProfiles\": [{\"scopeProfiles\": 7}]}",
        ),
        "json",
    );
    expect_failure(
        &write(
            dir.path(),
            "bad.folded",
            b"main;work 10\nmain;oops notanumber\n",
        ),
        "line 2",
    );
    expect_failure(
        &write(
            dir.path(),
            "words.txt",
            b"hello there\nthis is not a profile\n",
        ),
        "not a profile",
    );
    expect_failure(
        &write(
            dir.path(),
            "bad.perf",
            b"prog 12 [000] 1.0: cpu-clock:\n\tzzzz not a frame\n",
        ),
        "",
    );
}

#[test]
fn index_out_of_range_inside_an_otlp_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = rich_profile();
    data.dictionary.as_mut().unwrap().location_table[2].lines[0].function_index = 9999;
    expect_failure(
        &write(dir.path(), "badindex.pb", &encode_binary(&data)),
        "out of range",
    );
    let mut data = rich_profile();
    data.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = -3;
    expect_failure(
        &write(dir.path(), "negindex.pb", &encode_binary(&data)),
        "out of range",
    );
    let mut data = rich_profile();
    data.dictionary.as_mut().unwrap().string_table[0] = "not empty".into();
    expect_failure(
        &write(dir.path(), "badzero.pb", &encode_binary(&data)),
        "zero value",
    );
}
