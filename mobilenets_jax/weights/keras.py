"""Keras applications `.h5` weights (MobileNet, MobileNetV2, MobileNetV3Large/Small) → the zoo's variables.

The released files use the Keras 2 HDF5 weight layout: the root attribute `layer_names` lists the model's
layers in order; each layer's group has the attribute `weight_names` (e.g.
`block_1_depthwise/depthwise_kernel:0`) naming its datasets. Only h5py is needed, not TensorFlow or Keras.

Keras itself loads these files by layer order (the names changed between Keras versions: the V3 files say
`expanded_conv_2/squeeze_excite/Conv`, Keras 3 builds `expanded_conv_2_squeeze_excite_conv`), and so does
this module: the file's layers that hold weights, in the file's order, are paired with ours in forward order
(the order our modules are first called: `state_dict.model_layers`, shared with the torch sources),
every weight is recognised by its own name (kernel, depthwise_kernel, bias, gamma, beta, moving_mean,
moving_variance) and every shape is checked. Layout differences: Keras depthwise kernels are (k, k, C, 1),
ours (k, k, 1, C); Keras' V1 and V3 classifiers are 1×1 convolutions, ours a dense layer (same numbers).

Options the Keras models were built with: BatchNorm ε 1e-3 (all), ReLU6 in MobileNet V1 (the paper's model
uses ReLU), TF SAME padding. Keras' V1 pads every stride-2 depthwise conv by ((0, 1), (0, 1)) whatever the
map's parity, which equals TF SAME only on even feature maps: at the released resolutions (224, 192, 160,
128) every stride-2 input is even, so the logits agree; at a size whose maps become odd (e.g. 200) they do not.
Keras' V2 pads by `correct_pad`, which is TF SAME at every size.

Preprocessing: Keras V1/V2 expect `preprocess_input` ([-1, 1], our 'inception' normalization). Keras V3
contains a Rescaling layer (x / 127.5 − 1, no weights) unless built with include_preprocessing=False: the
weights are the same either way, and our model, which has no such layer, takes [-1, 1] inputs in both cases.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Optional

import numpy as np

from mobilenets_jax.weights import state_dict
from mobilenets_jax.weights.state_dict import Layer

KERAS_NAMES = {'mobilenet_v1': 'MobileNet', 'mobilenet_v2': 'MobileNetV2',
               'mobilenet_v3_large': 'MobileNetV3Large', 'mobilenet_v3_small': 'MobileNetV3Small'}
# The α of the released files (keras/src/applications/mobilenet*.py).
RELEASED_ALPHAS = {'mobilenet_v1': (0.25, 0.5, 0.75, 1.0), 'mobilenet_v2': (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
                   'mobilenet_v3_large': (0.75, 1.0), 'mobilenet_v3_small': (0.75, 1.0)}
# create_model options that reproduce each Keras model (users' options override them).
BUILD_OPTIONS = {'mobilenet_v1': dict(activation='relu6', bn_epsilon=1e-3, padding_style='same'),
                 'mobilenet_v2': dict(bn_epsilon=1e-3, padding_style='same'),
                 'mobilenet_v3_large': dict(bn_epsilon=1e-3, padding_style='same'),
                 'mobilenet_v3_small': dict(bn_epsilon=1e-3, padding_style='same')}
NORMALIZATION = 'inception'   # [-1, 1]: data/preprocessing.normalize's name for Keras' 'tf' mode
PREPROCESSING_NOTES = {
    'mobilenet_v1': 'Keras preprocess_input (x / 127.5 - 1): feed [-1, 1] images (normalization=inception)',
    'mobilenet_v2': 'Keras preprocess_input (x / 127.5 - 1): feed [-1, 1] images (normalization=inception)',
    'mobilenet_v3_large': 'Keras builds a Rescaling layer (x / 127.5 - 1) into V3 and feeds it [0, 255]; it has '
                          'no weights and our model has no such layer: feed [-1, 1] images (normalization=inception)',
}
PREPROCESSING_NOTES['mobilenet_v3_small'] = PREPROCESSING_NOTES['mobilenet_v3_large']
# The file's own weight names, as they end: Keras 2 writes 'conv_dw_1/depthwise_kernel:0', Keras 3 'kernel'.
_BATCH_NORM_WEIGHTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a converter returns: the module, its variables and how its inputs must be prepared."""
    model: Any
    variables: dict
    model_name: str
    alpha: float
    num_classes: int
    normalization: str
    notes: str


@dataclasses.dataclass(frozen=True)
class FileLayer:
    """One layer of the file that holds weights: its name and its weights by short name, in file order."""
    index: int
    name: str
    weights: dict

    def describe(self) -> str:
        shapes = ', '.join(f'{key} {tuple(value.shape)}' for key, value in self.weights.items())
        return f'layer {self.index} {self.name!r} ({shapes})'


def _short_name(weight_name: str) -> str:
    """'block_1_depthwise/depthwise_kernel:0' -> 'depthwise_kernel'; Keras 3 writes no ':0'."""
    return re.sub(r':\d+$', '', weight_name).rsplit('/', 1)[-1]


def _decode(value) -> str:
    return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _attribute_list(group, name: str) -> list:
    """A string-list attribute; Keras splits long ones into `name0`, `name1`, ... chunks."""
    if name in group.attrs:
        return [_decode(v) for v in group.attrs[name]]
    values, chunk = [], 0
    while f'{name}{chunk}' in group.attrs:
        values.extend(_decode(v) for v in group.attrs[f'{name}{chunk}'])
        chunk += 1
    return values


def read_layers(path: str) -> list[FileLayer]:
    """The file's layers that hold weights, in the file's order (a whole-model `.h5` is read too)."""
    import h5py
    layers = []
    with h5py.File(path, 'r') as handle:
        root = handle['model_weights'] if 'model_weights' in handle else handle
        layer_names = _attribute_list(root, 'layer_names')
        if not layer_names:
            raise ValueError(f'{path}: no `layer_names` attribute: not a Keras HDF5 weights file '
                             f'(Keras 3 `.weights.h5` files use another layout; save with the legacy `.h5` format)')
        for name in layer_names:
            group = root[name]
            weight_names = _attribute_list(group, 'weight_names')
            if not weight_names:
                continue
            weights = {}
            for weight_name in weight_names:
                short = _short_name(weight_name)
                if short in weights:
                    raise ValueError(f'{path}: layer {name!r} holds two weights named {short!r}')
                weights[short] = np.asarray(group[weight_name], dtype=np.float32)
            layers.append(FileLayer(len(layers), name, weights))
    return layers


def _expected_file_weights(layer: Layer) -> dict:
    """Our layer's weights as the Keras file holds them: short name -> shape (both spellings of depthwise)."""
    if layer.kind == 'bn':
        return {name: layer.shapes['scale'] for name in _BATCH_NORM_WEIGHTS}
    if layer.kind == 'depthwise':
        k1, k2, _, channels = layer.shapes['kernel']
        return {'depthwise_kernel': (k1, k2, channels, 1)}
    return dict(layer.shapes)


def _file_weight(file_layer: FileLayer, name: str) -> Optional[np.ndarray]:
    if name == 'depthwise_kernel' and name not in file_layer.weights:
        return file_layer.weights.get('kernel')   # Keras 3 names the depthwise kernel 'kernel'
    return file_layer.weights.get(name)


def _layer_fits(ours: Layer, theirs: FileLayer) -> Optional[str]:
    """None if the file layer fits ours; else what differs (one weight, both shapes)."""
    expected = _expected_file_weights(ours)
    if ours.kind == 'dense':
        kernel = theirs.weights.get('kernel')
        if kernel is not None and kernel.ndim == 4 and kernel.shape[:2] == (1, 1):
            kernel = kernel.reshape(kernel.shape[2:])   # Keras V1/V3 classifiers are 1x1 convs
        if kernel is None or tuple(kernel.shape) != tuple(expected['kernel']):
            got = None if kernel is None else tuple(kernel.shape)
            return f'kernel: the file has {got}, we expect {tuple(expected["kernel"])}'
        expected = {k: v for k, v in expected.items() if k != 'kernel'}
    for name, shape in expected.items():
        value = _file_weight(theirs, name)
        if value is None:
            return f'{name}: missing in the file layer (it has {", ".join(theirs.weights)})'
        if tuple(value.shape) != tuple(shape):
            return f'{name}: the file has {tuple(value.shape)}, we expect {tuple(shape)}'
    known = set(expected) | {'kernel'} if ours.kind in ('depthwise', 'dense') else set(expected)
    extra = sorted(set(theirs.weights) - known)
    if extra:
        return f'the file layer also holds {", ".join(extra)}, which our {ours.kind} layer has no place for'
    return None


def _converted_values(ours: Layer, theirs: FileLayer) -> tuple[dict, dict]:
    """Our (params, batch_stats) leaves of one layer from the file layer's arrays (already checked)."""
    if ours.kind == 'bn':
        weights = theirs.weights
        return ({'scale': weights['gamma'], 'bias': weights['beta']},
                {'mean': weights['moving_mean'], 'var': weights['moving_variance']})
    if ours.kind == 'depthwise':
        return {'kernel': np.transpose(_file_weight(theirs, 'depthwise_kernel'), (0, 1, 3, 2))}, {}
    if ours.kind == 'dense':
        params = {'kernel': theirs.weights['kernel'].reshape(ours.shapes['kernel'])}
        if 'bias' in ours.shapes:
            params['bias'] = theirs.weights['bias']
        return params, {}
    return {'conv': {name: theirs.weights[name] for name in ours.shapes}}, {}


_model_layers = state_dict.source_layout(BUILD_OPTIONS)   # (module, our layers in forward order: Keras' order)


@functools.cache
def _released_layers(model_name: str, alpha: float, num_classes: int) -> tuple:
    return tuple(_model_layers(model_name, alpha, num_classes, {})[1])


def _all_fit(layers, file_layers: list[FileLayer]) -> bool:
    return len(layers) == len(file_layers) and all(_layer_fits(o, t) is None for o, t in zip(layers, file_layers))


@functools.cache
def _layer_count(model_name: str) -> int:
    """How many layers with weights the model has (the same at every α)."""
    return len(_released_layers(model_name, 1.0, 1000))


def guess_model(file_layers: list[FileLayer]) -> list[tuple[str, float]]:
    """The Keras (model, α) pairs whose released layout the file has (used in the error path only).

    The layer count picks the model, then each released α of it is tried.
    """
    num_classes = _num_classes(file_layers)
    if num_classes is None:
        return []
    return [(name, alpha) for name, alphas in RELEASED_ALPHAS.items() if _layer_count(name) == len(file_layers)
            for alpha in alphas if _all_fit(_released_layers(name, alpha, num_classes), file_layers)]


def _why(model_name: str, alpha: float, file_layers: list[FileLayer]) -> str:
    """What probably differs between the file and the requested model."""
    matches = guess_model(file_layers)
    if matches:
        listed = ' or '.join(f'model={name} alpha={a}' for name, a in matches)
        same_model = [a for name, a in matches if name == model_name]
        what = 'alpha' if same_model else 'model'
        return f'probably the {what} differs: the file has the layout of Keras {listed}'
    return (f'the file matches no released Keras {", ".join(KERAS_NAMES.values())} layout: probably another '
            f'source (not a Keras applications file), an include_top=False file, or a modified model')


def _num_classes(file_layers: list[FileLayer]) -> Optional[int]:
    """The classifier's width: the last layer's bias (Keras' classifiers always have one)."""
    if not file_layers or 'bias' not in file_layers[-1].weights:
        return None
    return int(file_layers[-1].weights['bias'].shape[0])


def convert(file_layers: list[FileLayer], model_name: str, alpha: float, num_classes: int,
            options: dict, path: str = 'the file'):
    """Pairs the file's layers with ours in order; returns (module, variables) or raises naming the first misfit."""
    module, layers = _model_layers(model_name, alpha, num_classes, options)
    params, batch_stats = {}, {}
    for ours, theirs in zip(layers, file_layers):
        problem = _layer_fits(ours, theirs)
        if problem is not None:
            raise ValueError(f'{path} does not fit {model_name} alpha={alpha}: the first layer that differs is the '
                             f'file\'s {theirs.describe()} against our {ours.describe()}; {problem}; '
                             f'{_why(model_name, alpha, file_layers)}')
        layer_params, layer_stats = _converted_values(ours, theirs)
        state_dict.set_at(params, ours.path, layer_params)
        if layer_stats:
            state_dict.set_at(batch_stats, ours.path, layer_stats)
    if len(file_layers) != len(layers):
        if len(file_layers) > len(layers):
            left = 'unused weights in the file: ' + '; '.join(t.describe() for t in file_layers[len(layers):])
        else:
            left = 'weights missing from the file: ' + '; '.join(o.describe() for o in layers[len(file_layers):])
        raise ValueError(f'{path} does not fit {model_name} alpha={alpha}: the file has {len(file_layers)} layers '
                         f'with weights, the model {len(layers)}; {left}; {_why(model_name, alpha, file_layers)}')
    return module, {'params': params, 'batch_stats': batch_stats}


def load(path: str, *, model: str, alpha: float = 1.0, num_classes: Optional[int] = None,
         **options: Any) -> Converted:
    """Reads a Keras applications `.h5` file into our `model` at width `alpha`.

    `num_classes` defaults to the file's classifier width; `options` go to `create_model` and override the
    Keras build options (`BUILD_OPTIONS`: ReLU6 for V1, BatchNorm ε 1e-3, TF SAME padding).
    """
    if model not in KERAS_NAMES:
        raise ValueError(f'model={model!r}: Keras applications release weights for '
                         f'{", ".join(f"{ours} ({theirs})" for ours, theirs in KERAS_NAMES.items())}')
    file_layers = read_layers(path)
    file_classes = _num_classes(file_layers)
    if num_classes is None:
        if file_classes is None:
            last = file_layers[-1].describe() if file_layers else 'none'
            raise ValueError(f'{path}: the last layer with weights ({last}) is not a classifier: an '
                             f'include_top=False file? {_why(model, alpha, file_layers)}')
        num_classes = file_classes
    module, variables = convert(file_layers, model, float(alpha), num_classes, options, path)
    import jax
    import jax.numpy as jnp
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return Converted(module, variables, model, float(alpha), num_classes, NORMALIZATION, PREPROCESSING_NOTES[model])
