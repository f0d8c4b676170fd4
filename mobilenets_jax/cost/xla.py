"""XLA's cost analysis: compiling a program for its counts, and normalising what `cost_analysis()` returns."""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np

# XLA:CPU options that change how the optimized HLO is turned into machine code (LLVM -O0, the classic
# loop emitters instead of the MLIR fusion emitters, one LLVM module instead of parallel split codegen),
# not the optimized HLO that cost_analysis() counts; they cut the CPU time of compiling an inference
# program severalfold. They are applied only on the CPU backend and only to programs that are counted,
# never to programs that run (`measure=True`). Flops and bytes are identical with and without them on
# all 63 configurations of `all_configs()`; tests/test_cost.py re-checks one. The fusion-emitter switch
# does change a few fusion decisions of *training* programs (docs/cost_report.md), so training programs
# get only the LLVM level.
FAST_INFERENCE_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False,
                                  'xla_cpu_parallel_codegen_split_count': 1}
FAST_TRAIN_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0}

_COST_KEYS = ('flops', 'bytes accessed', 'transcendentals')


def normalize_cost(raw: Any, what: str = 'program') -> dict:
    """Turns whatever `cost_analysis()` returned into ``{'flops', 'bytes accessed', 'transcendentals'}``.

    JAX has returned a list with one dict per program (releases before 0.4.30), a plain dict (current
    releases) and None (backends without a cost model, e.g. some PJRT plugins). A missing or non-numeric
    figure becomes None, with a RuntimeWarning that names the backend; this never raises.
    """
    if isinstance(raw, (list, tuple)):
        dicts = [entry for entry in raw if isinstance(entry, dict)]
        if len(dicts) == 1:
            raw = dicts[0]
        elif dicts:  # one entry per program: add them up
            raw = {}
            for entry in dicts:
                for key in _COST_KEYS:
                    if isinstance(entry.get(key), (int, float, np.number)):
                        raw[key] = raw.get(key, 0.0) + float(entry[key])
        else:
            raw = None
    result = dict.fromkeys(_COST_KEYS)
    if not isinstance(raw, dict):
        warnings.warn(f'XLA cost analysis is unavailable for this {what} on backend {jax.default_backend()!r} '
                      f'(cost_analysis() returned {type(raw).__name__}); its flops/bytes are reported as null',
                      RuntimeWarning, stacklevel=2)
        return result
    for key in _COST_KEYS:
        value = raw.get(key)
        if isinstance(value, (int, float, np.number)) and math.isfinite(float(value)) and float(value) >= 0:
            result[key] = float(value)
    if result['flops'] is None:
        warnings.warn(f'XLA cost analysis of this {what} has no "flops" figure on backend '
                      f'{jax.default_backend()!r}; reported as null', RuntimeWarning, stacklevel=2)
    return result


def stage_cost(stage: Any, what: str) -> dict:
    """Normalised `cost_analysis()` of a `jax.stages.Lowered` or `Compiled`; never raises."""
    try:
        raw = stage.cost_analysis()
    except Exception as error:  # noqa: BLE001 — some backends raise rather than return None
        warnings.warn(f'cost_analysis() of this {what} failed on backend {jax.default_backend()!r}: {error}',
                      RuntimeWarning, stacklevel=2)
        raw = None
    return normalize_cost(raw, what)


def compile_lowered(lowered: Any, options: Optional[dict]):
    """`lowered.compile(options)`; retries without options if this backend rejects one of them."""
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except Exception as error:  # noqa: BLE001 — e.g. "No such compile option" on another XLA build
            warnings.warn(f'compiling with {options} failed ({error}); compiling with the defaults',
                          RuntimeWarning, stacklevel=2)
    return lowered.compile()


def counting_options(kind: str, fast: bool) -> Optional[dict]:
    """The compile options of a counted 'inference' or 'train' program: the fast ones on CPU when `fast`."""
    if not fast or jax.default_backend() != 'cpu':
        return None
    return dict(FAST_INFERENCE_COMPILE_OPTIONS if kind == 'inference' else FAST_TRAIN_COMPILE_OPTIONS)


def compiled_cost(fn: Callable, *args, compiler_options: Optional[dict] = None) -> dict:
    """XLA's cost analysis of ``jax.jit(fn)`` compiled for ``args`` (arrays or `jax.ShapeDtypeStruct`s).

    ``jax.jit(fn).lower(*args).compile().cost_analysis()``, normalised by `normalize_cost`: a dict with
    'flops', 'bytes accessed', 'transcendentals' (floats, or None with a warning where the backend has no
    cost model) plus 'compile_seconds'. The program is compiled for one device (the default one), so
    the figures are those of the whole program, not of a shard.
    """
    start = time.perf_counter()
    compiled = compile_lowered(jax.jit(fn).lower(*args), compiler_options)
    result = stage_cost(compiled, 'compiled program')
    result['compile_seconds'] = time.perf_counter() - start
    return result
