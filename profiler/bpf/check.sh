#!/usr/bin/env bash
# CI check: the committed sampler.bpf.o is the object its source makes.
# Rebuilds into a temporary directory and compares byte for byte.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$here/build.sh" "$tmp/sampler.bpf.o" >/dev/null
if ! cmp -s "$tmp/sampler.bpf.o" "$here/sampler.bpf.o"; then
	echo "check.sh: profiler/bpf/sampler.bpf.o is stale: it differs from what" >&2
	echo "  sampler.bpf.c + sampler.h build to. Run profiler/bpf/build.sh and commit" >&2
	echo "  the new sampler.bpf.o with the source change." >&2
	exit 1
fi
echo "check.sh: profiler/bpf/sampler.bpf.o matches its source"
