"""The fast dropout mask: Threefry known answers, bit equality with `jax.random.bits`, dropout semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets_jax import ops
from mobilenets_jax.models import layers

# Random123's known-answer vectors for Threefry-2x32 with 20 rounds: (key, counter) -> output.
THREEFRY_KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize('key,counter,expected', THREEFRY_KAT)
def test_threefry_known_answers(key, counter, expected):
    out = ops.threefry2x32(key, tuple(np.uint32(c) for c in counter))
    assert tuple(int(v) for v in out) == expected


@pytest.mark.parametrize('shape', [(1,), (5,), (3, 7, 2), (4, 9, 9, 16)])
def test_random_bits_equal_jax_random_bits(shape):
    key = jax.random.key(1234)
    with jax.threefry_partitionable(True):
        expected = np.asarray(jax.random.bits(key, shape, jnp.uint32))
    actual = np.asarray(jax.jit(lambda k: ops.random_bits(k, shape))(key))
    np.testing.assert_array_equal(actual, expected)


def test_random_bits_accept_raw_and_rbg_keys():
    raw = jax.random.key_data(jax.random.key(7))
    np.testing.assert_array_equal(ops.random_bits(raw, (6,)), ops.random_bits(jax.random.key(7), (6,)))
    rbg = ops.random_bits(jax.random.key(7, impl='rbg'), (1000,))
    assert len(np.unique(np.asarray(rbg))) > 990
    with pytest.raises(ValueError, match='at least 2 uint32 words'):
        ops.random_bits(jnp.zeros((1,), jnp.uint32), (3,))


def test_dropout_rate_scaling_and_determinism():
    x = jnp.ones((64, 32, 32, 8), jnp.float32)
    module = layers.Dropout(0.2, deterministic=False)
    y = module.apply({}, x, rngs={'dropout': jax.random.key(0)})
    dropped = float(jnp.mean(y == 0))
    # 524,288 draws: the standard error of the fraction is 5.5e-4.
    assert abs(dropped - 0.2) < 0.003, dropped
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1.25], rtol=1e-6)
    again = module.apply({}, x, rngs={'dropout': jax.random.key(0)})
    other = module.apply({}, x, rngs={'dropout': jax.random.key(1)})
    np.testing.assert_array_equal(y, again)
    assert float(jnp.mean(y != other)) > 0.2
    # Masks of different positions are not correlated: neighbours drop together at rate^2.
    both = float(jnp.mean((y[..., :-1] == 0) & (y[..., 1:] == 0)))
    assert abs(both - 0.04) < 0.003, both


def test_dropout_deterministic_and_edge_rates():
    x = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    np.testing.assert_array_equal(layers.Dropout(0.5, deterministic=True).apply({}, x), x)
    np.testing.assert_array_equal(layers.Dropout(0.0, deterministic=False).apply({}, x), x)
    zeros = layers.Dropout(1.0, deterministic=False).apply({}, x, rngs={'dropout': jax.random.key(0)})
    np.testing.assert_array_equal(zeros, jnp.zeros_like(x))
    bf16 = layers.Dropout(0.5, deterministic=False).apply({}, x.astype(jnp.bfloat16),
                                                          rngs={'dropout': jax.random.key(0)})
    assert bf16.dtype == jnp.bfloat16
