"""Fast, compile-free variable initialization.

`model.init` traces the network and derives one PRNG key per parameter by folding module names into
the seed; on XLA:CPU compiling that graph takes 10-30 s for a MobileNetV3 (most of it threefry
hashing), longer than a training step. `init_variables` instead reads the variable *shapes* with
`jax.eval_shape` (no compilation) and draws every value on the host with NumPy, using the same
schemes as the modules' own initializers: He (fan-out) truncated normal for conv kernels, LeCun
truncated normal for dense kernels, zeros for biases and BatchNorm means, ones for BatchNorm scales
and variances, MobileNetV4's layer scale at its 1e-5. The result is deterministic in `seed` and identical on every host.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_jax.models.mobilenet_v4 import LAYER_SCALE_INIT


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Normal(0, std) truncated to ±2σ, rescaled so the result has standard deviation `std`."""
    # 0.87962566 is the std of a unit normal truncated to [-2, 2] (as in jax.nn.initializers).
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * (std / 0.87962566)


def _leaf_value(rng: np.random.Generator, path: str, leaf) -> np.ndarray:
    name = path.rsplit('/', 1)[-1]
    shape = leaf.shape
    if name == 'kernel' and len(shape) == 4:      # conv: He normal over fan-out (k*k*out), as Keras/TF-slim
        fan_out = shape[0] * shape[1] * shape[3]
        value = _truncated_normal(rng, shape, np.sqrt(2.0 / fan_out))
    elif name == 'kernel':                         # dense: LeCun normal over fan-in
        value = _truncated_normal(rng, shape, np.sqrt(1.0 / shape[0]))
    elif name in ('scale', 'var'):
        value = np.ones(shape)
    elif name == 'gamma':                          # MobileNetV4's layer scale: small, never 0 (a dead branch)
        value = np.full(shape, LAYER_SCALE_INIT)
    else:                                          # bias, BatchNorm bias and mean
        value = np.zeros(shape)
    return value.astype(leaf.dtype)


def abstract_variables(model, input_shape: Sequence[int] = (1, 224, 224, 3)):
    """The variables of `model` as `jax.ShapeDtypeStruct`s: `jax.eval_shape` of ``model.init``, nothing compiled."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False))


def init_variables(model, seed: int, input_shape: Sequence[int] = (1, 224, 224, 3)):
    """Returns `{'params': ..., 'batch_stats': ...}` for `model` without compiling anything."""
    abstract = abstract_variables(model, input_shape)
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in flat:
        key = '/'.join(str(getattr(p, 'key', p)) for p in path)
        values.append(jnp.asarray(_leaf_value(rng, key, leaf)))
    return jax.tree_util.tree_unflatten(treedef, values)
