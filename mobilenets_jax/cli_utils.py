"""What every entry point shares: multi-process start-up, the CPU allocator hint and turning user errors
into exit status 2."""
from __future__ import annotations

import contextlib
import glob
import os
import platform
import sys
from typing import Optional

import logging as logging_std

from absl import app, flags
from absl import logging as absl_logging

from mobilenets_jax import compilation_cache

FLAGS = flags.FLAGS


def define_distributed_flags() -> None:
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
    flags.DEFINE_integer('process_id', None, 'This process\'s index (multi-process runs).')


def define_compilation_cache_flag() -> None:
    flags.DEFINE_string('compilation_cache_dir', None,
                        'JAX persistent compilation cache: a restarted run loads its compiled steps from here '
                        'instead of compiling again (default: $JAX_COMPILATION_CACHE_DIR, else '
                        f'{compilation_cache.DEFAULT_DIR}; an empty value turns it off; multi-host: a directory '
                        'every host can read, e.g. gs://...).')


def initialize_distributed() -> None:
    """Calls `jax.distributed.initialize` before anything touches devices, when running multi-process.

    Explicit flags win; otherwise the platform's environment (TPU VM pods, SLURM, ...) is auto-detected
    when JAX_COORDINATOR_ADDRESS or a TPU worker list says we are one of several processes.
    """
    import jax
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif os.environ.get('JAX_COORDINATOR_ADDRESS') or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
        jax.distributed.initialize()


def start(argv, distributed: bool = True, persistent_cache: bool = False) -> None:
    """What every entry point's `main` does first: reject stray arguments, quiet library logs, turn on the
    persistent compilation cache (`persistent_cache`: the entry point defines `--compilation_cache_dir`)
    before anything compiles, join the other processes of a multi-host run (`distributed`), and log
    `cpu_allocator_hint` when it applies."""
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    quiet_library_logs()
    if persistent_cache:
        directory = compilation_cache.enable(FLAGS.compilation_cache_dir)
        absl_logging.info('Persistent compilation cache: %s', directory or 'off')
    if distributed:
        initialize_distributed()
    import jax
    hint = cpu_allocator_hint(jax.default_backend())
    if hint:
        absl_logging.info(hint)


# Allocators that keep freed memory mapped (jemalloc only with its decay disabled: see the README).
_RETAINING_ALLOCATORS = ('tcmalloc', 'jemalloc')


def preloaded_allocator(maps_text: Optional[str] = None) -> Optional[str]:
    """'tcmalloc' or 'jemalloc' when that library is mapped into this process (LD_PRELOAD), else None
    (glibc malloc). `maps_text` defaults to /proc/self/maps; None where that is unreadable (not Linux)."""
    if maps_text is None:
        try:
            with open('/proc/self/maps') as f:
                maps_text = f.read()
        except OSError:
            return None
    for name in _RETAINING_ALLOCATORS:
        if f'/lib{name}' in maps_text:
            return name
    return None


def host_cpu(cpuinfo_text: Optional[str] = None) -> str:
    """This machine's CPU for benchmark headers, e.g. 'AMD EPYC (family 25, model 17), 2 CPUs'.

    The model name, and on x86 the family and model numbers (some VMs report only 'AMD EPYC', which
    does not tell Zen generations apart), come from the first processor of Linux's /proc/cpuinfo
    (`cpuinfo_text` defaults to it), else from Python's `platform`. The count is the CPUs this process
    may run on (a container's cpuinfo lists the host's). This project's VMs have been Intel Xeon and AMD
    EPYC hosts, and the ratios against PyTorch differ between them (README, "Performance").
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
    """(steal, total) jiffies of all CPUs from Linux's /proc/stat, or None where there is no such file.

    Steal is time the hypervisor gave this VM's virtual CPUs to someone else. On a shared cloud host it
    comes and goes, and a timing taken while it is high says little (README, "Performance").
    """
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


# Timings taken while the hypervisor stole more than this share of the CPUs get a warning.
STEAL_WARNING = 0.03


def steal_warning(what: str, steal: Optional[float]) -> Optional[str]:
    """The warning for a timing of `what` taken while `steal` (a `steal_fraction`) was high; else None."""
    if steal is None or steal <= STEAL_WARNING:
        return None
    return (f'warning: the hypervisor took {100 * steal:.0f}% of the CPU time while {what} was timed (steal '
            'in /proc/stat); its rates are unreliable, measure it again')


def cpu_allocator_hint(backend: str, maps_text: Optional[str] = None,
                       malloc_conf: Optional[str] = None) -> Optional[str]:
    """The advice to preload tcmalloc, for a process that runs XLA:CPU on glibc malloc; else None.

    XLA:CPU allocates a training step's scratch buffer (685 MB for MobileNetV1-224 at batch 16) with
    malloc on every call. glibc serves blocks that large with a fresh mmap and unmaps them on free, so each
    step page-faults all of it in again (~177,000 faults per step); tcmalloc keeps the pages, and so does
    jemalloc once its decay is off (`malloc_conf`, default $MALLOC_CONF). Measured on the 2-core Xeon,
    batch 16 (README, "Performance"): MobileNetV1-224 training 16 → 22 img/s, MobileNetV2-224 14 → 24.
    """
    if backend != 'cpu':
        return None
    allocator = preloaded_allocator(maps_text)
    if allocator == 'tcmalloc':
        return None
    if allocator == 'jemalloc':
        conf = os.environ.get('MALLOC_CONF', '') if malloc_conf is None else malloc_conf
        if 'dirty_decay_ms:-1' in conf and 'muzzy_decay_ms:-1' in conf:
            return None
        return ('XLA:CPU on jemalloc with decay on page-faults its scratch memory in again on every step; set '
                'MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (README, "Performance").')
    found = sorted(glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4') + glob.glob('/usr/lib/libtcmalloc_minimal.so.4'))
    how = (f'LD_PRELOAD={found[0]}' if found
           else 'apt install libtcmalloc-minimal4, then LD_PRELOAD=<its libtcmalloc_minimal.so.4>')
    return ('XLA:CPU on glibc malloc page-faults its scratch memory in again on every step; training runs '
            f'1.4-1.8x faster with tcmalloc: {how} (README, "Performance").')


class _QuietLibraries(logging_std.Filter):
    """Keeps orbax's and TFDS's INFO chatter out of the console; their warnings still show."""
    _NOISY = ('orbax', 'tensorflow_datasets', 'etils')

    def filter(self, record):
        return record.levelno >= logging_std.WARNING or not any(n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


@contextlib.contextmanager
def user_errors_exit_2():
    """A ValueError from our checks is a user error: print one line, exit 2, no traceback."""
    try:
        yield
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
