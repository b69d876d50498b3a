#!/usr/bin/env bash
# Rebuild sampler.bpf.o from sampler.bpf.c + sampler.h (the object is
# committed so that `cargo build` needs no clang). Reproducible: the same
# sources (vmlinux.h included, committed) and clang give a byte-identical
# object, whatever kernel the machine runs.
#
#   profiler/bpf/build.sh [OUTPUT]     default OUTPUT: profiler/bpf/sampler.bpf.o
#
# Needs clang-16, llvm-strip-16 (or llvm-strip), bpftool, libbpf-dev and, to
# regenerate vmlinux.h (SMOLDER_BPF_VMLINUX=kernel), /sys/kernel/btf/vmlinux
# (Debian: apt-get install -y clang-16 libbpf-dev bpftool).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/sampler.bpf.o}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

clang="${CLANG:-clang-16}"
strip="${LLVM_STRIP:-}"
if [ -z "$strip" ]; then
	if command -v llvm-strip-16 >/dev/null; then strip=llvm-strip-16; else strip=llvm-strip; fi
fi
for tool in "$clang" "$strip" bpftool; do
	command -v "$tool" >/dev/null || {
		echo "build.sh: $tool not found (apt-get install -y clang-16 libbpf-dev bpftool)" >&2
		exit 1
	}
done

cd "$here"
# vmlinux.h is committed: the kernel types the program is compiled against
# (CO-RE relocates them to the running kernel's at load). Generated from a
# kernel's BTF, it differs between kernel builds, and the object's .BTF with
# it: with the running kernel's, the object depended on the machine that
# built it (a new kernel build of the CI image made the committed object
# "stale" with no source change). SMOLDER_BPF_VMLINUX=kernel regenerates it.
if [ "${SMOLDER_BPF_VMLINUX:-}" = kernel ] || [ ! -f vmlinux.h ]; then
	[ -r /sys/kernel/btf/vmlinux ] || {
		echo "build.sh: /sys/kernel/btf/vmlinux missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)" >&2
		exit 1
	}
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h.tmp
	mv vmlinux.h.tmp vmlinux.h
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Relative source path + prefix maps: no machine-specific path in the object.
"$clang" -target bpf -D__TARGET_ARCH_x86 -O2 -g -Wall -Werror \
	-ffile-prefix-map="$here"=. -fdebug-prefix-map="$here"=. \
	-c sampler.bpf.c -o "$tmp/sampler.bpf.o"
# Drop DWARF (650 KB -> ~30 KB), keep .BTF and .BTF.ext for CO-RE relocations.
"$strip" -g "$tmp/sampler.bpf.o"
mv "$tmp/sampler.bpf.o" "$out"
echo "build.sh: wrote $out ($(stat -c %s "$out") bytes)"
