"""PyTorch-layout state dicts (torchvision `.pth`, timm `model.safetensors`) → the zoo's variables.

A source module (`weights.torchvision`, `weights.timm`) supplies a *key table*: for each of our layers
(module path such as ('block_2', 'expand')) the prefix of its tensors in the state dict (such as
'features.2.conv.0.0'). This module pairs every one of our layers with its tensors, converts the layouts
and checks every shape, in our forward order, so that a misfit names the first layer that differs.

Layouts: a torch convolution weight is (out, in / groups, kh, kw), ours (kh, kw, in / groups, out); a
depthwise weight (C, 1, k, k) becomes our (k, k, 1, C) by the same transpose. A torch Linear weight is
(out, in), our dense kernel (in, out); a Linear can also stand for our 1×1 convolution on a pooled 1×1 map
(torchvision's MobileNetV3 head). BatchNorm `weight`/`bias`/`running_mean`/`running_var` become our
`scale`/`bias` params and `mean`/`var` statistics. `num_batches_tracked` (BatchNorm's step counter, used
by PyTorch only when momentum=None) is not a weight: it is read and ignored by name, and listed in
`IGNORED_SUFFIXES`. Every other tensor the table does not claim is reported as unused.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Optional

import numpy as np

IGNORED_SUFFIXES = ('.num_batches_tracked',)
_BATCH_NORM_KEYS = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One of our layers that holds weights: module path, kind ('conv', 'depthwise', 'bn', 'dense', 'layer_scale') and
    our leaf shapes (kernel/bias, or scale/bias/mean/var)."""
    path: tuple
    kind: str
    shapes: dict

    @property
    def name(self) -> str:
        return '/'.join(self.path)

    def describe(self) -> str:
        shapes = ', '.join(f'{key} {tuple(shape)}' for key, shape in self.shapes.items())
        return f'{self.name} [{self.kind}] ({shapes})'


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one of our layers lives in the state dict: its key prefix, and whether its weight is stored
    as a torch Linear (out, in) although ours is a 1×1 convolution."""
    prefix: str
    linear: bool = False


def natural_key(name: str) -> tuple:
    """'blocks.10.0.conv' sorts after 'blocks.9.0.conv' (numbers compared as numbers)."""
    return tuple((0, int(part), '') if part.isdigit() else (1, 0, part) for part in name.split('.'))


def _shape(leaf) -> tuple:
    return tuple(int(d) for d in leaf.shape)


def our_layers(params: dict, batch_stats: dict, path: tuple = ()) -> list[Layer]:
    """Our layers with weights, read from an (abstract) variable tree, in the tree's (sorted) order."""
    keys = set(params)
    if keys == {'conv'} and not any(isinstance(v, dict) for v in params['conv'].values()):
        return [Layer(path, 'conv', {k: _shape(v) for k, v in params['conv'].items()})]
    if keys == {'gamma'}:   # a layer scale (MobileNetV4): one per-channel vector, stored as `.gamma` in torch too
        return [Layer(path, 'layer_scale', {'gamma': _shape(params['gamma'])})]
    if keys == {'scale', 'bias'}:
        return [Layer(path, 'bn', {'scale': _shape(params['scale']), 'bias': _shape(params['bias']),
                                   'mean': _shape(batch_stats['mean']), 'var': _shape(batch_stats['var'])})]
    if 'kernel' in keys and not any(isinstance(v, dict) for v in params.values()):
        kind = 'depthwise' if len(params['kernel'].shape) == 4 else 'dense'
        return [Layer(path, kind, {k: _shape(v) for k, v in params.items()})]
    layers = []
    for key in sorted(params):
        layers.extend(our_layers(params[key], batch_stats.get(key, {}), path + (key,)))
    return layers


def model_layers(model_name: str, alpha: float, num_classes: int, options: dict):
    """(module, our layers in forward order): the order in which the modules are first called."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilenets_jax.models import create_model, get_spec
    module = create_model(model_name, num_classes=num_classes, alpha=alpha, **options)
    size = get_spec(model_name).min_input_size
    calls: dict = {}

    def record(next_fun, args, kwargs, context):
        calls.setdefault(tuple(context.module.path), len(calls))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    layers = our_layers(abstract['params'], abstract.get('batch_stats', {}))
    return module, sorted(layers, key=lambda layer: calls.get(layer.path, len(calls)))


def torch_tensors(layer: Layer, entry: Entry) -> dict:
    """The state-dict keys of one of our layers and the shapes the file must have there (torch layout)."""
    if layer.kind == 'bn':
        return {f'{entry.prefix}.{theirs}': layer.shapes[ours] for ours, theirs in _BATCH_NORM_KEYS.items()}
    if layer.kind == 'layer_scale':
        return {f'{entry.prefix}.gamma': layer.shapes['gamma']}
    kernel = layer.shapes['kernel']
    if layer.kind == 'dense' or entry.linear:
        expected = {f'{entry.prefix}.weight': (kernel[-1], int(np.prod(kernel[:-1])))}
    else:   # (kh, kw, in / groups, out) -> (out, in / groups, kh, kw)
        expected = {f'{entry.prefix}.weight': (kernel[3], kernel[2], kernel[0], kernel[1])}
    if 'bias' in layer.shapes:
        expected[f'{entry.prefix}.bias'] = layer.shapes['bias']
    return expected


def _converted(layer: Layer, entry: Entry, state: dict) -> tuple[dict, dict]:
    """Our (params, batch_stats) leaves of one layer from the state dict (shapes already checked)."""
    if layer.kind == 'bn':
        return ({'scale': state[f'{entry.prefix}.weight'], 'bias': state[f'{entry.prefix}.bias']},
                {'mean': state[f'{entry.prefix}.running_mean'], 'var': state[f'{entry.prefix}.running_var']})
    if layer.kind == 'layer_scale':
        return {'gamma': state[f'{entry.prefix}.gamma']}, {}
    weight = state[f'{entry.prefix}.weight']
    if weight.ndim == 2:
        kernel = weight.T.reshape(layer.shapes['kernel'])
    else:
        kernel = np.transpose(weight, (2, 3, 1, 0))
    leaves = {'kernel': kernel}
    if 'bias' in layer.shapes:
        leaves['bias'] = state[f'{entry.prefix}.bias']
    return ({'conv': leaves} if layer.kind == 'conv' else leaves), {}


def set_at(tree: dict, path: tuple, values: dict) -> None:
    """Puts a layer's leaves at its module path in a nested variable tree (creating the parents)."""
    for key in path:
        tree = tree.setdefault(key, {})
    tree.update(values)


def expected_shapes(layers: list[Layer], table: dict) -> dict:
    """Every key the model needs and its torch-layout shape."""
    expected = {}
    for layer in layers:
        expected.update(torch_tensors(layer, table[layer.path]))
    return expected


def guess_layouts(state: dict, candidates, layout: Callable) -> list:
    """The candidates (model, α) whose every key and shape `state` has; `layout(model, α, num_classes)` gives
    a candidate's {key: shape}. Key names do not depend on α, so each model is first tried at its first α
    and only models with the file's key names are tried at every α (the error path only)."""
    shapes = file_shapes(state)
    by_model: dict = {}
    for model_name, alpha, num_classes in candidates:
        by_model.setdefault(model_name, []).append((alpha, num_classes))
    matches = []
    for model_name, alphas in by_model.items():
        if alphas[0][1] is None or set(layout(model_name, *alphas[0])) != set(shapes):
            continue
        matches.extend((model_name, alpha) for alpha, num_classes in alphas
                       if layout(model_name, alpha, num_classes) == shapes)
    return matches


def file_shapes(state: dict) -> dict:
    """The file's tensors that are weights (BatchNorm's step counter left out) and their shapes."""
    return {key: tuple(value.shape) for key, value in state.items() if not key.endswith(IGNORED_SUFFIXES)}


def convert(state: dict, layers: list[Layer], table: dict, *, what: str, why: Callable[[], str]) -> dict:
    """Our {'params', 'batch_stats'} from `state`; raises ValueError naming the first layer that differs,
    or every missing and unused tensor. `what` names the file and model for the messages; `why()` says
    what probably differs (called on the error path only)."""
    unmapped = [layer.name for layer in layers if layer.path not in table]
    if unmapped:
        raise ValueError(f'{what}: the key table has no entry for our {", ".join(unmapped)}')
    params, batch_stats, used, missing = {}, {}, set(), []
    for layer in layers:
        expected = torch_tensors(layer, table[layer.path])
        absent = [key for key in expected if key not in state]
        if absent:   # the layer's tensors that are there belong to it: not listed as unused
            missing.append(f'{", ".join(absent)} (our {layer.name})')
            used.update(key for key in expected if key in state)
            continue
        for key, shape in expected.items():
            got = tuple(state[key].shape)
            if got != tuple(shape):
                raise ValueError(f'{what}: the first layer that differs is our {layer.name} [{layer.kind}] against '
                                 f'the file\'s {key}: the file has {got}, we expect {tuple(shape)} (torch layout); '
                                 f'{why()}')
        used.update(expected)
        layer_params, layer_stats = _converted(layer, table[layer.path], state)
        set_at(params, layer.path, layer_params)
        if layer_stats:
            set_at(batch_stats, layer.path, layer_stats)
    unused = sorted((key for key in file_shapes(state) if key not in used), key=natural_key)
    if missing or unused:
        listed = [f'weights missing from the file: {"; ".join(missing)}'] if missing else []
        if unused:
            listed.append('unused weights in the file: ' + ', '.join(f'{key} {tuple(state[key].shape)}'
                                                                     for key in unused))
        raise ValueError(f'{what}: {"; ".join(listed)}; {why()}')
    return {'params': params, 'batch_stats': batch_stats}


def as_float32(state: dict) -> dict:
    """name -> float32 NumPy array (integer counters kept as they are)."""
    return {key: (np.asarray(value, np.float32) if np.issubdtype(np.asarray(value).dtype, np.floating)
                  else np.asarray(value)) for key, value in state.items()}


def classifier_width(state: dict, key: str) -> Optional[int]:
    """The class count: the classifier bias's length (None when the file has no such tensor)."""
    bias = state.get(key)
    return None if bias is None or bias.ndim != 1 else int(bias.shape[0])


def describe_source(state: dict) -> str:
    """Which source's layout the keys look like (used in messages only)."""
    keys = set(state)
    if 'conv_stem.weight' in keys:
        return 'timm (conv_stem, blocks.N.M...)'
    if 'features.0.0.weight' in keys or 'conv1.0.weight' in keys:
        return 'torchvision (features.N... / conv1, stageN...)'
    first = sorted(keys, key=natural_key)[:3]
    return f'neither torchvision\'s nor timm\'s (first keys: {", ".join(first)})'


_BLOCK = re.compile(r'^block_(\d+)$')


def block_number(name: str) -> Optional[int]:
    """'block_7' -> 7 (our blocks are numbered from 1 in forward order)."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def source_layout(build_options: dict) -> Callable:
    """`layout(model, alpha, num_classes, options=None)` -> (module, our layers in forward order), the
    model built with a source's `BUILD_OPTIONS` (`options` override them)."""
    def layout(model_name: str, alpha: float, num_classes: int, options: Optional[dict] = None):
        return model_layers(model_name, alpha, num_classes, dict(build_options[model_name], **(options or {})))
    return layout


def source_layouts(build_options: dict, key_table: Callable) -> tuple[Callable, Callable]:
    """A state-dict source's two layout functions, from its `BUILD_OPTIONS` and `key_table(layers, model_name)`:
    `source_layout(build_options)`, and `released_shapes(model, alpha, num_classes)` -> the file's expected
    {key: shape} (cached: the error path compares a file against every released layout)."""
    layout = source_layout(build_options)

    @functools.cache
    def released_shapes(model_name: str, alpha: float, num_classes: int) -> dict:
        _, layers = layout(model_name, alpha, num_classes)
        return expected_shapes(layers, key_table(layers, model_name))
    return layout, released_shapes
