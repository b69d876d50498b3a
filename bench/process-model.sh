#!/bin/bash
# What the single process model changed: opens, /proc reads, CPU and RSS of
# `smolder agent` and `smolder record -a`, two builds side by side in one run
# on the same host activity.
#
#   bench/process-model.sh OLD_SMOLDER NEW_SMOLDER [SECONDS]
#
# For each binary and each mode, two runs of SECONDS (default 60):
#  1. under `strace -f -e trace=open,openat,openat2`: opens of files under
#     /proc (every /proc read starts with one) and of everything else,
#     successful and failed;
#  2. under GNU time: CPU (user + system over wall) and peak RSS, no tracer.
# The agent runs `-F 19 -i 10s --output-dir DIR`; record runs
# `record -a -F 19 -d SECONDS --format otlp`. Runs alternate old/new so that
# host activity that drifts over time touches both alike.
set -euo pipefail
old=$1
new=$2
secs=${3:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # label binary mode traced
    local label=$1 bin=$2 mode=$3 traced=$4
    local out=$work/$label-$mode
    mkdir -p "$out"
    local cmd
    if [ "$mode" = agent ]; then
        cmd=(timeout -s TERM "$secs" "$bin" agent -F 19 -i 10s --output-dir "$out/store")
    else
        cmd=("$bin" record -a -F 19 -d "$secs" --format otlp -o "$out/rec.pb")
    fi
    if [ "$traced" = yes ]; then
        strace -f -qq -e trace=open,openat,openat2 -o "$out/strace" "${cmd[@]}" \
            >/dev/null 2>"$out/stderr" || true
        local proc_ok proc_fail other_ok other_fail
        proc_ok=$(grep -E '"/proc/' "$out/strace" | grep -cvE '= -1 ' || true)
        proc_fail=$(grep -E '"/proc/' "$out/strace" | grep -cE '= -1 ' || true)
        other_ok=$(grep -vE '"/proc/' "$out/strace" | grep -E 'open' | grep -cvE '= -1 ' || true)
        other_fail=$(grep -vE '"/proc/' "$out/strace" | grep -E 'open' | grep -cE '= -1 ' || true)
        local pids
        pids=$(grep -oE '"/proc/[0-9]+/' "$out/strace" | sort -u | wc -l)
        printf '%-4s %-6s opens: /proc %6d (+%d failed) of %d processes, other files %6d (+%d failed)\n' \
            "$label" "$mode" "$proc_ok" "$proc_fail" "$pids" "$other_ok" "$other_fail"
        # Per /proc entry: how often each is opened per process seen.
        grep -oE '"/proc/[0-9]+/[a-z_]+' "$out/strace" | sed -E 's|"/proc/[0-9]+/||' | sort | uniq -c |
            awk -v p="$pids" -v l="$label" -v m="$mode" '{ printf "%-4s %-6s   /proc/PID/%-10s %6d opens, %.2f per process\n", l, m, $2, $1, $1 / p }'
        grep -vE '"/proc/' "$out/strace" | grep -oE 'open[a-z0-9]*\(AT_FDCWD, "[^"]*"|open[a-z0-9]*\([0-9]+, "[^"]*"' |
            sed -E 's/.*"(.*)"/\1/; s|/[^/]*$||' | sort | uniq -c | sort -rn | head -5 |
            awk -v l="$label" -v m="$mode" '{ printf "%-4s %-6s   other: %6d in %s\n", l, m, $1, $2 }' 
    else
        /usr/bin/time -f '%U %S %e %M' -o "$out/time" "${cmd[@]}" >/dev/null 2>"$out/stderr" || true
        # (GNU time puts "Command exited with non-zero status" first when
        # timeout ends the agent.)
        read -r user sys wall rss_kib < <(tail -n 1 "$out/time")
        awk -v l="$label" -v m="$mode" -v u="$user" -v s="$sys" -v w="$wall" -v r="$rss_kib" \
            'BEGIN { printf "%-4s %-6s CPU %5.2f %% of one core (%.1f s over %.0f s), peak RSS %d MiB\n", l, m, 100 * (u + s) / w, u + s, w, r / 1024 }'
    fi
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in agent record; do
    for traced in yes no; do
        run old "$old" "$mode" "$traced"
        run new "$new" "$mode" "$traced"
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
