//! The object cache: identity across paths, LRU eviction under the byte
//! budget, and lazy parsing.

mod common;

use std::path::Path;

use smolder_symbolizer::{AddressKind, Source, Symbolizer};

fn vaddr(path: &Path) -> Source<'_> {
    Source::Elf {
        path,
        addresses: AddressKind::VirtualAddress,
    }
}

fn fib_addr(bin: &Path) -> u64 {
    common::functions(bin)
        .into_iter()
        .find(|f| f.name == "fib")
        .unwrap()
        .addr
}

#[test]
fn byte_budget_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::build_c(dir.path(), "a", &[]);
    let b = common::build_c(dir.path(), "b", &["-O1"]);
    let c = common::build_c(dir.path(), "c", &["-Os"]);
    let size = std::fs::metadata(&a).unwrap().len() as usize;
    // Room for about two objects.
    let s = Symbolizer::builder().cache_bytes(size * 5 / 2).build();
    for bin in [&a, &b, &a, &c, &a] {
        let out = s.symbolize(&vaddr(bin), &[fib_addr(bin)]).unwrap();
        assert_eq!(common::outer_function(&out[0]), Some("fib"));
        assert!(s.cached_objects() <= 2, "{:?}", s.stats());
    }
    let stats = s.stats();
    println!("{stats:?}");
    // a, b, c parsed once each: `a` stayed as most recently used when `c` came.
    assert_eq!(stats.objects_parsed, 3);
    assert!(stats.cache_evictions >= 1);
    assert!(stats.cache_bytes as usize <= size * 5 / 2 || s.cached_objects() == 1);

    // A budget below any one object keeps just the latest.
    let tiny = Symbolizer::builder().cache_bytes(1).build();
    for bin in [&a, &b, &a] {
        tiny.symbolize(&vaddr(bin), &[fib_addr(bin)]).unwrap();
        assert_eq!(tiny.cached_objects(), 1);
    }
    assert_eq!(tiny.stats().objects_parsed, 3);
}

#[test]
fn same_file_under_other_paths_and_copies_share_one_parse() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::build_c(dir.path(), "a", &[]);
    let link = dir.path().join("link-to-a");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let hard = dir.path().join("hard-a");
    std::fs::hard_link(&a, &hard).unwrap();
    // A copy is another file, with the same build-id.
    let copy = dir.path().join("copy-a");
    std::fs::copy(&a, &copy).unwrap();
    let s = Symbolizer::new();
    for bin in [&a, &link, &hard, &copy] {
        let out = s.symbolize(&vaddr(bin), &[fib_addr(&a)]).unwrap();
        assert_eq!(common::outer_function(&out[0]), Some("fib"));
        assert_eq!(
            Path::new(&out[0].module.as_ref().unwrap().path),
            bin.as_path()
        );
    }
    let stats = s.stats();
    assert_eq!(stats.objects_parsed, 1, "{stats:?}");
    assert_eq!(stats.dwarf_parsed, 1);
    assert_eq!(stats.cache_hits, 3);
}

#[test]
fn parsing_is_lazy() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::build_c(dir.path(), "a", &[]);
    let s = Symbolizer::new();
    // Addresses outside every segment need neither DWARF nor symbols.
    s.symbolize_file_offsets(&a, &[u64::MAX - 1]);
    let stats = s.stats();
    assert_eq!(
        (
            stats.objects_parsed,
            stats.dwarf_parsed,
            stats.symtabs_parsed
        ),
        (1, 0, 0)
    );
    s.symbolize(&vaddr(&a), &[fib_addr(&a)]).unwrap();
    let stats = s.stats();
    assert_eq!((stats.dwarf_parsed, stats.symtabs_parsed), (1, 0));
}

/// A lookup parses the compilation units its addresses fall in, not the
/// others, and keeps them for the next lookup.
#[test]
fn only_the_units_of_the_addresses_are_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let generated = common::generated_c(dir.path(), 10);
    let a = common::build_c(dir.path(), "a", &[generated.to_str().unwrap()]);
    let funcs = common::functions(&a);
    let addr = |name: &str| funcs.iter().find(|f| f.name == name).unwrap().addr;
    let s = Symbolizer::new();
    let out = s.symbolize(&vaddr(&a), &[addr("fib")]).unwrap();
    assert_eq!(common::outer_function(&out[0]), Some("fib"));
    assert_eq!(s.stats().dwarf_units_parsed, 1, "{:?}", s.stats());
    // The generated functions are another unit; `fib` again is not parsed again.
    let out = s
        .symbolize(&vaddr(&a), &[addr("gen3_entry"), addr("fib") + 1])
        .unwrap();
    assert_eq!(common::outer_function(&out[0]), Some("gen3_entry"));
    assert_eq!(common::outer_function(&out[1]), Some("fib"));
    let stats = s.stats();
    assert_eq!(
        (stats.dwarf_parsed, stats.dwarf_units_parsed),
        (1, 2),
        "{stats:?}"
    );
}

#[test]
fn shared_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::build_c(dir.path(), "a", &[]);
    let funcs = common::functions(&a);
    let s = std::sync::Arc::new(Symbolizer::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = std::sync::Arc::clone(&s);
            let a = a.clone();
            let funcs = funcs.clone();
            std::thread::spawn(move || {
                for f in funcs.iter().skip(t).step_by(2) {
                    let out = s.symbolize(&vaddr(&a), &[f.addr]).unwrap();
                    assert!(common::outer_function(&out[0]).is_some(), "{out:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = s.stats();
    assert_eq!(stats.objects_parsed, 1, "{stats:?}");
    assert_eq!(stats.dwarf_parsed, 1, "{stats:?}");
}

/// Two different programs that claim the same build-id: each is named from
/// its own symbols (the cache keys by build-id and content, not build-id alone).
#[test]
fn a_forged_build_id_gets_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let id = "-Wl,--build-id=0x0123456789abcdef0123456789abcdef01234567";
    let mut bins = Vec::new();
    for name in ["genuine_fn", "forged_fn"] {
        let src = dir.path().join(format!("{name}.c"));
        std::fs::write(
            &src,
            format!(
                "volatile int s; __attribute__((noinline)) void {name}(void) {{ for (int i = 0; i < 100; i++) s += i; }}\n\
                 int main(void) {{ {name}(); return 0; }}\n"
            ),
        )
        .unwrap();
        let bin = dir.path().join(name);
        common::run(
            std::process::Command::new("gcc")
                .args(["-O1", id, "-o"])
                .arg(&bin)
                .arg(&src),
        );
        bins.push((name, bin));
    }
    let s = Symbolizer::new();
    for (name, bin) in &bins {
        let f = common::functions(bin)
            .into_iter()
            .find(|f| f.name == *name)
            .unwrap();
        let out = s
            .symbolize(
                &Source::Elf {
                    path: bin,
                    addresses: AddressKind::VirtualAddress,
                },
                &[f.addr],
            )
            .unwrap();
        assert_eq!(
            out[0].module.as_ref().unwrap().build_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(common::outer_function(&out[0]), Some(*name), "{out:?}");
    }
    assert_eq!(s.cached_objects(), 2);
}

/// A long list of addresses, looked up on every CPU and again from the
/// frames found before, gives what looking them up one by one gives, in
/// the order asked.
#[test]
fn many_addresses_at_once_and_again_equal_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let generated = common::generated_c(dir.path(), 10);
    let a = common::build_c(dir.path(), "a", &[generated.to_str().unwrap()]);
    let funcs = common::functions(&a);
    // Every function, at several offsets, in an order that is not sorted.
    let mut addrs: Vec<u64> = Vec::new();
    for step in 0..100u64 {
        for f in &funcs {
            addrs.push(f.addr + step);
        }
    }
    addrs.reverse();
    let third = addrs.len() / 3;
    addrs.rotate_left(third);
    assert!(addrs.len() >= 2048, "{} addresses", addrs.len());
    let one_by_one = Symbolizer::new();
    let expected: Vec<_> = addrs
        .iter()
        .map(|&addr| one_by_one.symbolize(&vaddr(&a), &[addr]).unwrap().remove(0))
        .collect();
    let s = Symbolizer::new();
    let first = s.symbolize(&vaddr(&a), &addrs).unwrap();
    assert_eq!(first, expected);
    let again = s.symbolize(&vaddr(&a), &addrs).unwrap();
    assert_eq!(again, expected);
    assert!(
        expected.iter().filter(|r| !r.frames.is_empty()).count() >= funcs.len(),
        "{expected:?}"
    );
}
