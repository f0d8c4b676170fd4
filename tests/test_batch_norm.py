"""layers.BatchNorm computes what flax's nn.BatchNorm computes: same variables, values, gradients, statistics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets_jax.models import layers


def _run(module, variables, x, cotangent):
    def apply(params, a):
        return module.apply({'params': params, 'batch_stats': variables['batch_stats']}, a, mutable=['batch_stats'])
    (y, stats), vjp = jax.vjp(apply, variables['params'], x)
    grads = vjp((cotangent, jax.tree.map(jnp.zeros_like, stats)))
    return y, stats, grads


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)], ids=['f32', 'bf16'])
def test_batch_norm_equals_flax(train, dtype, tol):
    rng = np.random.default_rng(0)
    # A mean well away from zero: the folded form x·a + (bias − mean·a) must not lose it.
    x = jnp.asarray(rng.standard_normal((4, 5, 6, 7)) * 3 + 1.5, dtype)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), dtype)
    kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=dtype)
    ours, reference = layers.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    ours_vars = ours.init(jax.random.key(0), x)
    ref_vars = reference.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ours_vars) == jax.tree.map(lambda a: (a.shape, a.dtype), ref_vars)
    # Move every variable off its initial value so that each one matters.
    variables = jax.tree.map(lambda a: a + jnp.linspace(0.1, 0.7, a.shape[-1], dtype=a.dtype), ref_vars)
    got = _run(ours, variables, x, cotangent)
    expected = _run(reference, variables, x, cotangent)
    for name, a, e in zip(('value', 'statistics', 'gradients'), got, expected):
        for leaf_a, leaf_e in zip(jax.tree.leaves(a), jax.tree.leaves(e)):
            scale = float(jnp.max(jnp.abs(leaf_e.astype(jnp.float32)))) or 1.0
            err = float(jnp.max(jnp.abs(leaf_a.astype(jnp.float32) - leaf_e.astype(jnp.float32)))) / scale
            assert err <= tol, f'{name}: {err:.2e} of the scale'
    assert got[0].dtype == dtype


def test_batch_norm_axis_name_averages_statistics_like_flax():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 5, 5, 6)), jnp.float32)
    outputs = {}
    for key, cls in (('ours', layers.BatchNorm), ('flax', nn.BatchNorm)):
        module = cls(use_running_average=False, momentum=0.5, axis_name='devices')
        variables = cls(use_running_average=False).init(jax.random.key(0), x[0])
        outputs[key] = jax.vmap(lambda a: module.apply(variables, a, mutable=['batch_stats']),
                                axis_name='devices')(x)
    for a, e in zip(jax.tree.leaves(outputs['ours']), jax.tree.leaves(outputs['flax'])):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    # Synchronised: every device normalizes with the same statistics, which differ from its own.
    stats = outputs['ours'][1]['batch_stats']['mean']
    np.testing.assert_allclose(stats[0], stats[3], rtol=1e-6)


def test_batch_norm_factory_forms():
    common = dict(momentum=0.9, epsilon=1e-3, dtype=jnp.float32, param_dtype=jnp.float32, axis_name=None)
    assert layers.batch_norm(True, form='folded', **common).func is layers.BatchNorm
    assert layers.batch_norm(True, form='centered', **common).func is nn.BatchNorm
    with pytest.raises(ValueError, match="form 'fused'"):
        layers.batch_norm(True, form='fused', **common)
