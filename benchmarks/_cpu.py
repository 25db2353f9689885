"""CPU accounting shared by the benchmarks (a helper, not a benchmark: `./dev bench` skips files named _*)."""
from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent on processes (user, nice, system) or lost to the hypervisor (steal).

    Interrupt time is left out: the kernel does not charge it to any process, and most of it here is the
    loopback traffic of the benchmark itself.
    """
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(t) for t in stat.readline().split()[1:9])
    return (user + nice + system + steal) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float:
    """CPU-seconds (user and system, all threads) one process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
