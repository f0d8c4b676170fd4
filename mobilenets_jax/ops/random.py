"""Dropout masks from a Threefry-2x32 written out in full, bit-identical to `jax.random.bits`."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def threefry2x32(key: tuple, counters: tuple):
    """The Threefry-2x32-20 block cipher on uint32 arrays, written out in full (no rolled loop).

    It is the same function as `jax.random`'s default generator, but JAX lowers that on CPU as a
    5-iteration while loop that writes every intermediate array out; unrolled, XLA:CPU fuses the 20
    rounds into one vectorized loop. Known-answer vectors of Random123 are checked in the tests.
    """
    k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key)
    schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(_THREEFRY_PARITY))
    x0 = jnp.asarray(counters[0], jnp.uint32) + schedule[0]
    x1 = jnp.asarray(counters[1], jnp.uint32) + schedule[1]
    for block in range(5):
        for rotation in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(rotation)) | (x1 >> jnp.uint32(32 - rotation))
            x1 = x0 ^ x1
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def random_bits(key, shape: Sequence[int]):
    """uint32 random bits: the values of `jax.random.bits(key, shape)` for a Threefry key, computed fast.

    Element e is the cipher of counter (0, e) under the key with its two output words xor-ed, the
    scheme of JAX's partitionable Threefry (the default); the tests check the two agree bit for bit.
    Here the whole array is one elementwise XLA loop that fuses into its consumer, where JAX's CPU
    lowering runs the cipher as a rolled loop writing 5 intermediate arrays.
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = jnp.asarray(data, jnp.uint32).reshape(-1)
    if data.shape[0] < 2:
        raise ValueError(f'a random key needs at least 2 uint32 words; got key data of shape {data.shape}')
    # Other generators' keys (e.g. 'rbg', 4 words) are folded into the cipher's 2-word key.
    k0, k1 = data[0], data[1]
    for index in range(2, data.shape[0]):
        k0, k1 = (k1, k0 ^ data[index]) if index % 2 else (k0 ^ data[index], k1)
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 1 << 32:
        raise ValueError(f'random_bits: {size} elements is too many (at most 2^32 - 1)')
    counters = jax.lax.iota(jnp.uint32, size).reshape(shape)
    x0, x1 = threefry2x32((k0, k1), (jnp.zeros_like(counters), counters))
    return x0 ^ x1


def dropout_keep_mask(key, shape: Sequence[int], rate: float):
    """A boolean mask, True with probability 1 - rate (to within 2^-32), from `random_bits`.

    An element is dropped when its bits are below round(rate · 2^32). It replaces
    `jax.random.bernoulli`, whose CPU lowering is several times slower (see `random_bits`).
    """
    threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
    return random_bits(key, shape) >= jnp.uint32(threshold)
