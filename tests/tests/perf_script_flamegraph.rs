//! `perf script` text recorded in the test with Debian's `perf`, from a C
//! program with known hot functions, drawn by `smolder flamegraph`: the SVG
//! is well-formed XML, names those functions, and gives them the sample
//! counts that inferno's own command-line tools give them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use smolder_e2e::{compile_c, require_tool, run_ok, smolder_ok, HOT_C};

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

/// Records the hot program with `perf record -g` and returns the path of
/// `perf script` text made with `script_args`.
fn perf_script_of_hot_program(dir: &Path, script_args: &[&str]) -> std::path::PathBuf {
    require_tool("perf", "linux-perf");
    let prog = compile_c(
        dir,
        "hot",
        HOT_C,
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
            .arg("300000000"),
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
    let mut child = Command::new(flamegraph)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &folded).unwrap();
    let reference = child.wait_with_output().unwrap();
    assert!(reference.status.success());
    let reference = frame_samples(&String::from_utf8_lossy(&reference.stdout));
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
