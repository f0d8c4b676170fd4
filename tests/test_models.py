"""The model zoo: published parameter counts, shapes at any resolution, train/eval modes, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax import published
from mobilenets_jax.models import layers

ALL_MODELS = ['cifar_mobilenet_v1', 'cifar_mobilenet_v2', 'mobilenet_v1', 'mobilenet_v1_conv',
              'mobilenet_v1_shallow', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small',
              'mobilenet_v4_conv_large', 'mobilenet_v4_conv_medium', 'mobilenet_v4_conv_small',
              'mobilenet_v4_hybrid_large', 'mobilenet_v4_hybrid_medium', 'shufflenet_v1', 'shufflenet_v2']


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model, size=224):
    return mj.abstract_variables(model, (1, size, size, 3))


def test_list_models():
    assert mj.list_models() == ALL_MODELS


@pytest.mark.parametrize('key', sorted(published.EXACT_PARAMS, key=str))
def test_exact_params_match_keras(key):
    name, alpha, groups = key
    variables = abstract_variables(mj.create_model(name, alpha=alpha, groups=groups))
    trainable, non_trainable = published.EXACT_PARAMS[key]
    assert count(variables['params']) == trainable
    assert count(variables['params']) + count(variables['batch_stats']) == trainable + non_trainable


@pytest.mark.parametrize('key', sorted(published.EXACT_TRAINABLE_PARAMS, key=str))
def test_exact_params_match_torchvision(key):
    name, alpha, groups = key
    variables = abstract_variables(mj.create_model(name, alpha=alpha, groups=groups))
    assert count(variables['params']) == published.EXACT_TRAINABLE_PARAMS[key]


@pytest.mark.parametrize('key', sorted(published.ROUNDED_PARAMS, key=str))
def test_params_match_printed_precision(key):
    name, alpha, groups = key
    model = mj.create_model(name, alpha=alpha, groups=groups)
    size = mj.get_spec(name).base_resolution
    value, unit, decimals = published.ROUNDED_PARAMS[key]
    # "Printed precision": the count rounds to the printed figure.
    assert round(count(abstract_variables(model, size)['params']) / unit, decimals) == value


def _resolutions(name):
    if mj.get_spec(name).base_resolution == 32:
        return [(32, 32), (16, 16), (24, 40)]
    return [(32, 32), (64, 64), (96, 64)]


@pytest.mark.parametrize('name', ALL_MODELS)
def test_output_shape_finite_every_resolution(name):
    # MobileNetV4's 5×5 and strided-attention blocks compile far faster with XLA's depthwise form; the
    # shifted form's equality with it is tested in test_depthwise.py.
    impl = 'xla' if name.startswith('mobilenet_v4') else 'auto'
    model = mj.create_model(name, num_classes=7, alpha=0.5, depthwise_impl=impl)
    variables = mj.init_variables(model, seed=0, input_shape=(1, 32, 32, 3))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    rng = np.random.default_rng(0)
    for height, width in _resolutions(name):
        images = jnp.asarray(rng.normal(size=(2, height, width, 3)), jnp.float32)
        logits = apply(variables, images)
        assert logits.shape == (2, 7) and logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize('name', ['mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_small', 'shufflenet_v1',
                                  'cifar_mobilenet_v1'])
def test_train_and_eval_modes(name):
    model = mj.create_model(name, num_classes=10, alpha=0.5, dropout_rate=0.5)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = mj.init_variables(model, seed=0, input_shape=images.shape)

    @jax.jit
    def run(variables, images):
        eval_a = model.apply(variables, images, train=False)
        eval_b = model.apply(variables, images, train=False)
        train_a, updates = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                       rngs={'dropout': jax.random.key(1)})
        train_b, _ = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.key(2)})
        return eval_a, eval_b, train_a, train_b, updates

    eval_a, eval_b, logits_a, logits_b, updates = run(variables, images)
    # Eval mode: deterministic and does not touch batch statistics (no mutable collection needed).
    np.testing.assert_array_equal(eval_a, eval_b)
    # Train mode: batch statistics move, dropout depends on its rng.
    old_stats, new_stats = jax.tree.leaves(variables['batch_stats']), jax.tree.leaves(updates['batch_stats'])
    assert any(not np.allclose(a, b) for a, b in zip(old_stats, new_stats))
    assert not np.allclose(logits_a, logits_b)


def test_mobilenet_v2_residuals_exactly_where_stride1_and_same_width():
    model = mj.create_model('mobilenet_v2', num_classes=10)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
    variables = mj.init_variables(model, seed=0, input_shape=images.shape)
    # Make every projection output exactly 1 (BatchNorm scale 0, bias 1): a block without a shortcut then
    # outputs all ones; a block with one outputs its input plus one.
    def rewrite(path, x):
        key = jax.tree_util.keystr(path)
        if 'project_bn' not in key:
            return x
        return jnp.zeros_like(x) if 'scale' in key else jnp.ones_like(x)

    params = jax.tree_util.tree_map_with_path(rewrite, variables['params'])
    _, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images, train=False,
                           capture_intermediates=True, mutable=['intermediates'])
    outputs = {name: value['__call__'][0] for name, value in state['intermediates'].items()
               if name.startswith('block_')}
    residual_blocks = [index for index in range(1, 18) if not bool(jnp.all(outputs[f'block_{index}'] == 1))]
    # Table 2: repeats after the first of each stage keep stride 1 and width.
    assert residual_blocks == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


def test_bfloat16_close_to_float32():
    model32 = mj.create_model('mobilenet_v2', num_classes=10, alpha=0.5)
    model16 = mj.create_model('mobilenet_v2', num_classes=10, alpha=0.5, dtype=jnp.bfloat16)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 64, 64, 3)), jnp.float32)
    variables = mj.init_variables(model32, seed=0, input_shape=images.shape)
    logits32 = jax.jit(lambda v, x: model32.apply(v, x, train=False))(variables, images)
    logits16 = jax.jit(lambda v, x: model16.apply(v, x, train=False))(variables, images)
    assert jax.tree.leaves(variables['params'])[0].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits16)))
    # bfloat16 keeps 8 mantissa bits: allow 5% of the logit scale.
    scale = float(jnp.max(jnp.abs(logits32)))
    assert float(jnp.max(jnp.abs(logits16 - logits32))) <= 0.05 * scale


def test_init_variables_matches_flax_init_structure_and_scale():
    model = mj.create_model('cifar_mobilenet_v2', alpha=0.5)
    images = jnp.zeros((1, 16, 16, 3))
    reference = model.init(jax.random.key(0), images, train=False)
    fast = mj.init_variables(model, seed=0, input_shape=images.shape)
    assert jax.tree.structure(fast) == jax.tree.structure(reference)
    abstract = mj.abstract_variables(model, images.shape)
    assert (jax.tree.map(lambda a: (a.shape, a.dtype), abstract)
            == jax.tree.map(lambda a: (a.shape, a.dtype), reference))
    for ref, ours in zip(jax.tree.leaves(reference), jax.tree.leaves(fast)):
        assert ref.shape == ours.shape and ref.dtype == ours.dtype
        if ref.size > 200:  # same initializer family: standard deviations agree within sampling noise
            assert abs(float(jnp.std(ours)) / float(jnp.std(ref)) - 1) < 0.25
    again = mj.init_variables(model, seed=0, input_shape=images.shape)
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(again)))


def test_make_divisible_and_shuffle():
    assert layers.make_divisible(32 * 0.35) == 16
    assert layers.make_divisible(1280 * 1.4) == 1792
    x = jnp.arange(6).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(layers.channel_shuffle(x, 2).ravel(), [0, 3, 1, 4, 2, 5])


@pytest.mark.parametrize('kwargs, message', [
    (dict(name='mobilenet_v4'), "unknown model 'mobilenet_v4'; valid models: cifar_mobilenet_v1"),
    (dict(name='mobilenet_v1', alpha=0), 'alpha=0 for mobilenet_v1'),
    (dict(name='mobilenet_v2', alpha=-0.5), 'alpha=-0.5 for mobilenet_v2'),
    (dict(name='shufflenet_v2', alpha=0.75), 'allowed values are 0.5, 1.0, 1.5, 2.0'),
    (dict(name='mobilenet_v1', groups=3), 'groups=3: mobilenet_v1 has no groups argument'),
    (dict(name='shufflenet_v1', groups=5), 'groups=5 for shufflenet_v1: allowed values are 1, 2, 3, 4, 8'),
    (dict(name='mobilenet_v2', activation='relu'), 'unknown option(s) activation for mobilenet_v2'),
    (dict(name='mobilenet_v1', num_classes=0), 'num_classes=0'),
    (dict(name='mobilenet_v1', padding_style='valid'), "padding_style='valid'"),
])
def test_bad_arguments(kwargs, message):
    name = kwargs.pop('name')
    with pytest.raises(ValueError) as info:
        mj.create_model(name, **kwargs)
    assert message in str(info.value)


def test_bad_inputs_fail_before_tracing():
    model = mj.create_model('mobilenet_v1', alpha=0.25)
    with pytest.raises(ValueError, match=r'input 16x16 is too small.*>= 32'):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    with pytest.raises(ValueError, match=r'4-D NHWC batch.*\(32, 32, 3\)'):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False)
    with pytest.raises(ValueError, match=r'image size 24x24 is too small for mobilenet_v2'):
        mj.check_image_size('mobilenet_v2', 24)
    mj.check_image_size('cifar_mobilenet_v1', 16)  # the study's rho = 0.5
