"""JAX's persistent compilation cache: where train.py, eval.py and sweep.py keep compiled programs, and
whether a compilation came out of it.

A restarted run (after preemption, a crash, or for the next evaluation) loads its train and eval steps
from disk instead of compiling them again. Measured on the 2-core Xeon (README, "Training"): the
MobileNetV2-224 batch-16 train step takes 11.8 s to trace, lower and compile, 3.7 s to trace, lower and
load from the cache.

Where the cache lives, first match wins:
1. `--compilation_cache_dir=DIR` (an empty value turns it off);
2. `$JAX_COMPILATION_CACHE_DIR`, JAX's own setting;
3. `DEFAULT_DIR`.

Only process 0 of a multi-process run writes entries (JAX's rule), so on a TPU pod point every host at one
shared directory (gs://...) or the other hosts never hit. JAX writes only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s) to compile, never replaces an entry, and does not
limit the directory's size. On CPU, XLA refuses an entry compiled for a CPU with other features and
compiles afresh, so a cache on a shared disk is safe.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

DEFAULT_DIR = '~/.cache/mobilenets_jax/xla'
ENV_VAR = 'JAX_COMPILATION_CACHE_DIR'


def resolve_dir(flag_value: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The cache directory to use: the flag's value (None: not given; '': off), else
    $JAX_COMPILATION_CACHE_DIR, else `DEFAULT_DIR`. Local paths come back absolute with ~ expanded; None
    means no cache."""
    if flag_value is None:
        flag_value = environ.get(ENV_VAR) or DEFAULT_DIR
    if not flag_value.strip():
        return None
    if '://' in flag_value:  # gs://, s3://: JAX opens these through etils.epath
        return flag_value
    return os.path.abspath(os.path.expanduser(flag_value))


def enable(flag_value: Optional[str]) -> Optional[str]:
    """Points JAX's persistent cache at `resolve_dir(flag_value)`, or turns it off where that is None (even
    where $JAX_COMPILATION_CACHE_DIR set it); returns the directory.

    Call it before the process compiles anything: JAX decides once, at its first compilation, whether this
    process uses the cache.
    """
    import jax
    directory = resolve_dir(flag_value)
    jax.config.update('jax_enable_compilation_cache', directory is not None)
    jax.config.update('jax_compilation_cache_dir', directory)
    return directory


def current_dir() -> Optional[str]:
    """The directory JAX's persistent cache is set to in this process, or None."""
    import jax
    return jax.config.jax_compilation_cache_dir


# JAX's monitoring events: every compilation of a program sends the first (a load from the cache too),
# a program loaded from the persistent cache also the second.
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'


class CompileEvents:
    """Counts, while the `with` block runs, the programs compiled or loaded (`programs`) and those the
    persistent cache served (`cache_hits`).

        with CompileEvents() as events:
            compiled = jitted.lower(*args).compile()
        describe(events)  # 'loaded from the persistent compilation cache'
    """

    def __init__(self):
        self.programs = self.cache_hits = 0

    def _on_event(self, event: str, **kwargs) -> None:
        if event == _CACHE_HIT_EVENT:
            self.cache_hits += 1

    def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            self.programs += 1

    def __enter__(self) -> 'CompileEvents':
        import jax.monitoring
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring
        jax.monitoring.unregister_event_listener(self._on_event)
        jax.monitoring.unregister_event_duration_listener(self._on_duration)


def describe(events: CompileEvents) -> str:
    """How the watched programs came to be, for the console."""
    if events.programs == 0:
        return 'reused (compiled earlier in this process)'
    if events.cache_hits == events.programs:
        return 'loaded from the persistent compilation cache'
    if events.cache_hits:
        return (f'{events.programs - events.cache_hits} of {events.programs} programs compiled, the others '
                'loaded from the persistent compilation cache')
    if current_dir():
        return f'compiled (persistent cache: {current_dir()})'
    return 'compiled (persistent cache not in use)'
