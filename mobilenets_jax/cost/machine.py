"""Facts about the machine that timings need next to them: the host CPU and the hypervisor's steal.

On a shared cloud host the hypervisor gives this VM's virtual CPUs to other guests now and then
(steal, in Linux's /proc/stat); a rate measured while it is high says little about the code. The cost
report and the benchmarks record it with every timing and warn above `STEAL_WARNING`.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Optional

# Timings taken while the hypervisor stole more than this share of the CPUs get a warning.
STEAL_WARNING = 0.03


def host_cpu(cpuinfo_text: Optional[str] = None) -> str:
    """This machine's CPU for benchmark headers, e.g. 'AMD EPYC (family 25, model 17), 2 CPUs'.

    The model name, and on x86 the family and model numbers (some VMs report only 'AMD EPYC', which
    does not tell Zen generations apart), come from the first processor of Linux's /proc/cpuinfo
    (`cpuinfo_text` defaults to it), else from Python's `platform`. The count is the CPUs this process
    may run on (a container's cpuinfo lists the host's). This project's VMs have been Intel Xeon and AMD
    EPYC hosts, and the ratios against PyTorch differ between them (docs/performance.md).
    """
    if cpuinfo_text is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ''
    first = {}
    for line in cpuinfo_text.split('\n\n')[0].splitlines():
        key, sep, value = line.partition(':')
        if sep:
            first.setdefault(key.strip(), value.strip())
    name = first.get('model name') or platform.processor() or platform.machine() or 'unknown CPU'
    if 'cpu family' in first and 'model' in first:
        name += f' (family {first["cpu family"]}, model {first["model"]})'
    count = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{name}, {count} CPUs'


def cpu_times(stat_path: str = '/proc/stat') -> Optional[tuple]:
    """(steal, total) jiffies of all CPUs from Linux's /proc/stat, or None where there is no such file."""
    try:
        with open(stat_path) as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != 'cpu' or len(fields) < 9:
        return None
    jiffies = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user.
    return jiffies[7], sum(jiffies[:8])


def steal_fraction(before: Optional[tuple], after: Optional[tuple]) -> Optional[float]:
    """The share of CPU time stolen between two `cpu_times()` readings (None if either is missing)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


@contextlib.contextmanager
def record_steal(record: dict, stat_path: str = '/proc/stat'):
    """Sets ``record['steal']`` to the share of CPU time stolen while the block ran (None off Linux)."""
    before = cpu_times(stat_path)
    yield record
    record['steal'] = steal_fraction(before, cpu_times(stat_path))


def steal_warning(what: str, steal: Optional[float]) -> Optional[str]:
    """The warning for a timing of `what` taken while `steal` (a `steal_fraction`) was high; else None."""
    if steal is None or steal <= STEAL_WARNING:
        return None
    return (f'warning: the hypervisor took {100 * steal:.0f}% of the CPU time while {what} was timed (steal '
            'in /proc/stat); its rates are unreliable, measure it again')
