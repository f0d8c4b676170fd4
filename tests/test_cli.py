"""cli_utils: what every entry point does first, and the CPU allocator hint."""
import glob
import os
import subprocess
import sys

import pytest
from absl import app

from mobilenets_jax import cli_utils, compilation_cache

GLIBC_MAPS = ('7f3a2c000000-7f3a2c028000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n'
              '7f3a2d000000-7f3a2d100000 r-xp 00000000 fe:01 5678 /opt/venv/lib/python3.11/site-packages/'
              'jaxlib/xla_extension.so\n')
TCMALLOC_MAPS = GLIBC_MAPS + ('7f3a2e000000-7f3a2e020000 r-xp 00000000 fe:01 91 '
                              '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n')
JEMALLOC_MAPS = GLIBC_MAPS + ('7f3a2e000000-7f3a2e020000 r-xp 00000000 fe:01 92 '
                              '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n')


def test_preloaded_allocator_read_from_the_memory_map():
    assert cli_utils.preloaded_allocator(GLIBC_MAPS) is None
    assert cli_utils.preloaded_allocator(TCMALLOC_MAPS) == 'tcmalloc'
    assert cli_utils.preloaded_allocator(JEMALLOC_MAPS) == 'jemalloc'


def test_preloaded_allocator_of_a_real_process():
    """Read from the live /proc/self/maps: glibc without LD_PRELOAD, tcmalloc with it (where installed)."""
    code = 'from mobilenets_jax import cli_utils; print(cli_utils.preloaded_allocator())'
    env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
    plain = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split()[-1] == 'None'
    for library in glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4'):   # absent on CI: nothing more to check
        preloaded = subprocess.run([sys.executable, '-c', code], env={**env, 'LD_PRELOAD': library},
                                   capture_output=True, text=True, check=True)
        assert preloaded.stdout.split()[-1] == 'tcmalloc'


def test_allocator_hint_only_for_xla_cpu_on_glibc():
    hint = cli_utils.cpu_allocator_hint('cpu', GLIBC_MAPS)
    assert 'tcmalloc' in hint and 'LD_PRELOAD=' in hint
    assert cli_utils.cpu_allocator_hint('cpu', TCMALLOC_MAPS) is None
    # jemalloc keeps the pages only with its decay off.
    assert 'MALLOC_CONF=dirty_decay_ms:-1' in cli_utils.cpu_allocator_hint('cpu', JEMALLOC_MAPS, malloc_conf='')
    assert cli_utils.cpu_allocator_hint('cpu', JEMALLOC_MAPS, 'dirty_decay_ms:-1,muzzy_decay_ms:-1') is None
    assert cli_utils.cpu_allocator_hint('gpu', GLIBC_MAPS) is None
    assert cli_utils.cpu_allocator_hint('tpu', GLIBC_MAPS) is None


def test_start_rejects_stray_arguments_before_touching_devices():
    with pytest.raises(app.UsageError, match='unexpected arguments: extra --oops'):
        cli_utils.start(['train.py', 'extra', '--oops'])


def test_compilation_cache_dir_resolution(tmp_path):
    """Flag, then $JAX_COMPILATION_CACHE_DIR, then the default; an empty flag turns the cache off."""
    home = os.path.expanduser('~')
    assert compilation_cache.resolve_dir(None, {}) == os.path.join(home, '.cache', 'mobilenets_jax', 'xla')
    assert compilation_cache.resolve_dir(None, {'JAX_COMPILATION_CACHE_DIR': str(tmp_path)}) == str(tmp_path)
    assert compilation_cache.resolve_dir('rel/dir', {'JAX_COMPILATION_CACHE_DIR': '/elsewhere'}) == \
        os.path.abspath('rel/dir')
    assert compilation_cache.resolve_dir('', {'JAX_COMPILATION_CACHE_DIR': '/elsewhere'}) is None
    assert compilation_cache.resolve_dir('  ', {}) is None
    assert compilation_cache.resolve_dir('gs://bucket/xla', {}) == 'gs://bucket/xla'


# Compiles one program (cached whatever its compile time) in a fresh process, as an entry point would with
# `--compilation_cache_dir=argv[1]`, and prints what CompileEvents saw.
_COMPILE_ONCE = '''
import sys, jax, jax.numpy as jnp
from mobilenets_jax import compilation_cache
compilation_cache.enable(sys.argv[1])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
program = jax.jit(lambda x: jnp.sin(x) @ x.T)
with compilation_cache.CompileEvents() as events:
    program.lower(x).compile()
print(events.programs, events.cache_hits, compilation_cache.describe(events))
'''


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    cache, elsewhere = tmp_path / 'xla', tmp_path / 'from_env'
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='1', JAX_COMPILATION_CACHE_DIR=str(elsewhere))
    run = lambda flag: subprocess.run([sys.executable, '-c', _COMPILE_ONCE, flag], env=env, capture_output=True,
                                      text=True, check=True).stdout.strip()
    assert run(str(cache)) == f'1 0 compiled (persistent cache: {cache})'
    assert [p for p in os.listdir(cache) if not p.startswith('.')], 'nothing was written to the cache'
    assert run(str(cache)) == '1 1 loaded from the persistent compilation cache'
    # An empty flag turns the cache off, even where $JAX_COMPILATION_CACHE_DIR names one.
    assert run('') == '1 0 compiled (persistent cache not in use)'
    assert not elsewhere.exists()


def test_compile_events_in_this_process():
    """This test process has no persistent cache; a program already compiled is not compiled again."""
    import jax
    add_one = jax.jit(lambda x: x + 1)
    with compilation_cache.CompileEvents() as first:
        add_one(1.0)
    with compilation_cache.CompileEvents() as second:
        add_one(2.0)
    assert (first.programs, first.cache_hits) == (1, 0)
    assert compilation_cache.describe(first) == 'compiled (persistent cache not in use)'
    assert second.programs == 0 and compilation_cache.describe(second) == 'reused (compiled earlier in this process)'


def test_closed_loop_noise_is_dropped_and_nothing_else():
    """tensorstore reports a write callback that finds orbax's closed asyncio loop through
    sys.unraisablehook; the entry points drop exactly that report and pass every other one on."""
    class RaisesWhenCollected:
        def __init__(self, message):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    from absl import logging as absl_logging
    handler = absl_logging.get_absl_handler()
    hooks, filters, reported = (sys.excepthook, sys.unraisablehook), list(handler.filters), []
    try:
        sys.unraisablehook = lambda unraisable: reported.append(str(unraisable.exc_value))
        cli_utils.quiet_library_logs()   # wraps the hook in place
        RaisesWhenCollected('Event loop is closed')
        RaisesWhenCollected('a real failure')
    finally:
        sys.excepthook, sys.unraisablehook = hooks
        handler.filters[:] = filters
    assert reported == ['a real failure']
