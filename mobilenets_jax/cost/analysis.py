"""`analyze`: the cost record of one configuration (mult-adds, XLA's counts, optionally measured rates)."""
from __future__ import annotations

import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobilenets_jax import config_lib, published
from mobilenets_jax.cost import macs as macs_lib, programs, xla
from mobilenets_jax.cost.configs import make_config
from mobilenets_jax.cost.measure import measure_throughput

TRAIN_COST_SOURCES = ('compiled', 'lowered', 'none')
DEFAULT_TRAIN_BATCH_SIZE = 32


def analyze(name: str, alpha: float = 1.0, groups: Optional[int] = None, resolution: Optional[int] = None,
            num_classes: Optional[int] = None, *, train: bool = True, train_cost: Optional[str] = None,
            measure: bool = False, batch_size: int = DEFAULT_TRAIN_BATCH_SIZE, per_layer: bool = False,
            training_config: Optional[ml_collections.ConfigDict] = None, model_kwargs: Optional[dict] = None,
            fast_compile: bool = True, measure_runs: int = 5) -> dict:
    """The cost record of one configuration (see `report.FIELDS`, and docs/cost_report.md).

    Args:
      name, alpha, groups, resolution, num_classes: the configuration (resolution: the model's base size
        by default; num_classes: the model's default). Checked by the registry before anything is traced.
      train: also count the training step (``train_flops``); False leaves it None.
      train_cost: 'compiled' (default): XLA's count of the compiled, optimized training step;
        'lowered': the same program's count before XLA's optimizations (``Lowered.cost_analysis()``,
        5-10x cheaper to get on CPU; differs from 'compiled' where the backend rewrites ops, see
        docs/cost_report.md); 'none': skip it.
      measure: also run both programs on the current device at `batch_size` and report images/second
        (2 warm-up calls, then the median of `measure_runs` synchronized calls).
      batch_size: batch of the training step whose count is divided into ``train_flops``, and of the
        measured programs.
      per_layer: add ``layers``: the `layer_costs` rows with XLA's flops/bytes per layer.
      training_config: the training config whose step is counted and timed: its optimizer, label
        smoothing and EMA decay (default `config_lib.default_config()`, the papers' recipe).
      model_kwargs: extra `create_model` arguments (e.g. padding_style, depthwise_impl, dropout_rate).
      fast_compile: on CPU, compile the counted programs with `xla.FAST_*_COMPILE_OPTIONS` (same counts).

    Returns:
      A dict with the keys of `report.FIELDS` (plus `report.MEASURE_FIELDS` and ``layers`` when asked for).
    """
    config = make_config(name, alpha, groups, resolution, num_classes)
    if train_cost is None:
        train_cost = 'compiled' if train else 'none'
    if train_cost not in TRAIN_COST_SOURCES:
        raise ValueError(f'train_cost={train_cost!r}; allowed: {", ".join(TRAIN_COST_SOURCES)}')
    if not train:
        train_cost = 'none'
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f'batch_size={batch_size!r}: must be an integer >= 1')
    training_config = config_lib.default_config() if training_config is None else training_config
    res = config.resolution
    model, variables = programs.abstract_model(config.group_key, tuple(sorted((model_kwargs or {}).items())))
    counts = macs_lib.count_variables(variables)

    # Inference at batch 1, unsharded; the layer shapes (macs) are recorded while it is traced.
    recorder = macs_lib.LayerRecorder()

    def infer(v, images):
        with nn.intercept_methods(recorder):
            return model.apply(v, images, train=False)

    start = time.perf_counter()
    lowered = jax.jit(infer).lower(variables, jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32))
    inference = xla.stage_cost(xla.compile_lowered(lowered, xla.counting_options('inference', fast_compile)),
                               'compiled inference program')
    compile_seconds = time.perf_counter() - start
    rows = [macs_lib.layer_row(record) for record in recorder.records]
    macs = int(sum(row['macs'] for row in rows))

    train_flops = None
    if train_cost != 'none':
        start = time.perf_counter()
        lowered = programs.train_program(config, batch_size=batch_size, training_config=training_config,
                                         model_kwargs=model_kwargs)
        if train_cost == 'compiled':
            cost = xla.stage_cost(xla.compile_lowered(lowered, xla.counting_options('train', fast_compile)),
                                  'compiled train step')
        else:
            cost = xla.stage_cost(lowered, 'lowered train step')
        compile_seconds += time.perf_counter() - start
        if cost['flops'] is not None:
            train_flops = cost['flops'] / batch_size

    flops, bytes_accessed = inference['flops'], inference['bytes accessed']
    record = dict(
        model=config.model, alpha=config.alpha, groups=config.groups, resolution=res,
        num_classes=config.num_classes, params=counts.get('params', 0), batch_stats=counts.get('batch_stats', 0),
        macs=macs, flops=flops, train_flops=train_flops, bytes_accessed=bytes_accessed,
        arithmetic_intensity=(flops / bytes_accessed) if flops is not None and bytes_accessed else None,
        published_macs=published.published_macs(config.model, config.alpha, config.groups, res),
        published_params=published.published_params(config.model, config.alpha, config.groups),
        backend=jax.default_backend(), compile_seconds=round(compile_seconds, 3),
        train_batch_size=batch_size if train_cost != 'none' else None,
        train_cost_source=train_cost if train_cost != 'none' else None,
    )
    if record['published_macs'] is not None:
        record['published_macs'] = int(round(record['published_macs']))
    if record['published_params'] is not None:
        record['published_params'] = int(round(record['published_params']))
    if measure:
        record.update(measure_throughput(model, config, batch_size, training_config, runs=measure_runs))
    if per_layer:
        macs_lib.add_layer_xla_costs(recorder.records, rows, fast_compile)
        record['layers'] = rows
    return record
