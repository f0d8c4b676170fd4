"""JAX's persistent compilation cache: where train.py, eval.py and sweep.py keep compiled programs, and
whether a compilation came out of it.

A restarted run (after preemption, a crash, or for the next evaluation) loads its train and eval steps
from disk instead of compiling them again. Measured on the 2-core Xeon (README, "Training"): the
MobileNetV2-224 batch-16 train step compiles in 9.0 s and loads from the cache in 0.9 s.

Where the cache lives, first match wins:
1. `--compilation_cache_dir=DIR` (an empty value turns it off);
2. `$JAX_COMPILATION_CACHE_DIR`, JAX's own setting;
3. `DEFAULT_DIR`.

Only process 0 of a multi-process run writes entries (JAX's rule), so on a TPU pod point every host at one
shared directory (gs://...) or the other hosts never hit. JAX writes only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s) to compile. On CPU, XLA refuses an entry compiled
for a CPU with other features and compiles afresh, so a cache on a shared disk is safe.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

DEFAULT_DIR = '~/.cache/mobilenets_jax/xla'
ENV_VAR = 'JAX_COMPILATION_CACHE_DIR'

_HIT_EVENT = '/jax/compilation_cache/cache_hits'


def resolve_dir(flag_value: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The cache directory to use: the flag's value (None: not given; '': off), else $JAX_COMPILATION_CACHE_DIR,
    else `DEFAULT_DIR`. Local paths come back absolute with ~ expanded; None means no cache."""
    if flag_value is None:
        flag_value = environ.get(ENV_VAR) or DEFAULT_DIR
    if not flag_value.strip():
        return None
    if '://' in flag_value:  # gs://, s3://: JAX opens these through etils.epath
        return flag_value
    return os.path.abspath(os.path.expanduser(flag_value))


def enable(directory: Optional[str]) -> Optional[str]:
    """Points JAX's persistent cache at `directory` (None: leaves the cache off); returns `directory`.

    Call it before the process compiles anything: JAX decides once, at its first compilation, whether this
    process uses the cache.
    """
    import jax
    if directory is not None:
        jax.config.update('jax_compilation_cache_dir', directory)
    return directory


def current_dir() -> Optional[str]:
    """The directory JAX's persistent cache is set to in this process, or None."""
    import jax
    return jax.config.jax_compilation_cache_dir


class CacheHits:
    """Counts the compilations served by the persistent cache while the `with` block runs.

        with CacheHits() as hits:
            compiled = jitted.lower(*args).compile()
        hits.count  # 1 when it came from disk
    """

    def __init__(self):
        self.count = 0

    def _listen(self, event: str, **kwargs) -> None:
        if event == _HIT_EVENT:
            self.count += 1

    def __enter__(self) -> 'CacheHits':
        import jax.monitoring
        jax.monitoring.register_event_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring
        jax.monitoring.unregister_event_listener(self._listen)


def describe(hits: CacheHits) -> str:
    """How a step came to be: 'loaded from the persistent compilation cache', 'compiled (persistent cache:
    DIR)' or 'compiled (no persistent cache)'."""
    if hits.count:
        return 'loaded from the persistent compilation cache'
    directory = current_dir()
    return f'compiled (persistent cache: {directory})' if directory else 'compiled (no persistent cache)'
