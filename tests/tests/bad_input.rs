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

/// Runs smolder with `args` and returns its exit code, stderr and peak
/// resident set size in KiB (from `wait4`, for this child alone).
// The child is reaped by `wait4`, which clippy does not see.
#[allow(clippy::zombie_processes)]
fn smolder_with_peak_rss<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String, i64) {
    use std::io::Read;
    let mut child = std::process::Command::new(smolder_e2e::smolder_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run smolder");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with pointers to locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, stderr, usage.ru_maxrss)
}

/// A refused input: exit 1, one line naming the file and `needle`, well
/// under 1 GiB of memory.
fn expect_bounded_failure(input: &Path, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    let (code, stderr, peak_kib) = smolder_with_peak_rss(&[
        "flamegraph".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&input.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(needle),
        "error does not say {needle:?}: {stderr}"
    );
    assert!(
        peak_kib < 800 * 1024,
        "peak RSS {peak_kib} KiB for a refused input"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Field 1 (OTLP's `resource_profiles`) with a length of 4 GiB: the head
/// of a file that looks like OTLP until it is read in full.
const HUGE_OTLP_HEAD: &[u8] = &[0x0a, 0x80, 0x80, 0x80, 0x80, 0x10];

#[test]
fn sparse_64_gib_files_are_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("sparse-zeros");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    expect_bounded_failure(&zeros, "not protobuf");
    expect_failure(&zeros, "not protobuf");
    let otlp = write(dir.path(), "sparse.pb", HUGE_OTLP_HEAD);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&otlp)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    expect_bounded_failure(&otlp, "--max-input-size");
    expect_failure(&otlp, "limit of 536870912 bytes");
    // The limit can be raised (and lowered) on the command line.
    let small = write(dir.path(), "small.pb", &encode_binary(&rich_profile()));
    let out = dir.path().join("out.folded");
    let args = |size: &str| -> Vec<std::ffi::OsString> {
        vec![
            "convert".into(),
            small.clone().into(),
            "-o".into(),
            out.clone().into(),
            "-f".into(),
            "folded".into(),
            "--max-input-size".into(),
            size.into(),
        ]
    };
    let refused = smolder(args("100"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("limit of 100 bytes"));
    assert!(smolder(args("1M")).status.success());
}

#[test]
fn gzip_bomb_is_cut_at_the_limit_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    require_gzip();
    // 5 GiB after decompression: an OTLP-looking head, then 80 gzip
    // members of 64 MiB of zeros each (one member compressed once, repeated).
    let member = std::process::Command::new("sh")
        .args(["-c", "head -c 64M /dev/zero | gzip -1"])
        .output()
        .unwrap()
        .stdout;
    let mut bomb = gzip(HUGE_OTLP_HEAD);
    for _ in 0..80 {
        bomb.extend_from_slice(&member);
    }
    let path = write(dir.path(), "bomb.pb.gz", &bomb);
    expect_bounded_failure(&path, "--max-input-size");
    // Text bombs are refused by what they hold, not by size: zeros are binary.
    let zeros = write(dir.path(), "zeros.gz", &member);
    expect_bounded_failure(&zeros, "not protobuf");
}

fn require_gzip() {
    smolder_e2e::require_tool("gzip", "gzip");
}

#[test]
fn fifo_without_writer_reads_as_empty_and_stdin_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let probe = fifo.clone();
    std::thread::spawn(move || {
        expect_failure(&probe, "empty");
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("smolder hangs on a FIFO without a writer");

    // A FIFO with a writer is read as a stream.
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        std::fs::write(&writer_path, b"main;work 3\nmain;rest 1\n").unwrap();
    });
    let out = dir.path().join("from-fifo.folded");
    smolder_e2e::smolder_ok([
        "convert".as_ref(),
        fifo.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    writer.join().unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "main;work 3\nmain;rest 1\n"
    );

    // `-` is standard input.
    let mut child = std::process::Command::new(smolder_e2e::smolder_bin())
        .args(["convert", "-", "-o", "-", "-f", "folded"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"a;b 2\n").unwrap();
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success());
    assert_eq!(result.stdout, b"a;b 2\n");
}

#[test]
fn output_path_that_is_a_directory_leaves_nothing_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.folded", b"main;work 3\n");
    let out_dir = dir.path().join("outdir");
    std::fs::create_dir(&out_dir).unwrap();
    for args in [
        vec!["convert", "-f", "otlp", "-o"],
        vec!["flamegraph", "-o"],
    ] {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        args.push(out_dir.clone().into());
        args.push(input.clone().into());
        let out = smolder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert_eq!(stderr.matches("is a directory").count(), 1, "{stderr}");
        assert!(stderr.contains(&out_dir.display().to_string()), "{stderr}");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(&out_dir).unwrap())
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["in.folded", "outdir"], "temporary file left behind");
    }
}

#[test]
fn counts_saturate_instead_of_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let max = i64::MAX;
    let input = write(
        dir.path(),
        "big.folded",
        format!("a;b {max}\na;b 1\nc 99999999999999999999\n").as_bytes(),
    );
    let out = smolder([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("a;b {max}\nc {max}\n")
    );
    // perf script periods: one stack whose periods add up past i64::MAX.
    let half = 5_000_000_000_000_000_000u64;
    let event = |t: u32| {
        format!("prog 12/12 [000] 1.{t:06}: {half} cycles: \n\t4005d0 hot+0x10 (/tmp/prog)\n\n")
    };
    let perf = write(dir.path(), "big.perf", (event(1) + &event(2)).as_bytes());
    let out = smolder([
        "convert".as_ref(),
        perf.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hot {max}\n"));
    // Past 2^64 the collapser itself would wrap: refused.
    let huge = |t: u32| {
        format!(
            "prog 12/12 [000] 1.{t:06}: {} cycles: \n\t4005d0 hot+0x10 (/tmp/prog)\n\n",
            u64::MAX
        )
    };
    expect_failure(
        &write(dir.path(), "wrap.perf", (huge(1) + &huge(2)).as_bytes()),
        "past 2^64",
    );
}

#[test]
fn folded_with_a_long_first_line_or_non_utf8_names_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<String> = (0..20_000).map(|i| format!("frame_{i}")).collect();
    let long = format!("{} 3\nmain 1\n", frames.join(";"));
    assert!(long.find('\n').unwrap() > 64 * 1024);
    let input = write(dir.path(), "long.folded", long.as_bytes());
    let out = smolder([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), long);

    let latin1 = write(
        dir.path(),
        "latin1.folded",
        b"main;caf\xe9;\xff\xfe 2\nmain 1\n",
    );
    let out = smolder([
        "convert".as_ref(),
        latin1.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "main;caf\u{fffd};\u{fffd}\u{fffd} 2\nmain 1\n"
    );
    // Control bytes still mean binary.
    expect_failure(
        &write(dir.path(), "ctl.folded", b"main;w\x01rk 2\n"),
        "not protobuf",
    );
}

#[test]
fn perf_script_header_with_a_multi_line_cmdline_is_read_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# ========\n# captured on    : Thu Jan  1 00:00:00 2026\n\
        # cmdline : /usr/bin/perf record -- python3 -c import x\nfoo()\n\
        # CPU 0: Core ID 0, Die ID 0, Socket ID 0\n# ========\n#\n\n\
        prog 12/12 [000] 1.000001: 1000 cycles: \n\t4005d0 hot+0x10 (/tmp/prog)\n\t4005e0 main+0x10 (/tmp/prog)\n\n";
    let input = write(dir.path(), "cmdline.perf", text.as_bytes());
    let out = smolder([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "main;hot 1000\n");
}

#[test]
fn absurd_durations_and_frequencies_are_refused_when_parsed() {
    for args in [
        vec!["record", "-d", "1e20", "-a"],
        vec!["record", "-d", "inf", "-a"],
        vec!["record", "-F", "0", "-a"],
        vec!["record", "-F", "1000000", "-a"],
        vec!["agent", "-i", "1e20", "-F", "19"],
        vec!["agent", "-i", "NaN", "-F", "19"],
        vec!["agent", "-F", "0", "-i", "10s"],
    ] {
        let out = smolder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(args[2]), "{args:?}: {stderr}");
    }
}

#[test]
fn zero_filled_link_table_0_written_by_the_official_python_package_is_accepted() {
    smolder_e2e::require_tool("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zero-link.pb");
    let script = r#"
import sys
from opentelemetry.proto.profiles.v1development import profiles_pb2 as p
d = p.ProfilesDictionary(
    mapping_table=[p.Mapping()],
    location_table=[p.Location(), p.Location(lines=[p.Line(function_index=1)]),
                    p.Location(lines=[p.Line(function_index=2)])],
    function_table=[p.Function(), p.Function(name_strindex=1), p.Function(name_strindex=2)],
    # opentelemetry-proto 1.11: link_table[0] SHOULD carry zero-filled ids.
    link_table=[p.Link(trace_id=bytes(16), span_id=bytes(8))],
    string_table=["", "main", "work", "samples", "count"],
    attribute_table=[p.KeyValueAndUnit()],
    stack_table=[p.Stack(), p.Stack(location_indices=[2, 1])],
)
profile = p.Profile(
    sample_type=p.ValueType(type_strindex=3, unit_strindex=4),
    samples=[p.Sample(stack_index=1, values=[7])],
)
data = p.ProfilesData(
    dictionary=d,
    resource_profiles=[p.ResourceProfiles(scope_profiles=[p.ScopeProfiles(profiles=[profile])])],
)
assert len(data.dictionary.link_table[0].trace_id) == 16
open(sys.argv[1], "wb").write(data.SerializeToString())
"#;
    smolder_e2e::run_ok(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&file),
    );
    let out = smolder([
        "convert".as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "main;work 7\n");
    let svg = dir.path().join("zero-link.svg");
    smolder_e2e::smolder_ok([
        "flamegraph".as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        svg.as_os_str(),
    ]);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("work"));
}

/// A `perf script` recording (values in nanoseconds) as a Chrome
/// `.cpuprofile`: one sample per event of the recording (within 1 %: its
/// periods are 1.001 ms, the text gives none), in bounded memory (it once expanded every nanosecond into a
/// sample and aborted asking for 80 GB).
#[test]
fn cpuprofile_of_a_perf_recording_has_one_sample_per_event() {
    use std::io::Read;
    let fixture = smolder_e2e::workspace_root().join("bench/fixtures/workload.perf.txt.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&fixture).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    // Event lines are the unindented ones (stack lines start with a tab).
    let events = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace) && !l.starts_with('#'))
        .count();
    assert!(events > 100, "{events} events in the fixture");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.cpuprofile");
    let (code, stderr, peak_kib) = smolder_with_peak_rss(&[
        "convert".as_ref(),
        fixture.as_os_str(),
        "-f".as_ref(),
        "cpuprofile".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    // The text carries no period: each sample is taken as 1 ms, and this
    // recording's periods are 1.001 ms.
    let samples = doc["samples"].as_array().unwrap().len();
    assert!(
        samples.abs_diff(events) * 100 <= events,
        "{samples} samples for {events} events"
    );
}
