//! smolder as root against processes that try to hurt it, run as user
//! `nobody` (`setpriv`): hostile perf maps (FIFO, symbolic link to a
//! root-only file, 1 GiB sparse file), a process that truncates a file it
//! maps while smolder reads it, and JIT frames named from `node
//! --perf-basic-prof`'s perf map against `perf record -g`. These need root
//! (CI runs as root): they fail, not skip, when `CI` is set.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smolder_e2e::{compile_c, require_ebpf, require_tool, run_ok, smolder, smolder_ok};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory user nobody can write, with the test's files.
fn nobody_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn as_nobody(program: &Path, args: &[&str]) -> KillOnDrop {
    require_tool("setpriv", "util-linux");
    KillOnDrop(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the hostile process"),
    )
}

/// Runs anonymous executable code (`jmp .`) forever, after printing its address.
const JIT_SPIN_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
int main(void) {
    unsigned char *code = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    code[0] = 0xeb; code[1] = 0xfe;
    printf("%lx\n", (unsigned long)code);
    fflush(stdout);
    ((void (*)(void))code)();
    return 0;
}
"#;

fn read_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// The perf map at `/tmp/perf-PID.map` is a FIFO, a symbolic link to a
/// root-only file, then a 1 GiB sparse file: `symbolize -p` and `record -p`
/// finish promptly, name nothing from the root-only file, and say what they
/// skipped.
#[test]
fn hostile_perf_maps_are_skipped_promptly() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = nobody_dir();
    let prog = compile_c(dir.path(), "jit_spin", JIT_SPIN_C, &["-O1"]);
    let mut child = as_nobody(&prog, &[]);
    let addr = read_line(&mut child.0);
    let pid = child.0.id();
    let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{addr} 100 SECRET_ROOT_ONLY_NAME\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let kinds: [(&str, &dyn Fn()); 3] = [
        ("FIFO", &|| {
            let c = std::ffi::CString::new(map.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo on a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
            std::os::unix::fs::lchown(&map, Some(65534), Some(65534)).unwrap();
        }),
        ("symbolic link", &|| {
            std::os::unix::fs::symlink(&secret, &map).unwrap();
            std::os::unix::fs::lchown(&map, Some(65534), Some(65534)).unwrap();
        }),
        ("sparse 1 GiB", &|| {
            let f = std::fs::File::create(&map).unwrap();
            f.set_len(1 << 30).unwrap();
            std::os::unix::fs::chown(&map, Some(65534), Some(65534)).unwrap();
        }),
    ];
    for (kind, make) in kinds {
        let _ = std::fs::remove_file(&map);
        make();
        // Built before the clock starts.
        smolder_e2e::smolder_bin();
        let started = Instant::now();
        let out = smolder(["symbolize", "-p", &pid.to_string(), &format!("0x{addr}")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind}: symbolize -p took {:?}",
            started.elapsed()
        );
        assert!(out.status.success(), "{kind}: {stderr}");
        assert!(!stdout.contains("SECRET"), "{kind}: {stdout}");
        assert!(stderr.contains("perf map skipped"), "{kind}: {stderr}");

        let folded = dir.path().join("out.folded");
        let started = Instant::now();
        let stderr = smolder_ok([
            "record",
            "-p",
            &pid.to_string(),
            "-d",
            "1",
            "--format",
            "folded",
            "-o",
            folded.to_str().unwrap(),
        ]);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{kind}: record -p took {:?}",
            started.elapsed()
        );
        let text = std::fs::read_to_string(&folded).unwrap();
        assert!(!text.contains("SECRET"), "{kind}: {text}");
        assert!(
            !text.is_empty(),
            "{kind}: no samples of the spinning process"
        );
        assert!(stderr.contains("perf maps skipped"), "{kind}: {stderr}");
    }
    let _ = std::fs::remove_file(&map);
}

/// Maps a copy of a large ELF file executable and, while it burns CPU,
/// truncates that file to nothing and back, over and over.
const TRUNCATE_C: &str = r#"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void burn(void) { for (long i = 0; i < 200000; i++) sink += i * i; }
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    struct stat st; fstat(fd, &st);
    void *m = mmap(0, st.st_size, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    (void)m;
    for (;;) { ftruncate(fd, 0); burn(); ftruncate(fd, st.st_size); burn(); }
}
"#;

/// A process truncates a file it maps while smolder reads it: smolder lives
/// on (no SIGBUS: files of profiled processes are read into owned memory).
#[test]
fn a_process_truncating_its_mapped_file_does_not_kill_smolder() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = nobody_dir();
    let prog = compile_c(dir.path(), "truncator", TRUNCATE_C, &["-O1"]);
    // A large ELF with debug information: the smolder binary itself.
    let victim = dir.path().join("victim.so");
    std::fs::copy(smolder_e2e::smolder_bin(), &victim).unwrap();
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).unwrap();
    let child = as_nobody(&prog, &[victim.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let folded = dir.path().join("out.folded");
        let out = smolder([
            "record",
            "-p",
            &child.0.id().to_string(),
            "-d",
            "1",
            "--format",
            "folded",
            "-o",
            folded.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "smolder record died: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&folded).unwrap();
        assert!(text.contains("burn"), "{text}");
        let out = smolder(["symbolize", "-p", &child.0.id().to_string(), "0x1000"]);
        assert!(out.status.success(), "symbolize -p died: {:?}", out.status);
    }
}

/// Spends ~2.5 s of CPU time in one hot JavaScript function.
const NODE_JS: &str = r#"
function hotLoop(n) { let s = 0; for (let i = 0; i < n; i++) { s += (i * i) % 7; } return s; }
function coldLoop(n) { let s = 0; for (let i = 0; i < n; i++) { s += i % 3; } return s; }
let sink = 0;
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
while (cpu() < 2.5) { sink += hotLoop(300000); sink += coldLoop(100000); }
console.log(sink > 0 ? "done" : "");
"#;

/// Share of samples whose leaf (last folded frame) contains `name`.
fn leaf_share(folded: &str, name: &str) -> (f64, u64) {
    let (mut hits, mut total) = (0u64, 0u64);
    for line in folded.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        total += n;
        if stack
            .rsplit(';')
            .next()
            .is_some_and(|leaf| leaf.contains(name))
        {
            hits += n;
        }
    }
    (hits as f64 / total.max(1) as f64, total)
}

/// `smolder record -F 499 -- node --perf-basic-prof` names the hot JS
/// function, marks it as JIT, and gives it the share `perf record -g` does
/// with the same perf map. The comparison is on the leaf: until the kernel
/// walker continues through JIT frames by frame pointer (issue 13), stacks
/// above JIT code may stop early, but the leaf is the sampled IP itself.
#[test]
fn node_jit_function_is_named_with_perf_share() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let node = require_tool("node", "nodejs");
    require_tool("perf", "linux-perf");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hot.js");
    std::fs::write(&script, NODE_JS).unwrap();
    // --perf-basic-prof also turns on V8's code log, in the working
    // directory unless told where.
    let v8_log = dir.path().join("v8.log");
    let v8_log = format!("--logfile={}", v8_log.display());

    let ours = dir.path().join("smolder.folded");
    let stderr = smolder_ok([
        "record".as_ref(),
        "-F".as_ref(),
        "499".as_ref(),
        "--format".as_ref(),
        "folded".as_ref(),
        "-o".as_ref(),
        ours.as_os_str(),
        "--".as_ref(),
        node.as_os_str(),
        "--perf-basic-prof".as_ref(),
        "--no-logfile-per-isolate".as_ref(),
        v8_log.as_ref(),
        script.as_os_str(),
    ]);
    let ours = std::fs::read_to_string(&ours).unwrap();
    assert!(stderr.contains("JIT frames named"), "{stderr}");
    assert!(
        ours.lines()
            .any(|l| l.contains("hotLoop") && l.contains("_[j]")),
        "hotLoop is not named as a JIT frame:\n{}",
        &ours[..ours.len().min(4000)]
    );
    let (our_share, our_total) = leaf_share(&ours, "hotLoop");

    let data = dir.path().join("perf.data");
    run_ok(
        Command::new("perf")
            .args(["record", "-q", "-g", "-F", "499", "-o"])
            .arg(&data)
            .arg("--")
            .arg(&node)
            .args(["--perf-basic-prof", "--no-logfile-per-isolate", &v8_log])
            .arg(&script),
    );
    let text = dir.path().join("perf.txt");
    std::fs::write(
        &text,
        run_ok(Command::new("perf").args(["script", "-i"]).arg(&data)).stdout,
    )
    .unwrap();
    let perf_folded = dir.path().join("perf.folded");
    smolder_ok([
        "convert".as_ref(),
        text.as_os_str(),
        "-o".as_ref(),
        perf_folded.as_os_str(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    let (perf_share, perf_total) =
        leaf_share(&std::fs::read_to_string(&perf_folded).unwrap(), "hotLoop");
    assert!(
        our_total > 500 && perf_total > 500,
        "{our_total} / {perf_total} samples"
    );
    assert!(
        perf_share > 0.2,
        "perf names hotLoop in {perf_share:.3} of leaves"
    );
    assert!(
        (our_share - perf_share).abs() <= 0.05,
        "hotLoop leaf share: smolder {our_share:.3} vs perf {perf_share:.3}"
    );
}
