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

from mobilenets_jax import compilation_cache, errors

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


class _DiskFullReportedOnce(logging_std.Filter):
    """A full disk fails orbax's background save threads, each of which logs its traceback; the entry
    point reports it in one line (`errors.disk_full_error`), so those records are dropped."""

    def filter(self, record):
        if record.exc_info and record.exc_info[1] is not None and errors.is_disk_full(record.exc_info[1]):
            return False
        return 'No space left on device' not in record.getMessage()


def _is_closed_loop_noise(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'


def _without_closed_loop_noise(hook):
    """When a save fails (a full disk), tensorstore's pending write callbacks find orbax's asyncio loop
    closed; tensorstore reports that through sys.unraisablehook (or sys.excepthook) as an 'Event loop is
    closed' traceback that says nothing more than the one-line disk-full error."""
    def excepthook(kind, value, traceback):
        if not _is_closed_loop_noise(value):
            hook(kind, value, traceback)
    return excepthook


def _without_closed_loop_unraisable(hook):
    def unraisablehook(unraisable):
        if not _is_closed_loop_noise(unraisable.exc_value):
            hook(unraisable)
    return unraisablehook


def quiet_library_logs() -> None:
    handler = absl_logging.get_absl_handler()
    handler.addFilter(_QuietLibraries())
    handler.addFilter(_DiskFullReportedOnce())
    sys.excepthook = _without_closed_loop_noise(sys.excepthook)
    sys.unraisablehook = _without_closed_loop_unraisable(sys.unraisablehook)


def define_run_flags(config_help: str, workdir_help: str) -> None:
    """The flags train.py and eval.py share: --config (with --config.x=y overrides), --workdir, the
    multi-process flags and --compilation_cache_dir."""
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
    flags.DEFINE_string('workdir', None, workdir_help)
    define_distributed_flags()
    define_compilation_cache_flag()
    flags.mark_flags_as_required(['config', 'workdir'])


def _one_line(text: str) -> str:
    """A config file's exception arrives as a traceback inside the flag error: keep its head and last line."""
    if 'Traceback' in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = f'{text.split("Traceback")[0].strip()} {lines[-1]}'
    return ' '.join(text.split())


def _fail(message: str, status: int = errors.EXIT_USER_ERROR):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(status)


def parse_flags(argv):
    """absl's flag parsing, but every mistake is one line and exit status 2: an unknown or malformed flag
    (e.g. --config.batch_size=abc), a missing required flag, a --config file that does not exist or that
    raises when it is loaded (config_flags loads it lazily, so it is loaded here, before anything runs)."""
    try:
        args = FLAGS(argv)
    except flags.Error as error:
        _fail(_one_line(str(error)))
    if 'config' in FLAGS and FLAGS['config'].present:
        from ml_collections import config_flags
        filename = config_flags.get_config_filename(FLAGS['config'])
        if not os.path.isfile(filename):
            _fail(f'--config={filename}: no such file')
        try:
            FLAGS.config.get('model')
        except Exception as error:  # noqa: BLE001 — whatever the config file raised
            _fail(f'--config={filename}: {_one_line(str(error)) or type(error).__name__}')
    return args


def run(main) -> None:
    """`app.run(main)` with `parse_flags`."""
    app.run(main, flags_parser=parse_flags)


@contextlib.contextmanager
def one_line_errors():
    """Our checks' errors as one line instead of a traceback: a ValueError (bad input, workdir in use, disk
    full: `errors.UserError`) exits 2; `errors.TrainingStopped` (non-finite or diverging loss) exits 3."""
    try:
        yield
    except errors.TrainingStopped as stop:
        _fail(f'{stop}', errors.EXIT_TRAINING_STOPPED)
    except errors.DiskFullError as error:
        # orbax's failed background writers would log more tracebacks while the interpreter shuts down
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(errors.EXIT_USER_ERROR)
    except ValueError as error:
        _fail(f'{error}')
