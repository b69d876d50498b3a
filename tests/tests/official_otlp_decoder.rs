//! smolder's OTLP output read by the official `opentelemetry-proto` Python
//! package (pip), as `ProfilesData`, as `ExportProfilesServiceRequest` and as
//! OTLP/JSON, with the schema's zero-value and index invariants checked from
//! the Python side (tests/oracles/otlp_check.py).

use smolder_e2e::{python_check, rich_profile, smolder_ok};
use smolder_profiles_proto::{encode_binary, gzip, sample_weight, ProfileView};

#[test]
fn official_decoder_reads_smolder_otlp_as_data_request_and_json() {
    let data = rich_profile();
    let view = ProfileView::new(&data);
    let total: i64 = view
        .profiles()
        .flat_map(|(_, p)| p.samples.iter())
        .map(sample_weight)
        .sum();
    let samples: usize = view.profiles().map(|(_, p)| p.samples.len()).sum();

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("profile.pb");
    std::fs::write(&plain, encode_binary(&data)).unwrap();
    let gz = dir.path().join("profile.pb.gz");
    std::fs::write(&gz, gzip(&encode_binary(&data))).unwrap();
    let json = dir.path().join("profile.json");
    smolder_ok([
        "convert".as_ref(),
        plain.as_os_str(),
        "-o".as_ref(),
        json.as_os_str(),
        "-f".as_ref(),
        "otlp-json".as_ref(),
    ]);

    for (file, kind) in [
        (&plain, "data"),
        (&plain, "request"),
        (&gz, "data"),
        (&gz, "request"),
        (&json, "json"),
    ] {
        let summary = python_check(file, kind);
        assert_eq!(summary["total"], total, "{kind}: {summary}");
        assert_eq!(summary["samples"], samples, "{kind}: {summary}");
        assert_eq!(
            summary["resources"].as_array().map(Vec::len),
            Some(2),
            "{kind}: {summary}"
        );
        assert_eq!(
            summary["resources"][0]["process.executable.name"]["stringValue"],
            "server"
        );
        // hash_bytes is the leaf of one stack: 3 + 4 samples per process.
        assert_eq!(summary["leaves"]["hash_bytes"], 14, "{kind}: {summary}");
        // inlined parse_header is the innermost line of the handle_request location
        assert_eq!(summary["leaves"]["parse_header"], 22, "{kind}: {summary}");
    }
}

#[test]
fn official_decoder_reads_otlp_converted_from_folded_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("in.folded");
    std::fs::write(&folded, "main;work;leaf 5\nmain;other 2\nmain;sys_[k] 1\n").unwrap();
    let out = dir.path().join("out.pb");
    smolder_ok([
        "convert".as_ref(),
        folded.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "-f".as_ref(),
        "otlp".as_ref(),
    ]);
    let summary = python_check(&out, "request");
    assert_eq!(summary["total"], 8);
    assert_eq!(summary["leaves"]["leaf"], 5);
}
