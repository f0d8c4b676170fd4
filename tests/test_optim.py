"""Tests for mobilenets_jax.optim: TF-form RMSprop, schedules, decay mask, EMA."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilenets_jax import optim

# A toy quadratic f(x) = 0.5 * sum(a * (x - c)**2), gradient a * (x - c). The
# curvatures span two orders of magnitude so the per-element RMS scaling matters.
_A = np.array([0.5, 2.0, 10.0, 50.0], np.float32)
_C = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
_X0 = np.array([3.0, 1.0, -1.0, 0.0], np.float32)
_NUM_STEPS = 5


def _grad(x):
    return _A * (x - _C)


def _numpy_tf_rmsprop(lr_fn, steps, decay=0.9, momentum=0.9, epsilon=1.0):
    """Reference: the TF1 ApplyRMSProp kernel, in float64."""
    x = _X0.astype(np.float64)
    ms = np.ones_like(x)  # TF1 initialises the mean square to ONE.
    mom = np.zeros_like(x)
    trajectory = []
    for t in range(steps):
        g = _A * (x - _C)
        ms = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + lr_fn(t) * g / np.sqrt(ms + epsilon)
        x = x - mom
        trajectory.append(x.copy())
    return np.stack(trajectory)


def _run_optax(tx, steps):
    x = jnp.asarray(_X0)
    state = tx.init(x)
    trajectory = []
    for _ in range(steps):
        updates, state = tx.update(_grad(x), state, x)
        x = optax.apply_updates(x, updates)
        trajectory.append(np.asarray(x))
    return np.stack(trajectory)


def test_tf_rmsprop_matches_numpy_reference():
    got = _run_optax(optim.tf_rmsprop(0.1), _NUM_STEPS)
    want = _numpy_tf_rmsprop(lambda t: 0.1, _NUM_STEPS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Sanity: a zero-initialised accumulator (PyTorch/optax default) is far off,
    # so the comparison above can tell the two forms apart.
    torch_style = _run_optax(optax.rmsprop(0.1, decay=0.9, eps=1.0, momentum=0.9), _NUM_STEPS)
    assert np.max(np.abs(torch_style - want)) > 1e-2


def test_tf_rmsprop_with_schedule_uses_step_indexed_learning_rate():
    schedule = lambda t: 0.05 * (t + 1)
    got = _run_optax(optim.tf_rmsprop(schedule, decay=0.8, momentum=0.5, epsilon=0.1), _NUM_STEPS)
    want = _numpy_tf_rmsprop(schedule, _NUM_STEPS, decay=0.8, momentum=0.5, epsilon=0.1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tf_rmsprop_without_momentum():
    got = _run_optax(optim.tf_rmsprop(0.1, momentum=0.0), _NUM_STEPS)
    want = _numpy_tf_rmsprop(lambda t: 0.1, _NUM_STEPS, momentum=0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tf_rmsprop_matches_tensorflow_v1_optimizer():
    import tensorflow as tf  # a requirement of the test env: a missing one fails, never skips
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.Variable(_X0, dtype=tf.float32)
        loss = 0.5 * tf.reduce_sum(tf.constant(_A) * tf.square(x - tf.constant(_C)))
        train_op = tf.compat.v1.train.RMSPropOptimizer(0.1, decay=0.9, momentum=0.9, epsilon=1.0).minimize(
            loss, var_list=[x]
        )
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want = []
            for _ in range(_NUM_STEPS):
                sess.run(train_op)
                want.append(sess.run(x))
    got = _run_optax(optim.tf_rmsprop(0.1, decay=0.9, momentum=0.9, epsilon=1.0), _NUM_STEPS)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- schedules ---

_BASE = 0.4
_SPE = 10  # steps per epoch


def _lr(fn, step):
    return float(fn(jnp.asarray(step, jnp.int32)))


def test_exponential_schedule_points():
    fn = optim.learning_rate_schedule(
        base_learning_rate=_BASE,
        steps_per_epoch=_SPE,
        num_epochs=100,
        warmup_epochs=5,
        schedule='exponential',
        decay_rate=0.94,
        decay_epochs=2.4,
    )
    warmup, period = 50, 24
    assert _lr(fn, 0) == 0.0
    assert _lr(fn, 25) == pytest.approx(_BASE / 2, rel=1e-6)
    assert _lr(fn, warmup) == pytest.approx(_BASE, rel=1e-6)
    # Staircase: flat inside a period, one factor of 0.94 per period.
    assert _lr(fn, warmup + period - 1) == pytest.approx(_BASE, rel=1e-6)
    assert _lr(fn, warmup + period) == pytest.approx(_BASE * 0.94, rel=1e-6)
    assert _lr(fn, warmup + period + 11) == pytest.approx(_BASE * 0.94, rel=1e-6)
    assert _lr(fn, warmup + 2 * period - 1) == pytest.approx(_BASE * 0.94, rel=1e-6)
    assert _lr(fn, warmup + 2 * period) == pytest.approx(_BASE * 0.94**2, rel=1e-6)
    # Works under jit with a traced step, returning float32.
    jitted = jax.jit(fn)(jnp.asarray(warmup + period, jnp.int32))
    assert jitted.dtype == jnp.float32
    assert float(jitted) == pytest.approx(_BASE * 0.94, rel=1e-6)
    # Plain Python ints work too (the train loop logs lr(step) on the host).
    assert float(fn(warmup)) == pytest.approx(_BASE, rel=1e-6)


def test_cosine_schedule_reaches_end_factor():
    fn = optim.learning_rate_schedule(
        base_learning_rate=_BASE,
        steps_per_epoch=_SPE,
        num_epochs=30,
        warmup_epochs=5,
        schedule='cosine',
        end_learning_rate_factor=0.1,
    )
    assert _lr(fn, 0) == 0.0
    assert _lr(fn, 50) == pytest.approx(_BASE, rel=1e-6)
    assert _lr(fn, 175) == pytest.approx(_BASE * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert _lr(fn, 300) == pytest.approx(_BASE * 0.1, rel=1e-5)
    assert _lr(fn, 10_000) == pytest.approx(_BASE * 0.1, rel=1e-5)


def test_constant_schedule_and_no_warmup():
    fn = optim.learning_rate_schedule(
        base_learning_rate=_BASE, steps_per_epoch=_SPE, num_epochs=10, warmup_epochs=2, schedule='constant'
    )
    assert _lr(fn, 10) == pytest.approx(_BASE / 2, rel=1e-6)
    assert _lr(fn, 20) == pytest.approx(_BASE, rel=1e-6)
    assert _lr(fn, 5000) == pytest.approx(_BASE, rel=1e-6)
    no_warmup = optim.learning_rate_schedule(
        base_learning_rate=_BASE,
        steps_per_epoch=_SPE,
        num_epochs=10,
        warmup_epochs=0,
        schedule='exponential',
        decay_rate=0.5,
        decay_epochs=1,
    )
    assert _lr(no_warmup, 0) == pytest.approx(_BASE, rel=1e-6)
    assert _lr(no_warmup, 10) == pytest.approx(_BASE / 2, rel=1e-6)


def test_unknown_schedule_raises_and_names_choices():
    with pytest.raises(ValueError, match=r"'polynomial'.*'exponential'.*'cosine'.*'linear'"):
        optim.learning_rate_schedule(
            base_learning_rate=_BASE, steps_per_epoch=_SPE, num_epochs=10, warmup_epochs=1, schedule='polynomial'
        )


def test_linear_schedule_decays_to_zero_after_the_warmup():
    fn = optim.learning_rate_schedule(base_learning_rate=1.0, steps_per_epoch=10, num_epochs=11, warmup_epochs=1,
                                      schedule='linear')
    assert [round(_lr(fn, s), 6) for s in (0, 5, 10, 60, 110, 200)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_absolute_warmup_ramps_to_the_decayed_rate_and_the_floor_holds():
    # Staircase halving every 10 steps counted from step 0; the 20-step warmup ends at 1.0 * 0.5 ** 2.
    fn = optim.learning_rate_schedule(base_learning_rate=1.0, steps_per_epoch=10, num_epochs=10, warmup_epochs=2,
                                      schedule='exponential', decay_rate=0.5, decay_epochs=1,
                                      warmup_style='absolute', floor_factor=0.1)
    assert _lr(fn, 10) == pytest.approx(0.125)
    assert [_lr(fn, s) for s in (20, 29, 30, 39, 40)] == pytest.approx([0.25, 0.25, 0.125, 0.125, 0.1])
    assert _lr(fn, 90) == pytest.approx(0.1)    # 0.5 ** 9 is below the floor
    offset = optim.learning_rate_schedule(base_learning_rate=1.0, steps_per_epoch=10, num_epochs=10,
                                          warmup_epochs=2, schedule='exponential', decay_rate=0.5, decay_epochs=1)
    assert [_lr(offset, s) for s in (20, 30)] == pytest.approx([1.0, 0.5])   # the default starts after warmup


# ------------------------------------------------------------- decay mask ---


def _params():
    """A hand-built params tree in the model zoo's naming convention."""
    f = lambda *shape: np.full(shape, 0.5, np.float32)
    bn = lambda c: {'scale': f(c), 'bias': f(c)}
    return {
        'stem_conv': {'kernel': f(3, 3, 3, 8)},
        'stem_bn': bn(8),
        'block_1': {
            'depthwise': {'kernel': f(3, 3, 1, 8)},
            'depthwise_bn': bn(8),
            'pointwise': {'kernel': f(1, 1, 8, 16)},
            'pointwise_bn': bn(16),
        },
        'block_2': {
            'expand': {'kernel': f(1, 1, 16, 32)},
            'DepthwiseConv_0': {'kernel': f(3, 3, 1, 32), 'bias': f(32)},
            'se': {
                'reduce': {'kernel': f(1, 1, 32, 8), 'bias': f(8)},
                'expand': {'kernel': f(1, 1, 8, 32), 'bias': f(32)},
            },
        },
        'classifier': {'kernel': f(16, 10), 'bias': f(10)},
    }


_DECAYED = {
    ('stem_conv', 'kernel'),
    ('block_1', 'pointwise', 'kernel'),
    ('block_2', 'expand', 'kernel'),
    ('block_2', 'se', 'reduce', 'kernel'),
    ('block_2', 'se', 'expand', 'kernel'),
    ('classifier', 'kernel'),
}


def _flat(tree):
    return {
        tuple(str(getattr(k, 'key', k)) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize('frozen', [False, True])
def test_weight_decay_mask_selects_exactly_conv_and_dense_kernels(frozen):
    params = _params()
    if frozen:
        params = flax.core.freeze(params)
    mask = optim.weight_decay_mask(params)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
    flat = _flat(mask)
    assert len(flat) == len(_flat(params))
    assert all(isinstance(v, bool) for v in flat.values())
    assert {k for k, v in flat.items() if v} == _DECAYED


# --------------------------------------------------------- create_optimizer ---


@pytest.mark.parametrize('name', ['rmsprop', 'adam', 'sgd'])
@pytest.mark.parametrize('precomputed_mask', [False, True])
def test_weight_decay_shrinks_only_masked_kernels(name, precomputed_mask):
    params = jax.tree.map(jnp.asarray, _params())
    tx = optim.create_optimizer(
        learning_rate_fn=lambda step: 0.1,
        weight_decay=0.1,
        optimizer=name,
        params_for_mask=params if precomputed_mask else None,
    )
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, state, params)
    new = optax.apply_updates(params, updates)
    old_flat, new_flat = _flat(params), _flat(new)
    for path, old_value in old_flat.items():
        if path in _DECAYED:
            assert np.all(np.abs(new_flat[path]) < np.abs(old_value)), path
        else:
            np.testing.assert_array_equal(new_flat[path], old_value, err_msg=str(path))
    if name == 'rmsprop':
        # Coupled L2 goes through the TF RMSprop normaliser: g = wd * w.
        g = 0.1 * 0.5
        want = 0.5 - 0.1 * g / np.sqrt(0.9 + 0.1 * g**2 + 1.0)
        np.testing.assert_allclose(new['stem_conv']['kernel'], want, rtol=1e-6)


def test_gradient_clipping_is_applied_before_rmsprop():
    params = {'dense': {'kernel': jnp.zeros((4,))}}
    grads = {'dense': {'kernel': jnp.full((4,), 100.0)}}
    tx = optim.create_optimizer(learning_rate_fn=0.1, weight_decay=0.0, grad_clip_norm=1.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    g = 0.5  # 100s clipped to global norm 1 over 4 elements.
    want = -0.1 * g / np.sqrt(0.9 + 0.1 * g**2 + 1.0)
    np.testing.assert_allclose(updates['dense']['kernel'], want, rtol=1e-6)


def test_unknown_optimizer_raises():
    with pytest.raises(ValueError, match=r"'lamb'.*'rmsprop'.*'adam'.*'sgd'"):
        optim.create_optimizer(learning_rate_fn=0.1, weight_decay=0.0, optimizer='lamb')


# --------------------------------------------------------------------- EMA ---


def test_ema_update_math_and_dtypes():
    ema = {
        'params': {'w': jnp.array([1.0, 2.0], jnp.float32), 'h': jnp.array([1.0, 1.0], jnp.bfloat16)},
        'batch_stats': {'mean': jnp.array([0.0, 4.0], jnp.float32)},
    }
    new = {
        'params': {'w': jnp.array([3.0, 0.0], jnp.float32), 'h': jnp.array([3.0, 3.0], jnp.bfloat16)},
        'batch_stats': {'mean': jnp.array([10.0, 0.0], jnp.float32)},
    }
    out = optim.ema_update(ema, new, 0.75)
    np.testing.assert_allclose(out['params']['w'], [1.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(out['batch_stats']['mean'], [2.5, 3.0], rtol=1e-6)
    assert out['params']['h'].dtype == jnp.bfloat16
    np.testing.assert_allclose(out['params']['h'].astype(np.float32), [1.5, 1.5])
    # decay 0 copies; a traced decay works under jit.
    copied = optim.ema_update(ema, new, 0.0)
    np.testing.assert_array_equal(copied['params']['w'], new['params']['w'])
    jitted = jax.jit(optim.ema_update)(ema, new, jnp.float32(0.5))
    np.testing.assert_allclose(jitted['params']['w'], [2.0, 1.0], rtol=1e-6)


def test_ema_decay_with_warmup_formula():
    assert float(optim.ema_decay_with_warmup(0, 0.9999)) == pytest.approx(0.1)
    assert float(optim.ema_decay_with_warmup(90, 0.9999)) == pytest.approx(0.91)
    assert float(optim.ema_decay_with_warmup(10**7, 0.9999)) == pytest.approx(0.9999, rel=1e-7)
    assert float(optim.ema_decay_with_warmup(5, 0.5)) == pytest.approx(0.4)
    assert float(optim.ema_decay_with_warmup(10**6, 0.5)) == pytest.approx(0.5)
    assert float(optim.ema_decay_with_warmup(123, 0.0)) == 0.0
    assert float(optim.ema_decay_with_warmup(123, -1.0)) == 0.0
    traced = jax.jit(optim.ema_decay_with_warmup)(jnp.int32(0), 0.999)
    assert traced.dtype == jnp.float32
    assert float(traced) == pytest.approx(0.1)
