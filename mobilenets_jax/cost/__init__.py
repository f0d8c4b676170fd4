"""Cost report: mult-adds from layer shapes, FLOPs and bytes from XLA's cost analysis, measured throughput.

Three kinds of numbers describe what a configuration costs, and this package keeps them apart:

* ``macs`` — the papers' "mult-adds": the multiply-accumulates of every convolution and dense layer,
  derived from the layer SHAPES at batch 1 (`macs`). Nothing is compiled for them.
* ``flops`` / ``bytes_accessed`` — XLA's cost analysis (`xla`) of the *compiled, optimized* inference
  program at batch 1 on the current backend, compiled for one device whatever the device count (a
  sharded program reports per-device figures). XLA counts 2 flops per multiply-add (skipping padded
  taps) plus the elementwise work, so ``flops`` is a little above ``2 · macs``.
* ``train_flops`` — XLA's count for one training step divided by its batch size. The step is
  `mobilenets_jax.steps`' train step, the one `train_lib` trains with (forward in train mode,
  label-smoothed cross-entropy, backward, the optimizer update, the BatchNorm statistics, the weight
  EMA, the top-1/top-5 metrics), on one device, with a training config's optimizer, label smoothing
  and EMA decay (`config_lib.default_config()` by default; `programs`). ``train_cost_source`` says which
  program was counted: 'compiled' (the optimized program, the default) or 'lowered' (the same program
  before XLA's optimization passes; see `analyze`).

Modules: `macs` (layer shapes), `xla` (cost analysis), `configs` (the grids), `programs` (what is
counted and timed), `analysis` (`analyze`: one record), `measure` (throughput), `runner` (many
configurations), `report` (formats), `machine` (host CPU and hypervisor steal, next to every timing).
"""
from mobilenets_jax.cost import machine
from mobilenets_jax.cost.analysis import DEFAULT_TRAIN_BATCH_SIZE, TRAIN_COST_SOURCES, analyze
from mobilenets_jax.cost.configs import Config, all_configs, from_training_config, grid, make_config
from mobilenets_jax.cost.macs import count_macs, count_variables, layer_costs, macs_by_kind
from mobilenets_jax.cost.measure import measure_throughput, median_seconds
from mobilenets_jax.cost.programs import train_program
from mobilenets_jax.cost.report import FIELDS, LAYER_FIELDS, MEASURE_FIELDS, format_records
from mobilenets_jax.cost.runner import run_configs
from mobilenets_jax.cost.xla import (FAST_INFERENCE_COMPILE_OPTIONS, FAST_TRAIN_COMPILE_OPTIONS, compiled_cost,
                                     normalize_cost)

__all__ = [
    'Config', 'DEFAULT_TRAIN_BATCH_SIZE', 'FAST_INFERENCE_COMPILE_OPTIONS', 'FAST_TRAIN_COMPILE_OPTIONS', 'FIELDS',
    'LAYER_FIELDS', 'MEASURE_FIELDS', 'TRAIN_COST_SOURCES', 'all_configs', 'analyze', 'compiled_cost',
    'count_macs', 'count_variables', 'format_records', 'from_training_config', 'grid', 'layer_costs', 'machine',
    'macs_by_kind', 'make_config', 'measure_throughput', 'median_seconds', 'normalize_cost', 'run_configs',
    'train_program',
]
