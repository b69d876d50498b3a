//! The agent's view of any time range, end to end: `/profile` merging the
//! local store read by `go tool pprof` over HTTP, the `/view` page in
//! headless Chromium, speedscope output checked against speedscope's own
//! JSON schema (`file-format-schema.json` of the `speedscope` npm package,
//! with the `jsonschema` Python package) and opened by speedscope's own
//! page in headless Chromium. The eBPF parts need root (CI runs them as
//! root); the speedscope package is installed by `.ci/run`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smolder_e2e::{
    compile_c, require_ebpf, require_tool, rich_profile, run_ok, smolder_bin, smolder_ok,
    KillOnDrop, Lines, HOT_C,
};
use smolder_profiles_proto::{read_profile, sample_weight, write_profile, Format, ProfileView};

/// Starts `smolder agent` with `args`; returns it and its HTTP address.
fn start_agent(args: &[&str]) -> (KillOnDrop, SocketAddr, Lines) {
    let mut child = Command::new(smolder_bin())
        .arg("agent")
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smolder agent");
    let lines = Lines::default();
    lines.follow(child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = lines.text();
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("smolder agent: running"))
        {
            let addr = line
                .split(", ")
                .find_map(|part| part.strip_prefix("http://"))
                .expect("an HTTP address")
                .parse()
                .unwrap();
            return (child, addr, lines);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("smolder agent exited ({status}): {text}");
        }
        assert!(Instant::now() < deadline, "the agent did not start: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET: status and body bytes.
fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_get_with_head(addr, path);
    (status, body)
}

/// A plain HTTP/1.0 GET: status, head (status line and headers) and body.
fn http_get_with_head(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, response[split + 4..].to_vec())
}

/// The value of header `name` (lower case) in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim())
    })
}

/// `go tool pprof -top -sample_index=samples` on a file or URL: the total
/// and the flat count of each function.
fn go_top(source: &str) -> (i64, BTreeMap<String, i64>) {
    require_tool("go", "golang-go");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-nodecount=1000",
            "-sample_index=samples",
        ])
        .arg(source)
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut total = None;
    let mut flat = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Showing nodes accounting for ") {
            let of = rest.split(" of ").nth(1).expect("'of N total'");
            total = Some(of.trim_end_matches(" total").trim().parse().unwrap());
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 6 && cols[1].ends_with('%') && cols[4].ends_with('%') {
            if let Ok(n) = cols[0].parse::<i64>() {
                flat.insert(cols[5..].join(" "), n);
            }
        }
    }
    (
        total.unwrap_or_else(|| panic!("no total in go tool pprof output:\n{text}")),
        flat,
    )
}

/// Headless Chromium's DOM of `url` after its scripts ran.
fn chromium_dom(url: &str) -> String {
    chromium_dom_within(url, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("chromium did not finish loading {url}"))
}

/// The DOM, or `None` when the page did not finish within `limit` (a
/// page stopped at an `alert()` never does, headless).
fn chromium_dom_within(url: &str, limit: Duration) -> Option<String> {
    let chromium = require_tool("chromium", "Debian chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = KillOnDrop(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1600",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .spawn()
            .expect("run chromium"),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium failed: {}",
        std::fs::read_to_string(err.path()).unwrap_or_default()
    );
    Some(String::from_utf8_lossy(&std::fs::read(out.path()).unwrap()).into_owned())
}

/// The text of the element with `id` (up to its first child tag).
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    &rest[start..end]
}

/// The sum of the sample weights of every stored interval.
fn store_total(dir: &Path) -> (i64, usize) {
    let mut total = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "otlp") {
            let data = read_profile(&std::fs::read(&path).unwrap()).unwrap().data;
            let view = ProfileView::new(&data);
            total += view
                .profiles()
                .flat_map(|(_, p)| p.samples.iter())
                .map(sample_weight)
                .sum::<i64>();
            files += 1;
        }
    }
    (total, files)
}

/// speedscope's release (`npm pack speedscope`, unpacked by `.ci/run`).
fn speedscope_release() -> PathBuf {
    let dir = std::env::var_os("SMOLDER_SPEEDSCOPE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/smolder-ci/speedscope/package")
        });
    let release = dir.join("dist/release");
    assert!(
        release.join("file-format-schema.json").is_file() && release.join("index.html").is_file(),
        "speedscope's npm package is required in {} (or $SMOLDER_SPEEDSCOPE): .ci/run unpacks `npm pack speedscope` there",
        dir.display()
    );
    release
}

/// Validates a speedscope file against speedscope's own JSON schema with
/// the `jsonschema` Python package.
fn validate_speedscope(file: &Path) {
    let schema = speedscope_release().join("file-format-schema.json");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft7Validator.check_schema(schema)\n\
             jsonschema.validate(json.load(open(sys.argv[2])), schema, cls=jsonschema.Draft7Validator)\n\
             print('valid')",
        ])
        .arg(&schema)
        .arg(file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "{} does not validate against speedscope's schema (is jsonschema installed? .ci/run installs it): {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// speedscope's own page, served on loopback with `files`, opening each
/// by `#profileURL=`; returns the text of each page after it loaded, or
/// `None` for a page that did not finish (speedscope stops at an
/// `alert()` on a file it cannot import).
fn open_in_speedscope(files: &[(&str, &[u8])]) -> Vec<Option<String>> {
    let release = speedscope_release();
    let web = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&release).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), web.path().join(entry.file_name())).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(web.path().join(name), bytes).unwrap();
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let _server = KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(web.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the file server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    files
        .iter()
        .map(|(name, _)| {
            let dom = chromium_dom_within(
                &format!("http://{addr}/index.html#profileURL=http://{addr}/{name}"),
                Duration::from_secs(40),
            )?;
            // The visible text, without styles and scripts.
            let mut text = String::new();
            let mut rest = dom.as_str();
            for tag in ["<style", "<script"] {
                while let Some(a) = rest.find(tag) {
                    text.push_str(&rest[..a]);
                    let close = format!("</{}>", &tag[1..]);
                    rest = rest[a..].find(&close).map_or("", |b| &rest[a + b..]);
                }
            }
            text.push_str(rest);
            Some(text)
        })
        .collect()
}

#[test]
fn speedscope_and_cpuprofile_from_convert_open_in_speedscope() {
    require_tool("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rich.otlp");
    std::fs::write(
        &input,
        write_profile(&rich_profile(), Format::OtlpBinary).unwrap(),
    )
    .unwrap();
    let speedscope = dir.path().join("rich.speedscope.json");
    let cpuprofile = dir.path().join("rich.cpuprofile");
    for (format, out) in [("speedscope", &speedscope), ("cpuprofile", &cpuprofile)] {
        smolder_ok([
            "convert".as_ref(),
            input.as_os_str(),
            "-f".as_ref(),
            format.as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
    }
    validate_speedscope(&speedscope);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&speedscope).unwrap()).unwrap();
    assert_eq!(
        doc["profiles"].as_array().unwrap().len(),
        2,
        "one per process"
    );
    let pages = open_in_speedscope(&[
        ("rich.speedscope.json", &std::fs::read(&speedscope).unwrap()),
        ("rich.cpuprofile", &std::fs::read(&cpuprofile).unwrap()),
        ("broken.json", b"{\"not\": \"a profile\"}"),
    ]);
    // Loaded: the toolbar with its views and the profile's name.
    for (page, name) in pages.iter().zip(["server [", "rich.cpuprofile"]) {
        let page = page.as_deref().expect("speedscope stopped at an error");
        assert!(
            page.contains("Left Heavy") && page.contains("Sandwich") && page.contains(name),
            "speedscope did not open the file: {page}"
        );
    }
    // The oracle can fail: speedscope refuses what is not a profile (it
    // stops at an alert).
    assert!(
        pages[2].as_ref().is_none_or(|p| !p.contains("Left Heavy")),
        "speedscope opened a non-profile: {:?}",
        pages[2]
    );
}

/// The share of `name` in `flat` (percent of `total`).
fn share(flat: &BTreeMap<String, i64>, name: &str, total: i64) -> f64 {
    100.0 * *flat.get(name).unwrap_or(&0) as f64 / total as f64
}

#[test]
fn the_merged_range_in_pprof_the_page_and_speedscope() {
    if !require_ebpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c(
        dir.path(),
        "smolder_hot",
        &smolder_e2e::with_cpu_budget(HOT_C),
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let store = dir.path().join("store");
    let (agent, addr, stderr) = start_agent(&[
        "--output-dir",
        store.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "-i",
        "1s",
        "-F",
        "99",
        "--exe",
        "smolder_hot",
    ]);
    // Several intervals of the workload: 5 s of CPU time.
    let status = Command::new(&bin)
        .arg("5")
        .status()
        .expect("run the workload");
    assert!(status.success());
    // Its last samples are in an interval that ended.
    std::thread::sleep(Duration::from_millis(2500));

    // The store's total and the endpoint's, read while no interval lands
    // in between (the agent writes one a second).
    // The same merge held to 2 distinct stacks (`stacks=2`) folds the
    // rest into "[other stacks]", and its total is still the store's.
    let url = format!("http://{addr}/profile?last=1h&format=pprof");
    let bounded_url = format!("{url}&stacks=2");
    let (total, files, flat, bounded) = (0..5)
        .find_map(|_| {
            let (before, files) = store_total(&store);
            let (pprof_total, flat) = go_top(&url);
            let (bounded_total, bounded) = go_top(&bounded_url);
            let (after, _) = store_total(&store);
            (before == after).then(|| {
                assert_eq!(pprof_total, after, "the merge covers every interval");
                assert_eq!(bounded_total, after, "the bounded merge too");
                (after, files, flat, bounded)
            })
        })
        .expect("the store kept changing");
    let other = bounded.get("[other stacks]").copied().unwrap_or(0);
    assert!(other > 0, "nothing folded into [other stacks]: {bounded:?}");
    let leaves = bounded.values().filter(|&&n| n > 0).count();
    assert!(
        leaves <= 3,
        "at most 2 stacks besides [other stacks]: {bounded:?}"
    );
    assert!(files >= 4, "{files} intervals: {}", stderr.text());
    assert!(total > 200, "{total} samples");
    // The workload's split, 60/30/10, as go tool pprof reads it.
    let (a, b, g) = (
        share(&flat, "hot_alpha", total),
        share(&flat, "hot_beta", total),
        share(&flat, "hot_gamma", total),
    );
    assert!((48.0..72.0).contains(&a), "hot_alpha {a:.1}%: {flat:?}");
    assert!((20.0..40.0).contains(&b), "hot_beta {b:.1}%: {flat:?}");
    assert!((4.0..17.0).contains(&g), "hot_gamma {g:.1}%: {flat:?}");
    // The response and /metrics count what was folded.
    let (status, head, _) = http_get_with_head(addr, "/profile?last=1h&format=folded&stacks=2");
    assert_eq!(status, 200);
    let folded: u64 = header(&head, "x-smolder-folded-stacks")
        .unwrap_or_else(|| panic!("no x-smolder-folded-stacks: {head}"))
        .parse()
        .unwrap();
    assert!(folded >= 1, "{head}");
    let (_, metrics) = http_get(addr, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("smolder_view_stacks_folded_total "))
        .unwrap_or_else(|| panic!("no smolder_view_stacks_folded_total:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(counted >= folded, "{counted} < {folded}");
    let (_, head, _) = http_get_with_head(addr, "/profile?last=1h&format=folded");
    assert_eq!(header(&head, "x-smolder-folded-stacks"), Some("0"));

    let endpoint_total = |filters: &str| -> i64 {
        let (status, folded) = http_get(addr, &format!("/profile?last=1h&format=folded{filters}"));
        assert_eq!(status, 200);
        String::from_utf8(folded)
            .unwrap()
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    // Filters: the workload's executable keeps it all, another pid
    // nothing. Its thread name keeps all but what was sampled inside
    // execve before the kernel renamed the thread: those samples carry
    // the name of the test's thread that forked it (seen once in CI:
    // 495 of 496), so the two names together keep it all.
    let forker = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let forker = forker.trim();
    (0..5)
        .find(|_| {
            let all = endpoint_total("");
            let exe = endpoint_total("&exe=smolder_hot");
            let thread = endpoint_total("&thread=smolder_hot");
            let either = endpoint_total(&format!("&thread=smolder_hot,{forker}"));
            (endpoint_total("") == all)
                .then(|| {
                    assert_eq!((exe, either), (all, all));
                    assert!(thread * 100 >= all * 98, "{thread} of {all}");
                })
                .is_some()
        })
        .expect("the store kept changing");
    let (status, none) = http_get(addr, "/profile?last=1h&format=folded&pid=1");
    assert_eq!((status, none.len()), (200, 0));
    let (status, _) = http_get(addr, "/profile?last=1h&format=gif");
    assert_eq!(status, 400);
    let (status, _) = http_get(addr, "/profile?from=2000-01-01T00:00:00Z&to=946688400");
    assert_eq!(status, 404, "a range with nothing stored");

    // The page: "last 1 h" is a link of the index page; it shows the
    // flamegraph of the endpoint's total, the hot function in the table.
    let (_, index) = http_get(addr, "/");
    assert!(String::from_utf8_lossy(&index).contains("href=\"/view?last=1h\""));
    let (page, total) = (0..5)
        .find_map(|_| {
            let before = endpoint_total("");
            let page = chromium_dom(&format!("http://{addr}/view?last=1h"));
            (endpoint_total("") == before).then_some((page, before))
        })
        .expect("the store kept changing");
    let shown: i64 = element_text(&page, "total").parse().unwrap();
    assert_eq!(shown, total, "the page's total is the endpoint's");
    let graph = &page[page.find("id=\"flamegraph\"").expect("a flamegraph")..];
    assert!(
        graph.contains(&format!("<title>all ({total} samples, 100%)</title>")),
        "the flamegraph's root holds the endpoint's total"
    );
    let top = &page[page.find("id=\"top\"").expect("the top table")..];
    let first_row = &top[top.find("<tbody>").unwrap()..];
    let first_row = &first_row[..first_row.find("</tr>").unwrap()];
    assert!(
        first_row.contains("<td>hot_alpha</td>"),
        "the hottest function leads the table: {first_row}"
    );
    assert!(page.contains("id=\"icicle\""), "an icicle graph too");
    for format in [
        "pprof",
        "otlp",
        "otlp-json",
        "svg",
        "folded",
        "speedscope",
        "cpuprofile",
    ] {
        assert!(
            page.contains(&format!("last=1h&amp;format={format}\"")),
            "a {format} download link"
        );
    }

    // Search highlights the function in the graphs and the table.
    let searched = chromium_dom(&format!("http://{addr}/view?last=1h&search=hot_alpha"));
    let result = element_text(&searched, "search-result");
    let pct: f64 = result
        .strip_prefix("flamegraph: ")
        .and_then(|r| r.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("search result: {result}"));
    // The matched share is hot_alpha's total (self and callees, e.g.
    // interrupts) as the table says, at least its self share as pprof says.
    let row = &searched[searched.find("<td>hot_alpha</td>").unwrap()..];
    let cells: Vec<f64> = row
        .split("data-v=\"")
        .skip(1)
        .take(4)
        .map(|c| c[..c.find('"').unwrap()].parse().unwrap())
        .collect();
    let (own, inclusive) = (cells[0], cells[2]);
    assert!(own > 0.0 && inclusive >= own);
    let want = 100.0 * inclusive / total as f64;
    assert!((pct - want).abs() < 0.06, "{pct}% matched, table {want}%");
    assert!(pct >= a - 0.06, "{pct}% matched, self share {a}%");
    let highlighted = &searched[searched.find("id=\"flamegraph\"").unwrap()..];
    let hit = highlighted
        .find("class=\"searched\"")
        .expect("a highlighted frame");
    assert!(highlighted[hit..].starts_with("class=\"searched\"><title>hot_alpha"));
    assert!(searched.contains("<tr class=\"searched\"><td>hot_alpha</td>"));

    // The diff view: this range against the one before it.
    let diff = chromium_dom(&format!(
        "http://{addr}/view?last=1h&diff=1&before_last=30s"
    ));
    let diff = &diff[diff.find("id=\"diff-flamegraph\"").expect("the diff view")..];
    assert!(
        diff.contains("<svg") && diff.contains("hot_alpha"),
        "{}",
        &diff[..diff.len().min(500)]
    );

    // Driven as a user would (DevTools protocol, real mouse events): each
    // heading of the top table sorts it, one way then the other, and a drag
    // over the middle half of the chart narrows the range to it.
    let chromium = require_tool("chromium", "Debian chromium");
    let driver = smolder_e2e::workspace_root().join("tests/oracles/page_driver.py");
    let driven = run_ok(
        Command::new("python3")
            .arg(&driver)
            .arg(&chromium)
            .arg(format!("http://{addr}/view?last=1h")),
    );
    let driven: serde_json::Value = serde_json::from_slice(&driven.stdout).unwrap();
    let headings: Vec<&str> = driven["headings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(headings, ["function", "self", "self %", "total", "total %"]);
    for heading in headings {
        let clicks = driven["sorted"][heading].as_array().unwrap();
        let column = |i: usize| -> Vec<&str> {
            clicks[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        let (first, second) = (column(0), column(1));
        assert!(first.len() > 1, "{heading}: {first:?}");
        if heading == "function" {
            // The page compares names with the browser's collation
            // (localeCompare): the second click must reverse the first.
            let reversed: Vec<&str> = first.iter().rev().copied().collect();
            assert_eq!(second, reversed, "{heading}");
        } else {
            let num = |v: &[&str]| -> Vec<f64> { v.iter().map(|x| x.parse().unwrap()).collect() };
            let (first, second) = (num(&first), num(&second));
            assert!(
                first.windows(2).all(|w| w[0] >= w[1]),
                "{heading} {first:?}"
            );
            assert!(
                second.windows(2).all(|w| w[0] <= w[1]),
                "{heading} {second:?}"
            );
        }
    }
    let drag = &driven["drag"];
    let (chart_from, chart_to) = (
        drag["before"]["from"].as_f64().unwrap() / 1000.0,
        drag["before"]["to"].as_f64().unwrap() / 1000.0,
    );
    let search = drag["after"]["search"].as_str().unwrap();
    let param = |key: &str| -> f64 {
        search
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= after the drag: {search}"))
            .parse()
            .unwrap()
    };
    let (from, to) = (param("from"), param("to"));
    let span = chart_to - chart_from;
    assert!(
        (from - (chart_from + 0.25 * span)).abs() <= 0.02 * span + 1.0
            && (to - (chart_from + 0.75 * span)).abs() <= 0.02 * span + 1.0,
        "the drag over the middle half gave {from}..{to} of {chart_from}..{chart_to}"
    );
    let narrowed: i64 = drag["after"]["total"].as_str().unwrap().parse().unwrap();
    assert!(
        narrowed <= endpoint_total("") && narrowed >= 0,
        "the narrowed range shows {narrowed} samples"
    );

    // The same range as speedscope: schema-valid, and speedscope opens it.
    let (status, speedscope) = http_get(addr, "/profile?last=1h&format=speedscope");
    assert_eq!(status, 200);
    let file = dir.path().join("range.speedscope.json");
    std::fs::write(&file, &speedscope).unwrap();
    validate_speedscope(&file);
    let doc: serde_json::Value = serde_json::from_slice(&speedscope).unwrap();
    let weights: i64 = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["weights"].as_array().unwrap())
        .map(|w| w.as_i64().unwrap())
        .sum();
    assert_eq!(weights, total);
    let pages = open_in_speedscope(&[("range.json", &speedscope)]);
    let page = pages[0].as_deref().expect("speedscope stopped at an error");
    assert!(
        page.contains("Left Heavy") && page.contains("smolder_hot"),
        "speedscope did not open the range: {page}"
    );
    drop(agent);
}

/// Sleeps in `sleep_cold`, 20 ms at a time, for `argv[1]` seconds.
const SLEEPER_C: &str = r#"
#include <stdlib.h>
#include <time.h>
__attribute__((noinline)) void sleep_cold(void) { struct timespec t = {0, 20000000}; nanosleep(&t, 0); }
int main(int argc, char **argv) {
    struct timespec start, now;
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        sleep_cold();
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec + (now.tv_nsec - start.tv_nsec) / 1e9 < secs);
    return 0;
}
"#;

#[test]
fn off_cpu_from_the_config_file_on_the_page_and_in_metrics() {
    if !require_ebpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c(dir.path(), "smolder_sleeper", SLEEPER_C, &["-O1", "-g"]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[off_cpu]\nenabled = true\nmin_blocked = \"5ms\"\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let (agent, addr, stderr) = start_agent(&[
        "-c",
        config.to_str().unwrap(),
        "--output-dir",
        store.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "-i",
        "1s",
        "--exe",
        "smolder_sleeper",
    ]);
    let status = Command::new(&bin)
        .arg("3")
        .status()
        .expect("run the workload");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(2500));

    let (status, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    // About 150 waits of the sleeper alone, every process's counted.
    assert!(value("smolder_off_cpu_recorded_total") >= 50.0, "{metrics}");
    assert!(value("smolder_off_cpu_switches_total") >= value("smolder_off_cpu_recorded_total"));
    value("smolder_off_cpu_skipped_total{reason=\"short\"}");
    value("smolder_off_cpu_skipped_total{reason=\"probability\"}");

    // The page draws the CPU graph and, on its own, the off-CPU one.
    let (status, page) = http_get(addr, "/view?last=1h");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    let off_cpu = page
        .split("id=\"off-cpu\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no off-CPU graph on /view: {}", stderr.text()));
    assert!(
        off_cpu.contains("sleep_cold"),
        "sleep_cold not in the off-CPU graph"
    );

    // The stored intervals hold both profiles, and the off-CPU one weighs
    // about the 3 s the sleeper slept (it did nothing else).
    let (_, pprof) = http_get(addr, "/profile?last=1h&format=otlp");
    let data = read_profile(&pprof).unwrap().data;
    let view = ProfileView::new(&data);
    let waited = view.total_of_sample_type("off_cpu") as f64 / 1e9;
    assert!(
        (2.4..3.6).contains(&waited),
        "{waited:.2} s off-CPU for 3 s asleep"
    );
    drop(agent);
}
