//! `perf script` text recorded in the test with Debian's `perf`, from a C
//! program with known hot functions, drawn by `smolder flamegraph`: the SVG
//! is well-formed XML, names those functions, and gives them the sample
//! counts that inferno's own command-line tools give them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use smolder_e2e::{compile_c, require_tool, run_ok, smolder, smolder_ok, HOT_C};

/// `<title>` texts of an SVG flamegraph: frame name -> samples, summed over
/// the frames of that name.
fn frame_samples(svg: &str) -> BTreeMap<String, u64> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(svg, options).expect("the SVG is well-formed XML");
    let mut frames = BTreeMap::new();
    for node in doc.descendants().filter(|n| n.has_tag_name("title")) {
        let text = node.text().unwrap_or_default();
        // "name (1,234 samples, 12.34%)"
        let Some((name, rest)) = text.rsplit_once(" (") else {
            continue;
        };
        let count: String = rest
            .split(' ')
            .next()
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        if let Ok(n) = count.parse::<u64>() {
            *frames.entry(name.to_owned()).or_insert(0) += n;
        }
    }
    frames
}

/// The frames of the graph `inferno-flamegraph ARGS` draws of `folded`.
fn inferno_frames(flamegraph: &Path, folded: &[u8], args: &[&str]) -> BTreeMap<String, u64> {
    let mut child = Command::new(flamegraph)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), folded).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "inferno-flamegraph {args:?} failed");
    frame_samples(&String::from_utf8_lossy(&out.stdout))
}

/// Records the hot program with `perf record -g` and returns the path of
/// `perf script` text made with `script_args`.
fn perf_script_of_hot_program(dir: &Path, script_args: &[&str]) -> std::path::PathBuf {
    require_tool("perf", "linux-perf");
    let prog = compile_c(
        dir,
        "hot",
        &smolder_e2e::with_cpu_budget(HOT_C),
        &[
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-fno-inline",
        ],
    );
    let data = dir.join("perf.data");
    run_ok(
        Command::new("perf")
            .args(["record", "-q", "-g", "-F", "999", "-o"])
            .arg(&data)
            .arg("--")
            .arg(&prog)
            .arg("1.0"),
    );
    let script = dir.join("perf.script");
    let out = run_ok(
        Command::new("perf")
            .args(["script", "-i"])
            .arg(&data)
            .args(script_args),
    );
    std::fs::write(&script, &out.stdout).unwrap();
    script
}

#[test]
fn perf_script_of_a_real_program_renders_its_hot_functions() {
    let dir = tempfile::tempdir().unwrap();
    let script = perf_script_of_hot_program(dir.path(), &[]);
    let svg_path = dir.path().join("hot.svg");
    smolder_ok([
        "flamegraph".as_ref(),
        script.as_os_str(),
        "-o".as_ref(),
        svg_path.as_os_str(),
    ]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let frames = frame_samples(&svg);
    for f in ["hot_alpha", "hot_beta", "hot_gamma", "run", "main"] {
        assert!(
            frames.contains_key(f),
            "{f} missing from the flamegraph: {frames:?}"
        );
    }
    // The 6:3:1 split of the program shows in the graph.
    let (a, b, g) = (
        frames["hot_alpha"] as f64,
        frames["hot_beta"] as f64,
        frames["hot_gamma"] as f64,
    );
    let total = a + b + g;
    assert!(
        (a / total - 0.6).abs() < 0.05 && (b / total - 0.3).abs() < 0.05,
        "shares {a} {b} {g}"
    );

    // Oracle: inferno's command-line tools on the same perf script text.
    let collapse = require_tool("inferno-collapse-perf", "inferno (cargo install inferno)");
    let flamegraph = require_tool("inferno-flamegraph", "inferno (cargo install inferno)");
    let folded = run_ok(Command::new(collapse).arg(&script)).stdout;
    // smolder leaves out frames narrower than 0.1% of the width (its
    // `FlamegraphOptions::min_width`), inferno 0.12 those under 0.01%: the
    // oracle draws by smolder's rule, or a frame of one sample in a
    // thousand (`dispatch`, sampled between two calls) is in one graph only.
    let reference = inferno_frames(&flamegraph, &folded, &["--minwidth", "0.1"]);
    for f in [
        "hot_alpha",
        "hot_beta",
        "hot_gamma",
        "dispatch",
        "run",
        "main",
    ] {
        assert_eq!(
            frames.get(f),
            reference.get(f),
            "samples of {f}: smolder vs inferno"
        );
    }

    // At inferno's default cutoff (`--min-width 0.01`, `--minwidth` as
    // inferno spells it), every frame inferno draws by default, and a bad
    // percentage is refused in one line.
    let fine_path = dir.path().join("fine.svg");
    smolder_ok([
        "flamegraph".as_ref(),
        script.as_os_str(),
        "--minwidth".as_ref(),
        "0.01".as_ref(),
        "-o".as_ref(),
        fine_path.as_os_str(),
    ]);
    let fine = frame_samples(&std::fs::read_to_string(&fine_path).unwrap());
    let mut default = inferno_frames(&flamegraph, &folded, &[]);
    // inferno's collapser roots each stack at the command's name; smolder
    // draws that frame only with --per-process.
    assert!(
        default.remove("hot").is_some(),
        "inferno's root: {default:?}"
    );
    assert_eq!(
        fine, default,
        "smolder --min-width 0.01 vs inferno's default"
    );
    let refused = smolder([
        "flamegraph".as_ref(),
        "--min-width".as_ref(),
        "150".as_ref(),
        "-o".as_ref(),
        "-".as_ref(),
        script.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("not a percentage from 0 to 100"),
        "--min-width 150: {stderr}"
    );
}

#[test]
fn perf_script_converts_to_otlp_with_processes_and_threads() {
    let dir = tempfile::tempdir().unwrap();
    // `-F +pid`: perf prints pid/tid, so processes and threads are both known.
    let script = perf_script_of_hot_program(dir.path(), &["-F", "+pid"]);
    let out = dir.path().join("hot.json");
    smolder_ok([
        "convert".as_ref(),
        script.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "-f".as_ref(),
        "otlp-json".as_ref(),
    ]);
    let json = std::fs::read_to_string(&out).unwrap();
    for key in [
        "process.pid",
        "process.executable.name",
        "thread.id",
        "thread.name",
    ] {
        assert!(
            json.contains(&format!("\"{key}\"")),
            "{key} missing: {json:.600}"
        );
    }
    assert!(json.contains("\"hot_alpha\""));
    let svg = dir.path().join("per-process.svg");
    smolder_ok([
        "flamegraph".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        svg.as_os_str(),
        "--per-process".as_ref(),
        "--title".as_ref(),
        "hot program".as_ref(),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    let frames = frame_samples(&svg);
    assert!(
        frames.keys().any(|k| k.starts_with("hot [")),
        "no process root in {frames:?}"
    );
    assert!(svg.contains("hot program"));
}

/// A C program that splits its time about 2:1 between two leaf functions
/// for `argv[1]` seconds (0.5 by default), by the clock rather than by an
/// iteration count.
const TIMED_C: &str = r#"
#include <stdlib.h>
#include <time.h>
volatile unsigned long sink;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline, aligned(64))) void hot_alpha(void) { for (int i = 0; i < 200000; i++) sink += i * i; }
__attribute__((noinline, aligned(64))) void hot_beta(void) { for (int i = 0; i < 100000; i++) sink += i * i; }
__attribute__((noinline)) void work(double seconds) {
    double end = now() + seconds;
    while (now() < end) { hot_alpha(); hot_beta(); }
}
int main(int argc, char **argv) { work(argc > 1 ? atof(argv[1]) : 0.5); return 0; }
"#;

/// Records the timed program with `perf record` (`record_args` added, e.g.
/// `-g`; `program_args` after the program) and returns the `perf script`
/// text made with `script_args`.
fn perf_script_of_timed_program(
    dir: &Path,
    record_args: &[&str],
    program_args: &[&str],
    script_args: &[&str],
) -> Vec<u8> {
    require_tool("perf", "linux-perf");
    let prog = compile_c(
        dir,
        "timed",
        TIMED_C,
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    let data = dir.join("timed.data");
    run_ok(
        Command::new("perf")
            .args(["record", "-q", "-F", "999"])
            .args(record_args)
            .arg("-o")
            .arg(&data)
            .arg("--")
            .arg(&prog)
            .args(program_args),
    );
    run_ok(
        Command::new("perf")
            .args(["script", "-i"])
            .arg(&data)
            .args(script_args),
    )
    .stdout
}

/// Folded stacks with smolder's `_[k]`/`_[j]`/`_[i]` markers taken out
/// (inferno's command-line collapser adds none by default), summed.
fn normalised(folded: &str) -> BTreeMap<String, u64> {
    let mut stacks = BTreeMap::new();
    for line in folded.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, count) = line.rsplit_once(' ').expect("stack COUNT");
        let stack = stack
            .split(';')
            .map(|f| {
                f.trim_end_matches("_[k]")
                    .trim_end_matches("_[j]")
                    .trim_end_matches("_[i]")
            })
            .collect::<Vec<_>>()
            .join(";");
        *stacks.entry(stack).or_insert(0) += count.parse::<u64>().expect("count");
    }
    stacks
}

/// `smolder ARGS` on one CPU (the first this test may run on), where the
/// text is collapsed in the read buffer rather than in blocks.
fn smolder_on_one_cpu(args: &[&std::ffi::OsStr]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `allowed` is a cpu_set_t of `size` bytes.
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut allowed) }, 0);
    let cpu = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
        .expect("an allowed CPU");
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut one) };
    let mut cmd = Command::new(smolder_e2e::smolder_bin());
    cmd.args(args);
    // SAFETY: sched_setaffinity is a system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, size, &one) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    run_ok(&mut cmd);
}

/// `smolder flamegraph` of `perf script` text (collapsed straight from the
/// text, on every CPU and on one) draws the same SVG, byte for byte, as of
/// the OTLP profile `smolder convert` makes of it (folded from the
/// profile), with and without roots, kernel and inlined frames.
fn assert_flamegraph_of_text_is_flamegraph_of_otlp(input: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let otlp = dir.path().join("input.pb");
    smolder_ok([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        otlp.as_os_str(),
        "-f".as_ref(),
        "otlp".as_ref(),
    ]);
    let options: [&[&str]; 4] = [
        &[],
        &["--per-process", "--per-thread"],
        &["--per-process", "--no-kernel", "--no-inline"],
        &["--per-thread", "--icicle"],
    ];
    for args in options {
        let draw = |from: &Path, name: &str, one_cpu: bool| {
            let svg = dir.path().join(name);
            let mut all: Vec<&std::ffi::OsStr> = vec!["flamegraph".as_ref(), from.as_os_str()];
            all.extend(["-o".as_ref(), svg.as_os_str()]);
            all.extend(args.iter().map(std::ffi::OsStr::new));
            if one_cpu {
                smolder_on_one_cpu(&all);
            } else {
                smolder_ok(all);
            }
            std::fs::read(svg).unwrap()
        };
        let (text, profile) = (
            draw(input, "text.svg", false),
            draw(&otlp, "otlp.svg", false),
        );
        assert!(!frame_samples(&String::from_utf8_lossy(&text)).is_empty());
        assert!(text == profile, "{args:?}: the SVGs differ");
        assert!(
            draw(input, "alone.svg", true) == profile,
            "{args:?}: the SVG drawn on one CPU differs"
        );
    }
}

/// `smolder convert --process-root -f folded` of `input`, normalised (and
/// the flamegraph of `input` checked against that of its OTLP profile).
fn smolder_folded(input: &Path) -> BTreeMap<String, u64> {
    assert_flamegraph_of_text_is_flamegraph_of_otlp(input);
    let out = smolder_e2e::smolder([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "-f".as_ref(),
        "folded".as_ref(),
        "--process-root".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smolder convert failed: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    normalised(&String::from_utf8_lossy(&out.stdout))
}

/// `inferno-collapse-perf` of `input`, normalised.
fn inferno_folded(input: &Path) -> BTreeMap<String, u64> {
    let collapse = require_tool("inferno-collapse-perf", "inferno (cargo install inferno)");
    normalised(&String::from_utf8_lossy(
        &run_ok(Command::new(collapse).arg(input)).stdout,
    ))
}

/// Smolder's stacks are inferno's, and the timed program's hot functions
/// are in them with about their 2:1 share.
fn assert_same_stacks_as_inferno(smolder: &BTreeMap<String, u64>, inferno: &BTreeMap<String, u64>) {
    assert!(!smolder.is_empty(), "no stacks");
    assert_eq!(smolder, inferno, "smolder vs inferno-collapse-perf");
    let share = |f: &str| -> u64 {
        smolder
            .iter()
            .filter(|(s, _)| s.rsplit(';').next() == Some(f))
            .map(|(_, n)| n)
            .sum()
    };
    let (a, b) = (share("hot_alpha") as f64, share("hot_beta") as f64);
    assert!(a > 0.0 && b > 0.0, "hot functions missing: {smolder:?}");
    assert!((a / (a + b) - 2.0 / 3.0).abs() < 0.15, "shares {a} {b}");
    assert!(
        smolder.keys().all(|s| s.starts_with("timed;")),
        "process name is not the root: {smolder:?}"
    );
}

#[test]
fn perf_record_without_call_graphs_reads_like_inferno() {
    let dir = tempfile::tempdir().unwrap();
    // Without -g, perf script prints each sample's one frame on its event line.
    let text = perf_script_of_timed_program(dir.path(), &[], &[], &[]);
    let first_event = String::from_utf8_lossy(&text);
    let first_event = first_event.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(
        first_event.contains("hot_") || first_event.contains('('),
        "{first_event}"
    );
    let script = dir.path().join("no-g.perf");
    std::fs::write(&script, &text).unwrap();
    assert_same_stacks_as_inferno(&smolder_folded(&script), &inferno_folded(&script));
}

#[test]
fn perf_script_with_a_header_past_300_cpu_lines_reads_like_inferno() {
    let dir = tempfile::tempdir().unwrap();
    let text = perf_script_of_timed_program(dir.path(), &["-g"], &[], &["--header", "-I"]);
    let text = String::from_utf8(text).unwrap();
    // Pad the header's CPU topology to 400 `# CPU` lines, as on a big host.
    let mut padded = String::new();
    let mut done = false;
    for line in text.split_inclusive('\n') {
        if !done && line.starts_with("# CPU") {
            for cpu in 0..400 {
                padded.push_str(&format!(
                    "# CPU {cpu}: Core ID {cpu}, Die ID 0, Socket ID 0\n"
                ));
            }
            done = true;
        }
        padded.push_str(line);
    }
    assert!(done, "perf script --header -I printed no `# CPU` line");
    assert!(padded.lines().take_while(|l| l.starts_with('#')).count() > 300);
    let script = dir.path().join("header.perf");
    std::fs::write(&script, &padded).unwrap();
    assert_same_stacks_as_inferno(&smolder_folded(&script), &inferno_folded(&script));
}

#[test]
fn perf_script_with_a_multi_line_cmdline_reads_like_inferno_without_it() {
    let dir = tempfile::tempdir().unwrap();
    // The program's argument holds a newline: `# cmdline` spans two lines.
    let with_header =
        perf_script_of_timed_program(dir.path(), &["-g"], &["0.5\nfoo()"], &["--header"]);
    let text = String::from_utf8_lossy(&with_header);
    assert!(
        text.lines().any(|l| l.trim_end() == "foo()"),
        "no cmdline continuation line in the header"
    );
    let script = dir.path().join("cmdline.perf");
    std::fs::write(&script, &with_header).unwrap();
    // inferno trips over this header; it gets the same events without it.
    let plain = dir.path().join("plain.perf");
    let data = dir.path().join("timed.data");
    std::fs::write(
        &plain,
        run_ok(Command::new("perf").args(["script", "-i"]).arg(&data)).stdout,
    )
    .unwrap();
    assert_same_stacks_as_inferno(&smolder_folded(&script), &inferno_folded(&plain));
}

#[test]
fn unindented_and_single_line_stacks_read_like_inferno() {
    let dir = tempfile::tempdir().unwrap();
    let text = perf_script_of_timed_program(dir.path(), &["-g"], &[], &[]);
    let text = String::from_utf8(text).unwrap();
    // Stack lines without their indentation.
    let unindented: String = text
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches([' ', '\t']))
        .collect();
    let script = dir.path().join("unindented.perf");
    std::fs::write(&script, &unindented).unwrap();
    assert_same_stacks_as_inferno(&smolder_folded(&script), &inferno_folded(&script));

    // Each event's leaf frame on its event line, as perf prints without -g.
    let mut single = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() || line.starts_with(char::is_whitespace) || line.starts_with('#') {
            continue;
        }
        let leaf = lines.peek().map_or("", |l| l.trim());
        single.push_str(&format!("{line} {leaf}\n"));
    }
    let script = dir.path().join("single.perf");
    std::fs::write(&script, &single).unwrap();
    let smolder = smolder_folded(&script);
    assert_eq!(smolder, inferno_folded(&script));
    assert!(
        smolder.keys().any(|s| s == "timed;hot_alpha"),
        "{smolder:?}"
    );
}
