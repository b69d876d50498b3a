//! Demangling of symbol names: Rust (legacy and v0) and C++ (Itanium).
//!
//! Owns only the choice of scheme and the output style, which follows
//! `addr2line -C`: Rust without the hash, C++ with parameter types.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Demangled names of one object, keyed by where the raw name lies in the
/// object's (immutable, pinned) bytes, so each name is demangled once.
#[derive(Default)]
pub(crate) struct NameCache {
    names: Mutex<HashMap<(usize, usize), Box<str>>>,
    bytes: AtomicUsize,
}

/// Entries kept before the cache starts over (a bound on pathological inputs).
const NAME_CACHE_ENTRIES: usize = 1 << 20;

impl NameCache {
    /// The display form of `raw`, which must point into bytes that outlive
    /// this cache and never move: demangled when `demangle` is set.
    pub(crate) fn name(&self, raw: &[u8], demangle: bool) -> String {
        if !demangle {
            return String::from_utf8_lossy(raw).into_owned();
        }
        let key = (raw.as_ptr() as usize, raw.len());
        let lock = || self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = lock().get(&key) {
            return name.to_string();
        }
        // Demangled without the lock: the threads of a bulk lookup would
        // wait on each other's demangling. Two threads that meet the same
        // name both demangle it; the second insert replaces the first
        // (counted once).
        let name = demangle_bytes(raw);
        let mut names = lock();
        if names.len() >= NAME_CACHE_ENTRIES {
            names.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        if names.insert(key, name.clone().into_boxed_str()).is_none() {
            self.bytes.fetch_add(name.len() + 48, Ordering::Relaxed);
        }
        name
    }

    /// The display form of a name that is not in the object's bytes.
    pub(crate) fn uncached(raw: &[u8], demangle: bool) -> String {
        if demangle {
            demangle_bytes(raw)
        } else {
            String::from_utf8_lossy(raw).into_owned()
        }
    }

    /// Estimated heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

fn demangle_bytes(raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    demangle(&raw).into_owned()
}

/// Demangles `name` if it is a Rust or C++ mangled name, else returns it as is.
/// A symbol version suffix (`@GLIBCXX_3.4`, `@@GLIBC_2.2.5`) is kept.
pub fn demangle(name: &str) -> Cow<'_, str> {
    if let Some(at) = name.find('@').filter(|&at| at > 0) {
        let (base, version) = name.split_at(at);
        return match demangle(base) {
            Cow::Owned(d) => Cow::Owned(d + version),
            Cow::Borrowed(_) => Cow::Borrowed(name),
        };
    }
    if let Some(s) = demangle_rust(name) {
        return Cow::Owned(s);
    }
    if let Some(s) = demangle_cpp(name) {
        return Cow::Owned(s);
    }
    Cow::Borrowed(name)
}

fn demangle_rust(name: &str) -> Option<String> {
    // Legacy Rust names look like C++ (`_ZN...E`) but end in a `17h<16 hex>E`
    // hash segment; v0 names start with `_R`. Anything else is left to C++.
    let is_v0 = name.starts_with("_R") || name.starts_with("__R");
    let is_legacy = (name.starts_with("_ZN") || name.starts_with("__ZN")) && has_rust_hash(name);
    if !is_v0 && !is_legacy {
        return None;
    }
    rustc_demangle::try_demangle(name)
        .ok()
        .map(|d| format!("{d:#}"))
}

fn has_rust_hash(name: &str) -> bool {
    // `17h` + 16 lowercase hex digits + `E`, possibly followed by a suffix such
    // as `.llvm.123`.
    let bytes = name.as_bytes();
    bytes.windows(20).any(|w| {
        w.starts_with(b"17h") && w[19] == b'E' && w[3..19].iter().all(u8::is_ascii_hexdigit)
    })
}

fn demangle_cpp(name: &str) -> Option<String> {
    if !name.starts_with("_Z") {
        return None;
    }
    let symbol = cpp_demangle::Symbol::new(name).ok()?;
    symbol
        .demangle_with_options(&cpp_demangle::DemangleOptions::default())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_drops_the_hash() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    }

    #[test]
    fn cpp_with_parameters_and_clone_suffix() {
        assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
        assert_eq!(
            demangle("_Z3bazv.constprop.0"),
            "baz() [clone .constprop.0]"
        );
    }

    #[test]
    fn symbol_versions_are_kept() {
        assert_eq!(
            demangle("_ZSt19__throw_logic_errorPKc@GLIBCXX_3.4"),
            "std::__throw_logic_error(char const*)@GLIBCXX_3.4"
        );
        assert_eq!(demangle("memcpy@@GLIBC_2.14"), "memcpy@@GLIBC_2.14");
    }

    #[test]
    fn plain_c_and_garbage_pass_through() {
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(demangle("_R!!"), "_R!!");
        assert_eq!(demangle(""), "");
    }
}
