#!/bin/bash
# What the node agent costs next to its peers, side by side in one run:
# `smolder agent`, bpftrace and `perf record` sample the same host at the
# same time, for the same SECONDS, on the same load.
#
#   bench/agent-cost.sh SMOLDER [busy|quiet|both] [SECONDS] [-- AGENT_ARGS...]
#
# Scenarios:
#  busy   a build-like load (gcc -O2 compiling a generated 4,000-function C
#         file, over and over: gcc, cc1, as, one after the other) plus ~15
#         distinct short-lived programs started every second (a pool of 60
#         binaries, each its own build-id and functions, each spinning
#         for 40 ms of wall time, so that they never pile up), plus one
#         busy loop: both CPUs busy, new processes all the time.
#  quiet  two CPU-bound processes (`sh` busy loops), nothing else.
#
# The three samplers, at 19 Hz, with kernel and user stacks:
#  agent     SMOLDER agent -F 19 -i 10s --output-dir DIR [AGENT_ARGS]
#  bpftrace  bpftrace -e 'profile:hz:19 { @[ustack,kstack] = count(); }
#                         interval:s:10 { print(@); clear(@); }' >/dev/null
#  perf      perf record -a -g -F 19 -o FILE
# Each runs under GNU time (CPU = user + system over wall, start-up and the
# final flush included); "CPU after" is the same from SETTLE (default 30)
# seconds after the start to just before the stop, from /proc/PID/stat
# (start-up, the final flush and exit left out; the whole run when SECONDS
# is under twice SETTLE); its VmRSS is read from /proc every second (steady
# RSS: the median of the second half) and VmHWM just before it is stopped
# (peak RSS); BPF map kernel memory is the sum of `memlock` over the map
# fds in /proc/PID/fdinfo (what `bpftool map show` reports per map),
# read at the end. Also printed: each sampler's CPU in each minute after
# SETTLE (the last window shorter when SECONDS - SETTLE is not a whole
# number of minutes), and the agent's smaps_rollup
# (how RSS splits into anonymous, file and shared pages) at the end.
set -euo pipefail
smolder=$(readlink -f "$1")
scenarios=${2:-both}
secs=${3:-60}
shift $(( $# < 3 ? $# : 3 ))
settle_secs=${SETTLE:-30} # start-up, left out of "CPU after"
[ "${1:-}" = "--" ] && shift
agent_args=("$@")
[ "$(id -u)" = 0 ] || { echo "run as root (eBPF, perf -a)" >&2; exit 1; }
for tool in bpftrace perf gcc; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install bpftrace linux-perf gcc" >&2; exit 1; }
done
work=$(mktemp -d /tmp/agent-cost.XXXXXX)
load_pids=()
cleanup() {
    for p in "${load_pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- the load ---------------------------------------------------------------
mkdir -p "$work/pool"
{
    for i in $(seq 4000); do
        echo "int f$i(int x) { int s = 0; for (int k = 0; k < x; k++) s += (k * $i) ^ (s >> 3); return s; }"
    done
} >"$work/build.c"
for i in $(seq 0 59); do
    cat >"$work/pool/p$i.c" <<EOF
#include <time.h>
__attribute__((noinline)) unsigned long churn_work_$i(unsigned long n) {
    volatile unsigned long s = $i;
    for (unsigned long k = 0; k < n; k++) s = s * 31 + k;
    return s;
}
int main(void) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        churn_work_$i(100000);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 40000000L);
    return 0;
}
EOF
    gcc -O2 -g -o "$work/pool/p$i" "$work/pool/p$i.c"
done
cat >"$work/launch.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* Starts POOL/p0..p59 in turn, RATE per second, reaping as they exit. */
int main(int argc, char **argv) {
    int rate = atoi(argv[2]);
    char path[4096];
    struct timespec gap = { 0, 1000000000L / rate };
    for (unsigned i = 0;; i++) {
        snprintf(path, sizeof path, "%s/p%u", argv[1], i % 60);
        pid_t pid = fork();
        if (pid == 0) { execl(path, path, (char *)0); _exit(127); }
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        nanosleep(&gap, NULL);
    }
}
EOF
gcc -O2 -o "$work/launch" "$work/launch.c"

start_load() { # scenario
    if [ "$1" = busy ]; then
        setsid sh -c "while :; do gcc -O2 -c '$work/build.c' -o '$work/build.o'; done" >/dev/null 2>&1 &
        load_pids+=($!)
        setsid "$work/launch" "$work/pool" 15 >/dev/null 2>&1 &
        load_pids+=($!)
        setsid sh -c 'while :; do :; done' &
        load_pids+=($!)
    else
        setsid sh -c 'while :; do :; done' &
        load_pids+=($!)
        setsid sh -c 'while :; do :; done' &
        load_pids+=($!)
    fi
}
stop_load() {
    for p in "${load_pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
    wait "${load_pids[@]}" 2>/dev/null || true
    load_pids=()
}

# --- one sampler, measured --------------------------------------------------
child_of() { # pid of the command GNU time ($1) runs
    local c=""
    for _ in $(seq 100); do
        c=$(cat "/proc/$1/task/$1/children" 2>/dev/null | awk '{print $1}')
        [ -n "$c" ] && break
        sleep 0.05
    done
    echo "$c"
}
watch_rss() { # pid out: VmRSS (KiB) every second
    # Bash builtins only: a watcher that started `awk` and `sleep` every
    # second put 4 execs a second on the host, and the agent (which reads
    # every new process's mappings and facts) paid for them: 0.70 % of a
    # core after start-up on the quiet scenario, 0.21 % without them
    # (bench/README.md §13).
    local key value _ sleeper
    exec {sleeper}<> <(:)
    while [ -d "/proc/$1" ]; do
        while read -r key value _; do
            [ "$key" = VmRSS: ] && { echo "$value" >>"$2"; break; }
        done <"/proc/$1/status" 2>/dev/null || true
        read -r -t 1 -u "$sleeper" _ || true
    done
}
cpu_ticks() { # pid: utime + stime, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
bpf_memlock() { # pid: bytes of memlock over its BPF map fds, each map once
    local pid=$1
    for f in /proc/"$pid"/fdinfo/*; do
        awk '/^map_id:/ { id = $2 } /^memlock:/ { m = $2 } END { if (id != "") print id, m }' "$f" 2>/dev/null || true
    done | sort -u | awk '{ s += $2 } END { print s + 0 }'
}

run_scenario() {
    local scenario=$1 out=$work/$1
    mkdir -p "$out/store"
    start_load "$scenario"
    sleep 5
    local names=(agent bpftrace perf) tpids=() pids=()
    /usr/bin/time -f '%U %S %e %M' -o "$out/agent.time" \
        "$smolder" agent -F 19 -i 10s --output-dir "$out/store" "${agent_args[@]}" \
        >"$out/agent.out" 2>"$out/agent.err" &
    tpids+=($!)
    /usr/bin/time -f '%U %S %e %M' -o "$out/bpftrace.time" \
        bpftrace -e 'profile:hz:19 { @[ustack, kstack] = count(); } interval:s:10 { print(@); clear(@); }' \
        >/dev/null 2>"$out/bpftrace.err" &
    tpids+=($!)
    /usr/bin/time -f '%U %S %e %M' -o "$out/perf.time" \
        perf record -a -g -F 19 -o "$out/perf.data" >/dev/null 2>"$out/perf.err" &
    tpids+=($!)
    local i
    for i in 0 1 2; do
        pids[i]=$(child_of "${tpids[i]}")
        watch_rss "${pids[i]}" "$out/${names[i]}.rss" &
    done
    # CPU after start-up: utime + stime ticks from SETTLE s after the start
    # to just before the stop (start-up, the final flush and exit left out).
    local settle=$(( secs > 2 * settle_secs ? settle_secs : 0 ))
    local t0=() t1=() w0 w1
    sleep "$settle"
    w0=$(date +%s.%N)
    for i in 0 1 2; do t0[i]=$(cpu_ticks "${pids[i]}"); done
    # Each sampler's CPU per 60 s window after SETTLE, so that a cost
    # which comes later in the run (or in bursts) shows where it lies.
    local left=$(( secs - settle )) step
    while [ "$left" -gt 0 ]; do
        step=$(( left < 60 ? left : 60 ))
        sleep "$step"
        left=$(( left - step ))
        for i in 0 1 2; do echo "$(cpu_ticks "${pids[i]}") $step" >>"$out/${names[i]}.ticks"; done
    done
    w1=$(date +%s.%N)
    for i in 0 1 2; do t1[i]=$(tail -n 1 "$out/${names[i]}.ticks" | cut -d' ' -f1); done
    local hwm=() mem=()
    for i in 0 1 2; do
        hwm[i]=$(awk '/^VmHWM:/ { print $2 }' "/proc/${pids[i]}/status" 2>/dev/null || echo 0)
        mem[i]=$(bpf_memlock "${pids[i]}")
    done
    {
        echo "agent smaps_rollup at ${secs} s:"
        grep -E '^(Rss|Anonymous|Shared_|Private_)' "/proc/${pids[0]}/smaps_rollup" | sed 's/^/    /'
    } >"$out/agent.smaps"
    kill -TERM "${pids[0]}"
    kill -INT "${pids[1]}" "${pids[2]}"
    # bpftrace prints (and symbolizes) its map on exit, which can take
    # minutes on a churning host: 120 s, then it is killed (its CPU until
    # then still counts, and the kill is reported).
    local waited=0
    while [ $waited -lt 120 ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 1; waited=$((waited + 1)); done
    for i in 0 1 2; do
        if kill -0 "${pids[i]}" 2>/dev/null; then
            echo "  (${names[i]} still running 120 s after the signal: killed)" >>"$out/notes"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
    done
    wait "${tpids[@]}" 2>/dev/null || true
    stop_load
    local intervals
    intervals=$(find "$out/store" -name '*.otlp' | wc -l)
    echo "== $scenario: $secs s, load average $(cut -d' ' -f1-3 /proc/loadavg), agent wrote $intervals interval file(s)"
    printf '%-9s %18s %22s %10s %12s %14s\n' "" "CPU (% of a core)" "CPU after ${settle} s" "peak RSS" "steady RSS" "BPF map memory"
    for i in 0 1 2; do
        local user sys wall
        read -r user sys wall _ < <(tail -n 1 "$out/${names[i]}.time")
        local steady
        local n
        n=$(wc -l <"$out/${names[i]}.rss")
        steady=$(tail -n "$(( n / 2 ))" "$out/${names[i]}.rss" | sort -n |
                 awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }')
        awk -v n="${names[i]}" -v u="$user" -v s="$sys" -v w="$wall" -v h="${hwm[i]}" -v st="$steady" -v m="${mem[i]}" \
            -v dt="$(( t1[i] - t0[i] ))" -v hz="$(getconf CLK_TCK)" -v w0="$w0" -v w1="$w1" \
            'BEGIN { printf "%-9s %17.2f%% %21.2f%% %6.1f MiB %8.1f MiB %10.1f MiB\n", n, 100 * (u + s) / w, 100 * dt / hz / (w1 - w0), h / 1024, st / 1024, m / 1048576 }'
    done
    for i in 0 1 2; do
        awk -v n="${names[i]}" -v t0="${t0[i]}" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "  %s, CPU per minute after %s s (%% of a core):", n, '"$settle"' }
             { printf " %.2f", 100 * ($1 - t0) / hz / $2; t0 = $1 } END { print "" }' "$out/${names[i]}.ticks"
    done
    sed 's/^/  /' "$out/agent.smaps"
    [ -f "$out/notes" ] && cat "$out/notes"
    grep -hE 'WARN|ERROR' "$out/agent.err" | head -5 | sed 's/^/  agent: /' || true
}

echo "smolder: $smolder ${agent_args[*]}"
case $scenarios in
    both) run_scenario busy; run_scenario quiet ;;
    busy | quiet) run_scenario "$scenarios" ;;
    *) echo "scenario: busy, quiet or both" >&2; exit 1 ;;
esac
