//! Kernel addresses named from `/proc/kallsyms`, core kernel and modules.

mod common;

use smolder_symbolizer::{Source, Symbolizer};

#[test]
fn kallsyms_names_kernel_and_module_addresses() {
    if !common::is_root("kallsyms_names_kernel_and_module_addresses") {
        return;
    }
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    // (address, name, module) of text symbols, in file order.
    let mut syms: Vec<(u64, &str, Option<&str>)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            let name = it.next()?;
            let module = it.next();
            matches!(kind, "t" | "T").then_some((addr, name, module))
        })
        .collect();
    syms.sort_by_key(|s| s.0);
    // Symbols per address: pick only addresses with one name and no symbol
    // at the next byte, so the expected answer is unambiguous.
    let mut per_addr: std::collections::HashMap<u64, usize> = Default::default();
    for l in text.lines() {
        if let Some(addr) = l
            .split_whitespace()
            .next()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        {
            *per_addr.entry(addr).or_default() += 1;
        }
    }
    let unique = |addr: u64| per_addr.get(&addr) == Some(&1) && !per_addr.contains_key(&(addr + 1));
    let mut picks: Vec<(u64, &str, Option<&str>)> = syms
        .iter()
        .filter(|(a, _, m)| m.is_none() && unique(*a))
        .step_by(997)
        .take(8)
        .copied()
        .collect();
    picks.extend(
        syms.iter()
            .filter(|(a, _, m)| m.is_some() && unique(*a))
            .step_by(101)
            .take(4)
            .copied(),
    );
    assert!(picks.len() >= 5, "too few kernel symbols: {}", picks.len());
    let addrs: Vec<u64> = picks.iter().map(|p| p.0 + 1).collect();
    let s = Symbolizer::new();
    let out = s.symbolize(&Source::Kernel, &addrs).unwrap();
    for ((addr, name, module), sym) in picks.iter().zip(&out) {
        assert_eq!(common::outer_function(sym), Some(*name), "{addr:#x}");
        let got = &sym.module.as_ref().unwrap().path;
        assert_eq!(got, module.unwrap_or("[kernel.kallsyms]"), "{addr:#x}");
    }
    let with_modules = picks.iter().filter(|p| p.2.is_some()).count();
    println!(
        "kernel: {} symbols checked, {with_modules} in modules; {:?}",
        picks.len(),
        s.stats()
    );
    assert_eq!(s.stats().resolved_kernel, picks.len() as u64);
}
