#!/usr/bin/env python3
"""What smolder agents cost on a quiet host once started, side by side.

    sudo bench/agent-steady.py WARM SECS SMOLDER [SMOLDER...]

Starts two `sh` busy loops (one pinned per CPU) and every given agent
binary (`agent -i 10s -F 19 --output-dir DIR`) at once, waits WARM
seconds (start-up: BTF, the programs' load, kallsyms, first tables), then
reads each agent's CPU ticks (user + system, /proc/PID/stat) at the start
and the end of the next SECS seconds. Nothing else is started while it
measures (a helper process would be one more process for the agents to
read and symbolize). Agents run in the same window, so a slower or busier
host moves them alike: compare builds within one run, not across runs.
Each agent samples the others too.
"""
import os
import subprocess
import sys
import tempfile
import time


def ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    warm, secs, binaries = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    work = tempfile.mkdtemp(prefix="agent-steady.")
    loops = [
        subprocess.Popen(["taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"])
        for cpu in (0, 1)
    ]
    agents = []
    try:
        for i, binary in enumerate(binaries):
            log = open(os.path.join(work, f"agent{i}.log"), "w")
            agents.append(
                subprocess.Popen(
                    [binary, "agent", "-i", "10s", "-F", "19", "--output-dir",
                     os.path.join(work, f"agent{i}")],
                    stdout=log, stderr=log,
                )
            )
        time.sleep(warm)
        start = [ticks(a.pid) for a in agents]
        time.sleep(secs)
        end = [ticks(a.pid) for a in agents]
        peaks = [hwm_kib(a.pid) for a in agents]
    finally:
        for a in agents:
            a.send_signal(2)
        for a in agents:
            a.wait()
        for loop in loops:
            loop.kill()
    hz = os.sysconf("SC_CLK_TCK")
    print(f"load average {open('/proc/loadavg').read().split()[0]}, logs in {work}")
    for binary, s, e, peak in zip(binaries, start, end, peaks):
        print(f"{binary}: start-up {s / hz:.2f} s of CPU in {warm} s; "
              f"then {(e - s) / hz:.2f} s in {secs} s = {100 * (e - s) / hz / secs:.2f} % of a core; "
              f"peak RSS {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
