"""Cost report: mult-adds from layer shapes, FLOPs and bytes from XLA's cost analysis, measured throughput.

Three kinds of numbers describe what a configuration costs, and this module keeps them apart:

* ``macs`` — the papers' "mult-adds": the multiply-accumulates of every convolution and dense layer,
  derived from the layer SHAPES (``out_h · out_w · k · k · (c_in / groups) · c_out`` per convolution,
  ``in · out`` per dense layer) at batch 1. Nothing is compiled for them: the shapes are recorded by
  Flax method interception while the network is traced with abstract inputs. BatchNorm, activations,
  pooling, residual additions and biases are not counted, as in the papers' tables.
* ``flops`` / ``bytes_accessed`` — XLA's cost analysis of the *compiled, optimized* inference program at
  batch 1 on the current backend, compiled for one device whatever the device count (a sharded program
  reports per-device figures). XLA counts 2 flops per multiply-add (skipping padded taps) plus the
  elementwise work, so ``flops`` is a little above ``2 · macs``.
* ``train_flops`` — XLA's count for one training step (forward in train mode, label-smoothed
  cross-entropy, backward, the project's optimizer update from `optim.create_optimizer`, the BatchNorm
  statistics update) divided by its batch size. ``train_cost_source`` says which program was counted:
  'compiled' (the optimized program, the default) or 'lowered' (the same program before XLA's
  optimization passes, `jax.stages.Lowered.cost_analysis()`; see `analyze`).

Every program is lowered from abstract values (`jax.ShapeDtypeStruct`); no parameter is materialized
except for ``measure=True``, which runs the programs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobilenets_jax import cli_utils, ops, optim, published
from mobilenets_jax.models import init as model_init, layers, registry

# The fields of one `analyze` record, in output order.
FIELDS = (
    'model', 'alpha', 'groups', 'resolution', 'num_classes', 'params', 'batch_stats', 'macs', 'flops',
    'train_flops', 'bytes_accessed', 'arithmetic_intensity', 'published_macs', 'published_params',
    'backend', 'compile_seconds', 'train_batch_size', 'train_cost_source',
)
MEASURE_FIELDS = ('batch_size', 'inference_images_per_sec', 'train_images_per_sec', 'steal')
LAYER_FIELDS = ('name', 'kind', 'kernel', 'output_shape', 'params', 'macs', 'flops', 'bytes')

TRAIN_COST_SOURCES = ('compiled', 'lowered', 'none')
DEFAULT_TRAIN_BATCH_SIZE = 32
WEIGHT_DECAY = 4e-5       # the papers' coupled L2 (not on depthwise filters, biases or BatchNorm)
LABEL_SMOOTHING = 0.1

# XLA:CPU options that change how the optimized HLO is turned into machine code (LLVM -O0, the classic
# loop emitters instead of the MLIR fusion emitters, one LLVM module instead of parallel split codegen),
# not the optimized HLO that cost_analysis() counts; they cut the CPU time of compiling an inference
# program ~5x. They are applied only on the CPU backend and only to programs that are counted, never to
# programs that run (`measure=True`). Verified: flops and bytes identical with and without them on all 63
# configurations of `all_configs()`; tests/test_cost.py re-checks one. The fusion-emitter switch does
# change a few fusion decisions of *training* programs (ShuffleNet V1: 0.005% of the flops, 0.9% of the
# bytes), so training programs get only the LLVM level (identical counts on the configurations tried).
FAST_INFERENCE_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False,
                                  'xla_cpu_parallel_codegen_split_count': 1}
FAST_TRAIN_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0}


# --------------------------------------------------------------------------------------------------
# Cost-analysis normalisation
# --------------------------------------------------------------------------------------------------

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


def _stage_cost(stage: Any, what: str) -> dict:
    """Normalised `cost_analysis()` of a `jax.stages.Lowered` or `Compiled`; never raises."""
    try:
        raw = stage.cost_analysis()
    except Exception as error:  # noqa: BLE001 — some backends raise rather than return None
        warnings.warn(f'cost_analysis() of this {what} failed on backend {jax.default_backend()!r}: {error}',
                      RuntimeWarning, stacklevel=2)
        raw = None
    return normalize_cost(raw, what)


def _compile(lowered: Any, options: Optional[dict]):
    """`lowered.compile(options)`; retries without options if this backend rejects one of them."""
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except Exception as error:  # noqa: BLE001 — e.g. "No such compile option" on another XLA build
            warnings.warn(f'compiling with {options} failed ({error}); compiling with the defaults',
                          RuntimeWarning, stacklevel=2)
    return lowered.compile()


def _counting_options(kind: str, fast: bool) -> Optional[dict]:
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
    compiled = _compile(jax.jit(fn).lower(*args), compiler_options)
    result = _stage_cost(compiled, 'compiled program')
    result['compile_seconds'] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------------
# Layer shapes and mult-adds
# --------------------------------------------------------------------------------------------------

def _module_attributes(module: nn.Module) -> dict:
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ('parent', 'name')}


class _LayerRecorder:
    """A Flax method interceptor that records the input/output shapes of every conv and dense layer."""

    def __init__(self):
        self.records: list[dict] = []

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != '__call__' or not isinstance(
                module, (layers.Conv2D, layers.DepthwiseConv2D, nn.Conv, nn.Dense)):
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv) and isinstance(module.parent, layers.Conv2D):
            return next_fun(*args, **kwargs)   # `Conv2D` wraps an nn.Conv named 'conv': count the wrapper once
        inputs = args[0]
        outputs = next_fun(*args, **kwargs)
        self.records.append(dict(module_type=type(module), path='/'.join(str(p) for p in module.path),
                                 attributes=_module_attributes(module), input_shape=tuple(inputs.shape),
                                 input_dtype=jnp.dtype(inputs.dtype), output_shape=tuple(outputs.shape)))
        return outputs


def _layer_row(record: dict) -> dict:
    module_type, attrs = record['module_type'], record['attributes']
    in_shape, out_shape = record['input_shape'], record['output_shape']
    batch, cin, cout = in_shape[0], in_shape[-1], out_shape[-1]
    positions = int(np.prod(out_shape[1:-1], dtype=np.int64))   # output pixels (1 for a dense layer on (N, C))
    strides = pads = None
    if issubclass(module_type, nn.Dense):
        kind, kernel, groups = 'dense', None, 1
        taps = 1
    else:
        if issubclass(module_type, layers.DepthwiseConv2D):
            groups, kernel = cin, (attrs['kernel_size'],) * 2
        elif issubclass(module_type, layers.Conv2D):
            groups, kernel = attrs['groups'], (attrs['kernel_size'],) * 2
        else:  # a bare nn.Conv
            groups = attrs.get('feature_group_count', 1)
            size = attrs['kernel_size']
            kernel = tuple(size) if isinstance(size, Sequence) else (size, size)
        taps = int(np.prod(kernel))
        if issubclass(module_type, (layers.Conv2D, layers.DepthwiseConv2D)):
            strides = attrs['strides']
            pads = ops.explicit_padding(in_shape[1], in_shape[2], kernel, strides,
                                        layers.conv_padding(attrs['kernel_size'], attrs['padding_style']))
        if groups == 1:
            kind = 'conv'
        elif groups == cin and cout % cin == 0:
            kind = 'depthwise'
        else:
            kind = 'group_conv'
    use_bias = attrs.get('use_bias', issubclass(module_type, nn.Dense))
    params = taps * (cin // groups) * cout + (cout if use_bias else 0)
    macs = batch * positions * taps * (cin // groups) * cout
    return dict(name=record['path'], kind=kind, kernel=kernel, groups=groups, strides=strides, pads=pads,
                input_shape=in_shape, output_shape=out_shape, params=int(params), macs=int(macs))


def _standalone_layer_cost(record: dict, fast_compile: bool = True) -> dict:
    """XLA's cost analysis of one layer compiled on its own (abstract variables and input)."""
    module = record['module_type'](**record['attributes'])
    x = jax.ShapeDtypeStruct(record['input_shape'], record['input_dtype'])
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    cost = compiled_cost(lambda v, inputs: module.apply(v, inputs), variables, x,
                         compiler_options=_counting_options('inference', fast_compile))
    return {'flops': cost['flops'], 'bytes': cost['bytes accessed']}


def _add_layer_xla_costs(records: list[dict], rows: list[dict], fast_compile: bool = True) -> None:
    cache: dict = {}
    for record, row in zip(records, rows):
        key = (record['module_type'], repr(sorted(record['attributes'].items())), record['input_shape'],
               str(record['input_dtype']))
        if key not in cache:
            cache[key] = _standalone_layer_cost(record, fast_compile)
        row.update(cache[key])


def _image_shape(image_size, batch: int) -> tuple:
    height, width = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    return (batch, int(height), int(width), 3)


def layer_costs(model: nn.Module, image_size, batch: int = 1, *, xla: bool = False) -> list[dict]:
    """One row per convolution and dense layer of `model`, in execution order.

    Each row holds ``name`` (the Flax module path), ``kind`` ('conv', 'depthwise', 'group_conv' or
    'dense'), ``kernel`` (spatial kernel size; None for dense), ``groups``, ``strides`` and ``pads``
    (the explicit ((top, bottom), (left, right)) padding; both None for dense layers and bare
    `nn.Conv`s), ``input_shape``, ``output_shape``,
    ``params`` (kernel + bias) and ``macs``, derived from the layer SHAPES:
    ``out_h · out_w · k · k · (c_in / groups) · c_out`` for a convolution and ``in · out`` for a dense
    layer, times ``batch``. Nothing is compiled for these: the shapes are recorded while
    `jax.eval_shape` traces ``model.init`` on an abstract input.

    With ``xla=True`` each row also gets ``flops`` and ``bytes``: XLA's cost analysis of that layer
    compiled on its own at the same shapes (its convolution or matmul plus its bias add; bytes as XLA
    counts them: input, weights and output). Identical layers are compiled once.
    """
    recorder = _LayerRecorder()

    def init():
        with nn.intercept_methods(recorder):
            return model.init(jax.random.key(0), jnp.zeros(_image_shape(image_size, batch), jnp.float32),
                              train=False)

    jax.eval_shape(init)
    rows = [_layer_row(record) for record in recorder.records]
    if xla:
        _add_layer_xla_costs(recorder.records, rows)
    return rows


def count_macs(model: nn.Module, image_size) -> int:
    """The papers' mult-adds of `model` at batch 1: the sum of `layer_costs` macs, from layer SHAPES.

    Convolutions (dense, grouped and depthwise, squeeze-and-excite 1×1 convs included) and dense layers
    count; BatchNorm, activations, pooling, additions and biases do not. No compilation.
    """
    return int(sum(row['macs'] for row in layer_costs(model, image_size, batch=1)))


def macs_by_kind(rows: Iterable[dict]) -> dict:
    """Share of the mult-adds per layer kind, with 1×1 convolutions ('conv1x1') split out of 'conv'."""
    totals: dict = {}
    for row in rows:
        kind = row['kind']
        if kind in ('conv', 'group_conv') and row['kernel'] == (1, 1):
            kind = 'conv1x1' if kind == 'conv' else 'group_conv1x1'
        totals[kind] = totals.get(kind, 0) + row['macs']
    return totals


def count_variables(variables: Any) -> dict:
    """Number of scalars per collection, e.g. ``{'params': 4231976, 'batch_stats': 21888}``."""
    return {collection: int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))
            for collection, tree in variables.items()}


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """One point of the report: a model name, its width multiplier, groups, input size and classes."""
    model: str
    alpha: float
    groups: Optional[int]
    resolution: int
    num_classes: int

    @property
    def group_key(self) -> tuple:
        """Configurations that share their parameter shapes (everything but the resolution)."""
        return (self.model, self.alpha, self.groups, self.num_classes)


def make_config(name: str, alpha: float = 1.0, groups: Optional[int] = None, resolution: Optional[int] = None,
                num_classes: Optional[int] = None) -> Config:
    """Checks a configuration with the registry (nothing is traced or compiled); ValueError names the value."""
    spec = registry.get_spec(name)
    alpha = registry.check_alpha(spec, alpha)
    groups = registry.check_groups(spec, groups)
    if resolution is None:
        resolution = spec.base_resolution
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f'resolution={resolution!r}: the input size must be a positive integer')
    resolution = int(resolution)
    if resolution < spec.min_input_size:
        raise ValueError(f'resolution={resolution} is too small for {name}: the input size must be >= '
                         f'{spec.min_input_size} (the product of its strides)')
    if num_classes is None:
        num_classes = spec.default_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f'num_classes={num_classes!r}: must be an integer >= 1')
    return Config(name, alpha, groups, resolution, int(num_classes))


def grid(name: str, alphas: Optional[Sequence[float]] = None, resolutions: Optional[Sequence[int]] = None,
         groups: Optional[Sequence[Optional[int]]] = None, num_classes: Optional[int] = None) -> list[Config]:
    """The configurations alphas × groups × resolutions of one model (defaults: its published grid)."""
    spec = registry.get_spec(name)
    alphas = list(alphas) if alphas else list(spec.published_alphas)
    resolutions = list(resolutions) if resolutions else list(spec.published_resolutions)
    groups = list(groups) if groups else [None]
    return [make_config(name, a, g, r, num_classes) for a in alphas for g in groups for r in resolutions]


def all_configs(num_classes: Optional[int] = None, *, include_cifar: bool = False) -> list[Config]:
    """Every ImageNet model over its published α × resolution grid, ShuffleNet V1 over its group counts.

    MobileNetV1 4 α × 4 resolutions, its conv and shallow baselines, MobileNetV2 6 multipliers × 5
    resolutions, MobileNetV3 Large/Small at 1.0 and 0.75, ShuffleNet V1 g = 1, 2, 3, 4, 8 at 1× and
    g = 3 at 0.5× and 0.25×, ShuffleNet V2 0.5×-2×: 63 configurations, a superset of every point of
    `published.PUBLISHED_MACS`. ``include_cifar`` adds the CIFAR study's 6 α × 6 resolution grids.
    """
    configs = []
    for name in registry.list_models():
        spec = registry.get_spec(name)
        if spec.base_resolution != 224 and not include_cifar:
            continue
        for alpha in spec.published_alphas:
            if spec.allowed_groups is None:
                group_values = [None]
            elif float(alpha) == 1.0:
                group_values = list(spec.allowed_groups)
            else:
                group_values = [spec.default_groups]
            for groups in group_values:
                for resolution in spec.published_resolutions:
                    configs.append(make_config(name, alpha, groups, resolution, num_classes))
    return configs


def from_training_config(config, num_classes: Optional[int] = None) -> tuple[Config, dict]:
    """The configuration a training config describes, and the `analyze` options that reproduce its step.

    Model name, α, groups and the other model fields, the image size round(ρ × the dataset's base size),
    the dataset's class count (unless `num_classes` is given), and the training step's optimizer and
    label smoothing (the schedule's constants do not change the count). Checks every field first.
    """
    from mobilenets_jax import config_lib
    from mobilenets_jax.data import input_pipeline   # imports TensorFlow
    try:
        info = input_pipeline.get_dataset_info(config.dataset)
    except (KeyError, ValueError) as error:
        raise ValueError(f'config.dataset={config.dataset!r}: {error}') from None
    num_classes = num_classes or info.num_classes
    config_lib.create_model(config, num_classes=num_classes)   # checks the model fields and the image size
    kwargs = config_lib.model_kwargs(config, num_classes)
    alpha, groups = kwargs.pop('alpha'), kwargs.pop('groups')
    kwargs.pop('num_classes')
    result = make_config(config.model.name, alpha, groups, config_lib.image_size(config), num_classes)
    _, tx = optim.optimizer_from_config(config, steps_per_epoch=1000, num_epochs=config.num_epochs,
                                        warmup_epochs=config.warmup_epochs,
                                        base_learning_rate=config.learning_rate)
    options = dict(model_kwargs={k: v for k, v in kwargs.items() if v is not None}, optimizer=tx,
                   label_smoothing=float(config.label_smoothing))
    return result, options


# --------------------------------------------------------------------------------------------------
# Programs
# --------------------------------------------------------------------------------------------------

def default_optimizer() -> optax.GradientTransformation:
    """The papers' recipe as configs/default.py sets it: TF-form RMSprop, staircase decay, L2 4e-5.

    The schedule's constants do not change the count (the learning rate is a handful of scalar ops).
    """
    learning_rate_fn = optim.learning_rate_schedule(
        base_learning_rate=0.165, steps_per_epoch=1251, num_epochs=300.0, warmup_epochs=5.0,
        schedule='exponential', decay_rate=0.94, decay_epochs=2.5)
    return optim.create_optimizer(learning_rate_fn=learning_rate_fn, weight_decay=WEIGHT_DECAY)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, num_classes: int,
                    label_smoothing: float = LABEL_SMOOTHING) -> Callable:
    """One unsharded training step: (params, batch_stats, opt_state, images, labels, rng) → new state, loss.

    Forward in train mode (dropout, BatchNorm on batch statistics), label-smoothed softmax
    cross-entropy, gradients, `tx`'s update and the new BatchNorm running averages. (The training
    loop's weight EMA and its metrics are not part of it.)
    """
    def train_step(params, batch_stats, opt_state, images, labels, rng):
        dropout_key = jax.random.wrap_key_data(rng)

        def loss_fn(p):
            logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, images, train=True,
                                          mutable=['batch_stats'], rngs={'dropout': dropout_key})
            loss = optim.cross_entropy(logits, labels, num_classes, label_smoothing)
            return jnp.mean(loss), updates.get('batch_stats', {})

        (loss, new_batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_batch_stats, opt_state, loss

    return train_step


def _train_args(variables: Any, opt_state: Any, batch: int, resolution: int) -> tuple:
    return (variables['params'], variables.get('batch_stats', {}), opt_state,
            jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.uint32))


@functools.lru_cache(maxsize=8)
def _abstract_state(config_key: tuple, model_kwargs: tuple):
    """(model, abstract variables) of one configuration group.

    Parameter shapes do not depend on the input size (every model ends in a global pool), so the
    variables are traced once at the base resolution and reused for every resolution of a grid; were a
    shape to differ, Flax's parameter shape check would fail loudly while the program is traced.
    """
    name, alpha, groups, num_classes = config_key
    model = registry.create_model(name, alpha=alpha, groups=groups, num_classes=num_classes, **dict(model_kwargs))
    return model, model_init.abstract_variables(model, _image_shape(registry.get_spec(name).base_resolution, 1))


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

def _rel(value, reference):
    if value is None or reference in (None, 0):
        return None
    return value / reference - 1.0


def analyze(name: str, alpha: float = 1.0, groups: Optional[int] = None, resolution: Optional[int] = None,
            num_classes: Optional[int] = None, *, train: bool = True, train_cost: Optional[str] = None,
            measure: bool = False, batch_size: int = DEFAULT_TRAIN_BATCH_SIZE, per_layer: bool = False,
            optimizer: Optional[optax.GradientTransformation] = None, label_smoothing: float = LABEL_SMOOTHING,
            model_kwargs: Optional[dict] = None, fast_compile: bool = True, measure_runs: int = 5) -> dict:
    """The cost record of one configuration (see `FIELDS`, and the README's "Cost report" section).

    Args:
      name, alpha, groups, resolution, num_classes: the configuration (resolution: the model's base size
        by default; num_classes: the model's default). Checked by the registry before anything is traced.
      train: also count the training step (``train_flops``); False leaves it None.
      train_cost: 'compiled' (default): XLA's count of the compiled, optimized training step;
        'lowered': the same program's count before XLA's optimizations (``Lowered.cost_analysis()``,
        5-10x cheaper to get on CPU; differs from 'compiled' where the backend rewrites ops, see the
        README); 'none': skip it.
      measure: also run both programs on the current device at `batch_size` and report images/second
        (2 warm-up calls, then the median of `measure_runs` synchronized calls).
      batch_size: batch of the training step whose count is divided into ``train_flops``, and of the
        measured programs.
      per_layer: add ``layers``: the `layer_costs` rows with XLA's flops/bytes per layer.
      optimizer: the training step's optimizer (default `default_optimizer()`).
      label_smoothing: of the training step's cross-entropy.
      model_kwargs: extra `create_model` arguments (e.g. padding_style, depthwise_impl, dropout_rate).
      fast_compile: on CPU, compile the counted programs with `FAST_*_COMPILE_OPTIONS` (same counts).

    Returns:
      A dict with the keys of `FIELDS` (plus `MEASURE_FIELDS` and ``layers`` when asked for).
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
    kwargs = tuple(sorted((model_kwargs or {}).items()))
    res = config.resolution
    model, variables = _abstract_state(config.group_key, kwargs)
    counts = count_variables(variables)

    # Inference at batch 1, unsharded; the layer shapes (macs) are recorded while it is traced.
    recorder = _LayerRecorder()

    def infer(v, images):
        with nn.intercept_methods(recorder):
            return model.apply(v, images, train=False)

    start = time.perf_counter()
    lowered = jax.jit(infer).lower(variables, jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32))
    inference = _stage_cost(_compile(lowered, _counting_options('inference', fast_compile)),
                            'compiled inference program')
    compile_seconds = time.perf_counter() - start
    rows = [_layer_row(record) for record in recorder.records]
    macs = int(sum(row['macs'] for row in rows))

    train_flops = None
    tx = optimizer if optimizer is not None else default_optimizer()
    if train_cost != 'none':
        opt_state = jax.eval_shape(tx.init, variables['params'])
        step = make_train_step(model, tx, config.num_classes, label_smoothing)
        start = time.perf_counter()
        lowered = jax.jit(step).lower(*_train_args(variables, opt_state, batch_size, res))
        if train_cost == 'compiled':
            cost = _stage_cost(_compile(lowered, _counting_options('train', fast_compile)), 'compiled train step')
        else:
            cost = _stage_cost(lowered, 'lowered train step')
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
        record.update(measure_throughput(model, config, batch_size, tx, label_smoothing, runs=measure_runs))
    if per_layer:
        _add_layer_xla_costs(recorder.records, rows, fast_compile)
        record['layers'] = rows
    return record


def median_seconds(fn: Callable, warmup: int, runs: int) -> float:
    """Median wall seconds of `runs` synchronized calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_throughput(model: nn.Module, config: Config, batch_size: int, tx: optax.GradientTransformation,
                       label_smoothing: float = LABEL_SMOOTHING, *, warmup: int = 2, runs: int = 5) -> dict:
    """Images/second of inference and of the training step at `batch_size` on the default device.

    Both programs are compiled with the backend's default options, run `warmup` times, then timed
    `runs` times (each call synchronized with `block_until_ready`); the median is reported. ``steal`` is
    the share of CPU time the hypervisor took while they ran (`cli_utils.cpu_times`; None off Linux):
    above `cli_utils.STEAL_WARNING` the rates say more about the host's other guests than the model.
    """
    res = config.resolution
    variables = model_init.init_variables(model, 0, (1, res, res, 3))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch_size, res, res, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, config.num_classes, size=(batch_size,), dtype=np.int32))

    # Compiled before the timed span, so that `steal` is the share of the calls' time alone.
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
    state = [variables['params'], variables.get('batch_stats', {}), tx.init(variables['params'])]
    key = jnp.asarray(jax.random.key_data(jax.random.key(0)))
    step = jax.jit(make_train_step(model, tx, config.num_classes, label_smoothing), donate_argnums=(0, 1, 2)
                   ).lower(*state, images, labels, key).compile()

    def train_once():
        params, batch_stats, opt_state, loss = step(*state, images, labels, key)
        state[:] = [params, batch_stats, opt_state]
        return loss

    record = {'batch_size': batch_size}
    with cli_utils.record_steal(record):
        inference_seconds = median_seconds(lambda: infer(variables, images), warmup, runs)
        train_seconds = median_seconds(train_once, warmup, runs)
    record.update(inference_images_per_sec=batch_size / inference_seconds,
                  train_images_per_sec=batch_size / train_seconds)
    return record


# --------------------------------------------------------------------------------------------------
# Running many configurations (a process pool) and formatting the records
# --------------------------------------------------------------------------------------------------

_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _run_task(task: tuple) -> list:
    """Worker side: analyze the configurations of one group (they share one traced parameter tree)."""
    indexed_configs, options = task
    results = []
    for index, config in indexed_configs:
        start = time.perf_counter()
        try:
            record = analyze(config.model, config.alpha, config.groups, config.resolution, config.num_classes,
                             **options)
            results.append((index, record, None))
        except Exception as error:  # noqa: BLE001 — reported by the parent with the configuration
            results.append((index, None, f'{type(error).__name__}: {error}'))
        if _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put((index, time.perf_counter() - start))
    return results


def _describe(config: Config) -> str:
    groups = f' g={config.groups}' if config.groups is not None else ''
    return f'{config.model} α={config.alpha:g}{groups} {config.resolution}'


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f'{seconds // 60}:{seconds % 60:02d}'


def run_configs(configs: Sequence[Config], *, workers: Optional[int] = None,
                progress: Optional[Callable[[str], None]] = None, **options) -> list[dict]:
    """`analyze` for every configuration, in order; with more than one worker, in a process pool.

    Configurations that differ only in resolution go to the same worker (their parameter shapes are
    traced once). `progress` receives one line per finished configuration ("[n/N] ..., ETA m:ss").
    Raises RuntimeError naming the configuration if one of them fails.
    """
    import os
    configs = list(configs)
    total = len(configs)
    groups: dict = {}
    for index, config in enumerate(configs):
        groups.setdefault(config.group_key, []).append((index, config))
    if workers is None:
        workers = 1 if total < 4 or options.get('measure') else min(os.cpu_count() or 1, len(groups), 8)
    workers = max(1, min(int(workers), len(groups)))
    start = time.perf_counter()
    done = 0
    records: list = [None] * total

    def report(index: int, seconds: float) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            progress(f'[{done}/{total}] {_describe(configs[index])}: {seconds:.1f} s · '
                     f'elapsed {_format_duration(elapsed)} · ETA {_format_duration(eta)}')

    def collect(results: list) -> None:
        for index, record, error in results:
            if error is not None:
                raise RuntimeError(f'{_describe(configs[index])} failed: {error}')
            records[index] = record

    # Biggest groups first, so that the last task to finish is a short one.
    tasks = sorted(groups.values(), key=len, reverse=True)
    if workers == 1:
        for task in tasks:
            for item in task:
                t0 = time.perf_counter()
                collect(_run_task(([item], options)))
                report(item[0], time.perf_counter() - t0)
        return records

    import concurrent.futures
    import multiprocessing
    import queue as queue_lib
    context = multiprocessing.get_context('spawn')   # never fork a process that has started XLA threads
    progress_queue = context.Queue()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                                initargs=(progress_queue,)) as pool:
        futures = [pool.submit(_run_task, (task, options)) for task in tasks]
        pending = set(futures)
        while pending or done < total:
            try:
                index, seconds = progress_queue.get(timeout=0.2)
                report(index, seconds)
            except queue_lib.Empty:
                pass
            finished = {f for f in pending if f.done()}
            for future in finished:
                collect(future.result())
            pending -= finished
            if not pending and done < total:
                # Every task has returned: drain what is left of the progress messages.
                try:
                    index, seconds = progress_queue.get(timeout=5.0)
                    report(index, seconds)
                except queue_lib.Empty:
                    break
    return records


def _fmt_count(value, unit: float, digits: int = 2) -> str:
    return '-' if value is None else f'{value / unit:.{digits}f}'


def _fmt_rel(value, reference) -> str:
    rel = _rel(value, reference)
    return '-' if rel is None else f'{100 * rel:+.1f}%'


TABLE_COLUMNS = ('model', 'α', 'g', 'res', 'params M', 'vs pub', 'MACs M', 'pub M', 'vs pub', 'GFLOPs',
                 'train GFLOPs/img', 'MB accessed', 'flops/byte', 'compile s')


def _table_row(record: dict) -> list[str]:
    row = [record['model'], f"{record['alpha']:g}", '-' if record['groups'] is None else str(record['groups']),
           str(record['resolution']), _fmt_count(record['params'], 1e6, 3),
           _fmt_rel(record['params'], record['published_params']), _fmt_count(record['macs'], 1e6, 1),
           _fmt_count(record['published_macs'], 1e6, 0), _fmt_rel(record['macs'], record['published_macs']),
           _fmt_count(record['flops'], 1e9, 3), _fmt_count(record['train_flops'], 1e9, 3),
           _fmt_count(record['bytes_accessed'], 1e6, 1),
           '-' if record['arithmetic_intensity'] is None else f"{record['arithmetic_intensity']:.1f}",
           f"{record['compile_seconds']:.1f}"]
    if 'inference_images_per_sec' in record:
        steal = record.get('steal')
        row += [f"{record['inference_images_per_sec']:.1f}", f"{record['train_images_per_sec']:.1f}",
                '-' if steal is None else f'{100 * steal:.0f}%']
    return row


LAYER_COLUMNS = ('layer', 'kind', 'kernel', 'output', 'params', 'MACs', '% MACs', 'flops', 'bytes')


def _layer_table_rows(record: dict) -> list[list[str]]:
    total = sum(row['macs'] for row in record['layers']) or 1
    out = []
    for row in record['layers']:
        kernel = '-' if row['kernel'] is None else 'x'.join(str(k) for k in row['kernel'])
        out.append([row['name'], row['kind'], kernel, 'x'.join(str(d) for d in row['output_shape'][1:]),
                    str(row['params']), str(row['macs']), f"{100 * row['macs'] / total:.2f}",
                    '-' if row.get('flops') is None else str(int(row['flops'])),
                    '-' if row.get('bytes') is None else str(int(row['bytes']))])
    return out


def _kind_summary(record: dict) -> str:
    shares = macs_by_kind(record['layers'])
    total = sum(shares.values()) or 1
    return ' · '.join(f'{kind} {100 * value / total:.2f}%'
                      for kind, value in sorted(shares.items(), key=lambda kv: -kv[1]))


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: '  '.join(str(c).rjust(w) if i >= 1 else str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(['-' * w for w in widths])] + [line(r) for r in rows]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    rule = '|' + '|'.join(':---' if i == 0 else '---:' for i in range(len(header))) + '|'
    out = ['| ' + ' | '.join(header) + ' |', rule]
    return out + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_records(records: Sequence[dict], fmt: str = 'table') -> str:
    """Renders `analyze` records as 'table', 'json' (one object per line), 'csv' or 'markdown'.

    'csv' has a header and one row per configuration (the `FIELDS`, plus `MEASURE_FIELDS` when
    measured); when the records have per-layer rows it is one row per layer instead, keyed by the
    configuration's model/alpha/groups/resolution.
    """
    import csv
    import io
    import json
    if fmt == 'json':
        return '\n'.join(json.dumps(_json_ready(r)) for r in records)
    measured = any('inference_images_per_sec' in r for r in records)
    has_layers = any('layers' in r for r in records)
    if fmt == 'csv':
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator='\n')
        if has_layers:
            key_fields = ('model', 'alpha', 'groups', 'resolution')
            writer.writerow(key_fields + LAYER_FIELDS)
            for r in records:
                for row in r.get('layers', []):
                    writer.writerow([r[k] for k in key_fields] + [
                        'x'.join(map(str, row[f])) if f in ('kernel', 'output_shape') and row[f] is not None
                        else row.get(f) for f in LAYER_FIELDS])
        else:
            fields = FIELDS + (MEASURE_FIELDS if measured else ())
            writer.writerow(fields)
            for r in records:
                writer.writerow(['' if r.get(f) is None else r.get(f) for f in fields])
        return buffer.getvalue().rstrip('\n')
    if fmt not in ('table', 'markdown'):
        raise ValueError(f'format={fmt!r}; allowed: table, json, csv, markdown')
    header = list(TABLE_COLUMNS) + (['infer img/s', 'train img/s', 'steal'] if measured else [])
    render = _aligned if fmt == 'table' else _markdown
    lines = render(header, [_table_row(r) for r in records])
    steal_warnings = [cli_utils.steal_warning(f"{r['model']} α={r['alpha']:g} {r['resolution']}", r.get('steal'))
                      for r in records]
    if any(steal_warnings):
        lines += [''] + [w for w in steal_warnings if w]
    for r in records:
        if 'layers' in r:
            title = (f"{r['model']} α={r['alpha']:g}" + (f" g={r['groups']}" if r['groups'] is not None else '')
                     + f" {r['resolution']}x{r['resolution']}")
            lines += ['', f'### {title}' if fmt == 'markdown' else f'{title}:', '']
            lines += render(LAYER_COLUMNS, _layer_table_rows(r))
            lines += ['', f'MACs by layer kind: {_kind_summary(r)}']
    return '\n'.join(lines)
