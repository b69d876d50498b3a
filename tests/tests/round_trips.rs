//! Round trips through every format smolder writes: nothing of the
//! profile's samples, stacks, names, files or lines may be lost.

use smolder_e2e::{canonical_samples, rich_profile};
use smolder_profiles_proto::*;

#[test]
fn builder_to_otlp_binary_and_back_is_the_same_profile() {
    let data = rich_profile();
    validate(&data).unwrap();
    for bytes in [encode_binary(&data), gzip(&encode_binary(&data))] {
        let decoded = read_profile(&bytes).unwrap();
        assert_eq!(decoded.format, Format::OtlpBinary);
        assert_eq!(decoded.data, data);
    }
    let request = to_export_request(data.clone());
    let bytes = prost::Message::encode_to_vec(&request);
    assert_eq!(read_profile(&bytes).unwrap().data, data);
}

#[test]
fn otlp_json_round_trip_is_the_same_profile() {
    let data = rich_profile();
    let json = write_profile(&data, Format::OtlpJson).unwrap();
    assert_eq!(read_profile(&json).unwrap().data, data);
}

#[test]
fn otlp_to_pprof_and_back_keeps_every_sample_stack_name_file_and_line() {
    let data = rich_profile();
    let pprof = write_profile(&data, Format::Pprof).unwrap();
    let back = read_profile(&pprof).unwrap();
    assert_eq!(back.format, Format::Pprof);
    let (want, got) = (canonical_samples(&data), canonical_samples(&back.data));
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    // and pprof -> OTLP -> pprof is stable
    let again = write_profile(&back.data, Format::Pprof).unwrap();
    assert_eq!(canonical_samples(&read_profile(&again).unwrap().data), want);
}

#[test]
fn folded_to_otlp_to_folded_is_identical() {
    // Realistic folded text: what inferno-collapse-perf makes of a C program
    // with kernel frames, plus inlined frames as smolder writes them.
    let folded = "\
hot;__libc_start_call_main;main;run;dispatch;hot_alpha 601
hot;__libc_start_call_main;main;run;dispatch;hot_beta 298
hot;__libc_start_call_main;main;run;dispatch;hot_gamma 99
hot;__libc_start_call_main;main;run;dispatch;hot_alpha;asm_sysvec_apic_timer_interrupt_[k];sysvec_apic_timer_interrupt_[k] 2
hot;_start;__libc_start_main_impl;__libc_init_first;init_cacheinfo_[i];handle_intel_[i] 1
hot;[unknown];write;entry_SYSCALL_64_[k];do_syscall_64_[k];ksys_write_[k] 5
";
    let data = read_profile(folded.as_bytes()).unwrap();
    assert_eq!(data.format, Format::Folded);
    let out = write_profile(&data.data, Format::Folded).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), folded);
    // also through the OTLP encodings
    for format in [Format::OtlpBinary, Format::OtlpJson, Format::Pprof] {
        let bytes = write_profile(&data.data, format).unwrap();
        let back = read_profile(&bytes).unwrap().data;
        assert_eq!(
            String::from_utf8(write_profile(&back, Format::Folded).unwrap()).unwrap(),
            folded,
            "{format}"
        );
    }
}

#[test]
fn cli_convert_round_trips_through_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start.pb");
    std::fs::write(&start, encode_binary(&rich_profile())).unwrap();
    let mut prev = start;
    for (i, format) in ["otlp-json", "pprof", "otlp", "folded"].iter().enumerate() {
        let out = dir.path().join(format!("step{i}.{format}"));
        smolder_e2e::smolder_ok([
            "convert".as_ref(),
            prev.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--format".as_ref(),
            format.as_ref(),
        ]);
        prev = out;
    }
    let folded = std::fs::read_to_string(&prev).unwrap();
    let direct =
        String::from_utf8(write_profile(&rich_profile(), Format::Folded).unwrap()).unwrap();
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&folded), sorted(&direct));
}

/// `-o` naming a FIFO (or `/dev/null`, a terminal) writes into it: the
/// output is not renamed over it, which would replace the device or FIFO
/// with a regular file.
#[test]
fn cli_output_to_a_fifo_is_written_into_it_and_the_fifo_stays() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start.pb");
    std::fs::write(&start, encode_binary(&rich_profile())).unwrap();
    let fifo = dir.path().join("out.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    smolder_e2e::smolder_ok([
        "convert".as_ref(),
        start.as_os_str(),
        "-o".as_ref(),
        fifo.as_os_str(),
        "--format".as_ref(),
        "folded".as_ref(),
    ]);
    // Checked before joining: a reader of a replaced FIFO waits forever.
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
    let read = reader.join().unwrap();
    let direct =
        String::from_utf8(write_profile(&rich_profile(), Format::Folded).unwrap()).unwrap();
    assert_eq!(read, direct);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "no temporary file left beside it: {left:?}");
}
