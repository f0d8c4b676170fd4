"""What every entry point shares: multi-process start-up and turning user errors into exit status 2."""
from __future__ import annotations

import contextlib
import os
import sys

import logging as logging_std

from absl import flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS


def define_distributed_flags() -> None:
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
    flags.DEFINE_integer('process_id', None, 'This process\'s index (multi-process runs).')


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
