"""What every entry point shares: multi-process start-up, the CPU allocator hint and turning user errors
into exit status 2."""
from __future__ import annotations

import contextlib
import glob
import os
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


# Allocators that keep freed memory mapped (jemalloc only with its decay disabled: docs/performance.md).
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


def cpu_allocator_hint(backend: str, maps_text: Optional[str] = None,
                       malloc_conf: Optional[str] = None) -> Optional[str]:
    """The advice to preload tcmalloc, for a process that runs XLA:CPU on glibc malloc; else None.

    XLA:CPU allocates a training step's large scratch buffer with malloc on every call. glibc serves
    blocks that large with a fresh mmap and unmaps them on free, so each step page-faults all of it in
    again; tcmalloc keeps the pages, and so does jemalloc once its decay is off (`malloc_conf`, default
    $MALLOC_CONF). docs/performance.md ("Preload tcmalloc on CPU") has the measurements.
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
                'MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (docs/performance.md).')
    found = sorted(glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4') + glob.glob('/usr/lib/libtcmalloc_minimal.so.4'))
    how = (f'LD_PRELOAD={found[0]}' if found
           else 'apt install libtcmalloc-minimal4, then LD_PRELOAD=<its libtcmalloc_minimal.so.4>')
    return ('XLA:CPU on glibc malloc page-faults its scratch memory in again on every step; training runs '
            f'1.4-1.8x faster with tcmalloc: {how} (docs/performance.md).')


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
