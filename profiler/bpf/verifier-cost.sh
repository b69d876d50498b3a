#!/usr/bin/env bash
# How much of the verifier's budget (1,000,000 processed instructions per
# program) each program of sampler.bpf.o takes on this kernel, as loaded
# normally and with the debug stack copy on (`stack_copy_tgid` set, which
# keeps more code live). Loads through bpftool into a scratch bpffs
# directory and unloads; needs root and what build.sh needs.
#
#   profiler/bpf/verifier-cost.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
pins=/sys/fs/bpf/smolder-verifier-cost
trap 'rm -rf "$tmp" "$pins"' EXIT
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

cost() {
	rm -rf "$pins"
	mkdir -p "$pins"
	bpftool -d prog loadall "$1" "$pins" 2>&1 |
		awk '/prog .*-- BEGIN PROG LOAD LOG/ { match($0, /prog .[a-z_]+./); prog = substr($0, RSTART + 6, RLENGTH - 7) }
		     /^processed [0-9]+ insns/ { printf "  %-24s %8d\n", prog, $2 }
		     /BPF program is too large/ { printf "  %-24s over the limit\n", prog }'
	rm -rf "$pins"
}

cp "$here"/build.sh "$here"/sampler.h "$here"/python.h "$tmp"/
cp "$here"/sampler.bpf.c "$tmp"/sampler.bpf.c
echo "as loaded:"
cost "$here/sampler.bpf.o"
sed 's/const volatile __u32 stack_copy_tgid = 0;/const volatile __u32 stack_copy_tgid = 1;/' \
	"$here/sampler.bpf.c" >"$tmp/sampler.bpf.c"
grep -q 'stack_copy_tgid = 1;' "$tmp/sampler.bpf.c"
"$tmp/build.sh" "$tmp/copy.bpf.o" >/dev/null
echo "with the stack copy on:"
cost "$tmp/copy.bpf.o"
