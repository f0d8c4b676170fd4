"""Pretrained weights: Keras applications files load into our models with the same logits (no network).

Each case builds the Keras application with weights=None, gives it random weights and random BatchNorm
moving statistics, writes it in the released files' Keras 2 HDF5 layout and compares Keras' logits with
ours on random images. Keras 3 writes `.weights.h5` in another layout, so the legacy file is written here
with h5py from the model's own layer and weight names, as Keras 2 wrote the released files
(`layer_names`, `weight_names` such as `block_1_depthwise/depthwise_kernel:0`).
"""
from __future__ import annotations

import h5py
import jax
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax.weights import keras as keras_weights

# The images are even-sized at every stride-2 layer: Keras' V1 pads ((0, 1), (0, 1)), TF SAME only there.
IMAGE_SIZE = 64
BATCH = 3
KERAS_CASES = ([('mobilenet_v1', a) for a in (0.25, 0.5, 0.75, 1.0)]
               + [('mobilenet_v2', a) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)]
               + [(m, a) for m in ('mobilenet_v3_large', 'mobilenet_v3_small') for a in (0.75, 1.0)])


def _keras_application(model_name: str, alpha: float, image_size: int = IMAGE_SIZE):
    """The Keras application as released (V3 with its Rescaling layer), logits out, weights=None."""
    import keras
    build = getattr(keras.applications, keras_weights.KERAS_NAMES[model_name])
    options = dict(include_preprocessing=True) if model_name.startswith('mobilenet_v3') else {}
    return build(weights=None, input_shape=(image_size, image_size, 3), alpha=alpha, classes=1000,
                 classifier_activation=None, **options)


def _randomize(model, seed: int) -> None:
    """Random weights, and random BatchNorm statistics (positive variances) so no identity BN hides a bug."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        names = [w.name for w in layer.weights]
        values = []
        for name, value in zip(names, weights):
            if name in ('gamma', 'moving_variance'):
                values.append(rng.uniform(0.5, 1.5, value.shape))
            elif name in ('beta', 'moving_mean', 'bias'):
                values.append(rng.normal(0.0, 0.2, value.shape))
            else:   # kernels: variance-preserving scale over the fan-in
                fan_in = int(np.prod(value.shape[:-1])) if value.shape[-1] != 1 else int(np.prod(value.shape[:2]))
                values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), value.shape))
        layer.set_weights([v.astype(np.float32) for v in values])


def write_keras2_h5(model, path: str) -> None:
    """The Keras 2 `save_weights` HDF5 layout of the released files, written with h5py."""
    with h5py.File(path, 'w') as handle:
        handle.attrs['layer_names'] = [layer.name.encode('utf8') for layer in model.layers]
        handle.attrs['backend'] = b'tensorflow'
        handle.attrs['keras_version'] = b'2.2.4'
        for layer in model.layers:
            group = handle.create_group(layer.name)
            names = [f'{layer.name}/{w.name}:0'.replace('/kernel:0', '/depthwise_kernel:0')
                     if type(layer).__name__ == 'DepthwiseConv2D' else f'{layer.name}/{w.name}:0'
                     for w in layer.weights]
            group.attrs['weight_names'] = [n.encode('utf8') for n in names]
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name, data=value)


def _images(seed: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Pixels in [0, 255] (what Keras V3 takes; V1/V2 and our models take pixels / 127.5 - 1)."""
    return np.random.default_rng(seed).uniform(0, 255, (BATCH, image_size, image_size, 3)).astype(np.float32)


def _keras_logits(model, model_name: str, pixels: np.ndarray) -> np.ndarray:
    inputs = pixels if model_name.startswith('mobilenet_v3') else pixels / 127.5 - 1.0
    return np.asarray(model(inputs, training=False))


def _our_logits(module, variables, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, pixels / 127.5 - 1.0))


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
    """Writes each case's file once: (path, Keras logits, pixels) by case."""
    cache = {}

    def get(model_name, alpha):
        if (model_name, alpha) not in cache:
            model = _keras_application(model_name, alpha)
            _randomize(model, seed=len(cache))
            path = str(tmp_path_factory.mktemp('keras') / f'{model_name}_{alpha}.h5')
            write_keras2_h5(model, path)
            pixels = _images(seed=len(cache))
            cache[model_name, alpha] = (path, _keras_logits(model, model_name, pixels), pixels)
        return cache[model_name, alpha]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('model_name,alpha', KERAS_CASES)
def test_keras_logits_match(keras_files, model_name, alpha):
    path, expected, pixels = keras_files(model_name, alpha)
    module, variables = mj.load_pretrained(path, source='keras', model=model_name, alpha=alpha)
    assert module.num_classes == 1000
    ours = _our_logits(module, variables, pixels)
    error = float(np.max(np.abs(ours - expected)))
    assert error <= 1e-4 * float(np.max(np.abs(expected))), (model_name, alpha, error)
    np.testing.assert_array_equal(ours.argmax(-1), expected.argmax(-1))
