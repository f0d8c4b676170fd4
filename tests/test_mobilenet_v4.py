"""MobileNetV4: the UIB variants, Fused IB and Mobile MQA block by block, the width rules, mult-adds, and
every variant traced forward and backward.

Whole-network parameter counts are checked against timm in test_models.py / test_cost.py (published.py).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax import cost, published
from mobilenets_jax.models import layers
from mobilenets_jax.models import mobilenet_v4 as m4

V4_MODELS = ['mobilenet_v4_conv_small', 'mobilenet_v4_conv_medium', 'mobilenet_v4_conv_large',
             'mobilenet_v4_hybrid_medium', 'mobilenet_v4_hybrid_large']
CONV = layers.Conv2D
DEPTHWISE = functools.partial(layers.DepthwiseConv2D, impl='xla')
NORM = layers.batch_norm(False, momentum=0.99, epsilon=1e-3, dtype=jnp.float32, param_dtype=jnp.float32,
                         axis_name=None)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def init_abstract(module, shape):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))


def host_variables(module, shape, seed=0):
    """Variables of `module` drawn with NumPy from their abstract shapes: compiling `module.init` (its random
    number generation) would take longer than everything the test does with them. Kernels ~ N(0, 1/fan_in),
    BatchNorm statistics and layer scales random around their usual values."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            value = rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        elif name.endswith(("['var']", "['scale']", "['gamma']")):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.uniform(-0.2, 0.2, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, init_abstract(module, shape))


def uib(start, middle, strides, expanded, features, **kwargs):
    return m4.UniversalInvertedBottleneck(start, middle, strides, expanded, features, CONV, DEPTHWISE, NORM,
                                          nn.relu, **kwargs)


@pytest.mark.parametrize('start, middle, variant', [(3, 5, 'ExtraDW'), (0, 3, 'IB'), (5, 0, 'ConvNext'),
                                                     (0, 0, 'FFN')])
def test_uib_variants_have_exactly_their_layers(start, middle, variant):
    assert m4.UIB(start, middle, 1, 16, 4.0).variant == variant
    variables = init_abstract(uib(start, middle, 1, 64, 16), (2, 8, 8, 16))
    # BatchNorm: scale and bias per channel, after every conv.
    expected = (16 * 64 + 2 * 64) + (64 * 16 + 2 * 16)
    expected += (start * start * 16 + 2 * 16) if start else 0       # start depthwise on the 16 input channels
    expected += (middle * middle * 64 + 2 * 64) if middle else 0    # middle depthwise on the 64 expanded ones
    assert count(variables['params']) == expected
    assert ('start_depthwise' in variables['params']) == bool(start)
    assert ('middle_depthwise' in variables['params']) == bool(middle)


@pytest.mark.parametrize('start, middle, strided', [(3, 5, 'middle_depthwise'), (0, 3, 'middle_depthwise'),
                                                    (5, 0, 'start_depthwise')])
def test_uib_stride_sits_on_the_middle_depthwise_else_the_start_one(start, middle, strided):
    block = uib(start, middle, 2, 32, 24)
    x = jax.ShapeDtypeStruct((1, 9, 7, 16), jnp.float32)
    variables = init_abstract(block, x.shape)
    y, state = jax.eval_shape(
        lambda v, x: block.apply(v, x, capture_intermediates=True, mutable=['intermediates']), variables, x)
    assert y.shape == (1, 5, 4, 24)   # SAME padding: ceil(9 / 2) x ceil(7 / 2)
    assert state['intermediates'][strided]['__call__'][0].shape[1:3] == (5, 4)


def test_uib_shortcut_exactly_at_stride_1_and_same_width():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    blocks = (uib(3, 3, 1, 64, 16), uib(3, 3, 1, 64, 24), uib(3, 3, 2, 64, 16))
    all_variables = []
    for block in blocks:
        variables = host_variables(block, x.shape)
        # BatchNorm after the projection with scale 0 and bias 0: the residual branch outputs zeros.
        all_variables.append(jax.tree_util.tree_map_with_path(
            lambda path, v: jnp.zeros_like(v) if "['project_bn']['" in jax.tree_util.keystr(path)
            and 'params' in jax.tree_util.keystr(path) else v, variables))

    same, wider, strided = jax.jit(lambda vs, x: [b.apply(v, x) for b, v in zip(blocks, vs)])(all_variables, x)
    np.testing.assert_array_equal(same, x)
    assert not np.any(wider) and not np.any(strided)   # width change or stride: no shortcut


def test_strided_uib_without_depthwise_is_refused():
    with pytest.raises(ValueError, match='strided UIB needs a depthwise'):
        init_abstract(uib(0, 0, 2, 32, 16), (1, 8, 8, 16))


def test_layer_scale_is_a_per_channel_gain_initialized_at_its_value():
    scale = m4.LayerScale(1e-5)
    x = jnp.arange(6.0).reshape(1, 1, 2, 3)
    variables = scale.init(jax.random.key(0), x)    # a constant initializer: nothing random to compile
    np.testing.assert_array_equal(variables['params']['gamma'], np.full(3, 1e-5, np.float32))
    np.testing.assert_allclose(scale.apply({'params': {'gamma': jnp.array([1.0, 2.0, 3.0])}}, x),
                               x * jnp.array([1.0, 2.0, 3.0]))
    assert 'layer_scale' in init_abstract(uib(3, 3, 1, 32, 16, layer_scale_init=1e-5), (1, 4, 4, 16))['params']
    assert 'layer_scale' not in init_abstract(uib(3, 3, 1, 32, 16), (1, 4, 4, 16))['params']


def test_fused_ib_params_and_shape():
    block = m4.FusedInvertedBottleneck(128, 48, 3, 2, CONV, NORM, nn.relu)
    variables = init_abstract(block, (1, 16, 16, 32))
    assert count(variables['params']) == 3 * 3 * 32 * 128 + 2 * 128 + 128 * 48 + 2 * 48
    assert jax.eval_shape(block.apply, variables, jnp.zeros((1, 16, 16, 32))).shape == (1, 8, 8, 48)


def _mqa(kv_strides, heads=4, key_dim=8, value_dim=6):
    return m4.MultiQueryAttention(heads, key_dim, value_dim, kv_strides, CONV, DEPTHWISE, NORM)


def test_mqa_equals_plain_multi_query_attention():
    """Every head attends with its own query to the ONE shared key and value head."""
    block = _mqa(kv_strides=1)
    x = jax.random.normal(jax.random.key(3), (2, 5, 3, 16))
    variables = host_variables(block, x.shape)
    params = jax.tree.map(np.asarray, variables['params'])
    tokens = np.asarray(x).reshape(2, 15, 16)
    query = (tokens @ params['query']['conv']['kernel'][0, 0]).reshape(2, 15, 4, 8)
    key = tokens @ params['key']['conv']['kernel'][0, 0]
    value = tokens @ params['value']['conv']['kernel'][0, 0]
    heads = []
    for head in range(4):
        logits = query[:, :, head] @ key.transpose(0, 2, 1) / np.sqrt(8)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        heads.append(weights / weights.sum(-1, keepdims=True) @ value)
    expected = np.concatenate(heads, -1) @ params['output']['conv']['kernel'][0, 0]
    np.testing.assert_allclose(jax.jit(block.apply)(variables, x), expected.reshape(2, 5, 3, 16), rtol=1e-5,
                               atol=1e-5)


def test_mqa_kv_stride_downsamples_keys_and_values_only():
    block = _mqa(kv_strides=2)
    x = jax.ShapeDtypeStruct((2, 7, 6, 16), jnp.float32)
    variables = init_abstract(block, x.shape)
    y, state = jax.eval_shape(
        lambda v, x: block.apply(v, x, capture_intermediates=True, mutable=['intermediates']), variables, x)
    assert y.shape == x.shape
    for name, size in (('key', 8), ('value', 6)):
        assert state['intermediates'][f'{name}_depthwise']['__call__'][0].shape == (2, 4, 3, 16)
        assert state['intermediates'][name]['__call__'][0].shape == (2, 4, 3, size)
    # Without the stride there is no downsampling conv at all.
    assert 'key_depthwise' not in init_abstract(_mqa(kv_strides=1), (1, 4, 4, 16))['params']
    assert m4.attention_mult_adds(7, 6, 4, 8, 6, kv_strides=2) == 42 * 4 * 12 * (8 + 6)


def test_mqa_block_keeps_width_and_has_one_input_norm():
    block = m4.MobileMQABlock(4, 8, 2, CONV, DEPTHWISE, NORM, layer_scale_init=1e-5)
    variables = init_abstract(block, (1, 8, 8, 32))
    assert sorted(variables['params']) == ['attention', 'input_bn', 'layer_scale']
    attention = variables['params']['attention']
    assert attention['query']['conv']['kernel'].shape == (1, 1, 32, 32)
    assert attention['key']['conv']['kernel'].shape == (1, 1, 32, 8)
    assert attention['output']['conv']['kernel'].shape == (1, 1, 32, 32)


def _params(name, alpha):
    return mj.abstract_variables(mj.create_model(name, alpha=alpha), (1, 32, 32, 3))['params']


def _widths(params):
    return tuple(params[name]['conv']['conv']['kernel'].shape[-1] for name in ('stem', 'last', 'head'))


def test_width_rules_follow_timm():
    # The stem stays put below 1 (timm's fix_stem) and scales above; the 960 conv scales; the 1280 head never.
    small = _params('mobilenet_v4_conv_small', 0.5)
    assert _widths(small) == (32, 480, 1280)
    assert _widths(_params('mobilenet_v4_conv_small', 1.5)) == (48, 1440, 1280)
    assert not any('layer_scale' in block for block in small.values())
    hybrid = _params('mobilenet_v4_hybrid_medium', 0.75)
    assert _widths(hybrid) == (32, 720, 1280)
    attention = [block for block in hybrid.values() if 'attention' in block]
    assert len(attention) == 8
    assert all(block['attention']['key']['conv']['kernel'].shape[-1] == 64 for block in attention)   # unscaled
    # Layer scale on every attention and UIB block of a hybrid (not on the Fused IB, stem or head).
    uib_or_attention = {name for name, block in hybrid.items() if 'attention' in block or
                        ('expand' in block and block['expand']['conv']['kernel'].shape[0] == 1)}   # UIB: 1x1 expand
    assert {name for name, block in hybrid.items() if 'layer_scale' in block} == uib_or_attention


def test_variants_fix_activation_and_layer_scale():
    for name in V4_MODELS:
        fixed = mj.get_spec(name).fixed
        assert fixed.get('activation', 'relu') == ('gelu' if name == 'mobilenet_v4_hybrid_large' else 'relu')
        assert fixed.get('layer_scale_init') == (1e-5 if 'hybrid' in name else None)
        assert fixed['stem_channels'] == (24 if 'large' in name else 32)


def _macs_and_attention_macs(model, size):
    """`cost.count_macs` (attention products included) and the attention rows' share of it."""
    rows = cost.layer_costs(model, size)
    return cost.count_macs(model, size), sum(row['macs'] for row in rows if row['kind'] == 'attention')


# timm's own modules at these sizes (hooks on MultiQueryAttention2d): the attention products.
REFERENCE_ATTENTION_MACS = {('mobilenet_v4_hybrid_medium', 256): 41_943_040,
                            ('mobilenet_v4_hybrid_large', 384): 339_738_624}


V4_MACS_POINTS = sorted((k for k in published.PUBLISHED_MACS if k[0].startswith('mobilenet_v4')), key=str)


@pytest.mark.parametrize('key', V4_MACS_POINTS, ids=['-'.join(map(str, k)) for k in V4_MACS_POINTS])
def test_macs_with_attention_within_3_percent_of_timm(key):
    name, alpha, _, size = key
    macs, attention = _macs_and_attention_macs(mj.create_model(name, alpha=alpha), size)
    assert attention == REFERENCE_ATTENTION_MACS.get((name, size), 0)
    assert abs(macs / published.published_macs(*key) - 1) <= 0.03


@pytest.mark.parametrize('name', V4_MODELS)
def test_forward_and_gradient_trace_at_64(name):
    """Traced (not compiled) in train mode: shapes and dtypes of the loss, the gradient and the new stats.
    (XLA's depthwise form: the shifted-taps one traces k² slices per layer and is tested in test_depthwise.)"""
    model = mj.create_model(name, num_classes=10, depthwise_impl='xla')
    variables = mj.abstract_variables(model, (2, 64, 64, 3))

    def loss(params, batch_stats, images):
        logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                                      mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        return jnp.mean(logits ** 2), updates

    (value, updates), grads = jax.eval_shape(
        jax.value_and_grad(loss, has_aux=True), variables['params'], variables['batch_stats'],
        jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert value.shape == () and value.dtype == jnp.float32
    assert jax.tree.map(lambda g: (g.shape, g.dtype), grads) == jax.tree.map(lambda p: (p.shape, p.dtype),
                                                                             variables['params'])
    assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


# Fused IB, the UIB with its stride on the middle and on the start depthwise, and both Mobile MQA forms in
# a network that compiles in seconds (the stem is a ConvBN row's module).
MINI_BLOCKS = (m4.FusedIB(3, 2, 16, 2.0), m4.UIB(3, 3, 2, 24, 2.0), m4.MQA(2, 8, 2), m4.UIB(5, 0, 2, 32, 2.0),
               m4.MQA(2, 8, 1))
MINI = functools.partial(m4.MobileNetV4, num_classes=10, blocks=MINI_BLOCKS, stem_channels=8, activation='gelu',
                         layer_scale_init=0.5, dropout_rate=0.0, depthwise_impl='xla')


def test_gradient_reaches_every_block():
    """Compiled once on a miniature hybrid (GELU, layer scale 0.5): finite, nonzero gradients for every
    block's kernels. Inference-mode BatchNorm keeps the compile short; train mode is traced for every full
    model above (and trained by the digits runs)."""
    model = MINI()
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)), jnp.float32)
    variables = mj.init_variables(model, seed=0, input_shape=images.shape)
    variables['params'] = jax.tree_util.tree_map_with_path(   # init_variables leaves layer scales at 0
        lambda path, p: jnp.full_like(p, 0.5) if 'gamma' in jax.tree_util.keystr(path) else p, variables['params'])

    def loss(params):
        logits = model.apply({**variables, 'params': params}, images, train=False)
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    grads = jax.jit(jax.grad(loss))(variables['params'])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    for index in range(1, len(MINI_BLOCKS) + 1):
        kernels = [g for path, g in jax.tree_util.tree_leaves_with_path(grads[f'block_{index}'])
                   if 'kernel' in jax.tree_util.keystr(path)]
        assert kernels and all(float(jnp.max(jnp.abs(g))) > 0 for g in kernels), index


def test_bfloat16_blocks_match_float32_and_logits_stay_float32():
    """bfloat16 compute with float32 parameters: a GELU UIB with layer scale and a strided-KV Mobile MQA
    (its softmax in float32) stay within bfloat16's precision of float32; the whole model returns float32."""
    def blocks(dtype):
        conv = functools.partial(layers.Conv2D, dtype=dtype)
        depthwise = functools.partial(layers.DepthwiseConv2D, impl='xla', dtype=dtype)
        norm = layers.batch_norm(False, momentum=0.99, epsilon=1e-3, dtype=dtype, param_dtype=jnp.float32,
                                 axis_name=None)
        act = m4.ACTIVATIONS['gelu']
        return (m4.UniversalInvertedBottleneck(3, 5, 1, 64, 32, conv, depthwise, norm, act, layer_scale_init=0.5),
                m4.MobileMQABlock(4, 16, 2, conv, depthwise, norm, layer_scale_init=0.5))

    x = jax.random.normal(jax.random.key(5), (2, 12, 10, 32))
    variables = [host_variables(block, x.shape, seed) for seed, block in enumerate(blocks(jnp.float32))]

    @jax.jit
    def outputs(variables, x):
        result = []
        for dtype in (jnp.float32, jnp.bfloat16):
            y = x.astype(dtype)   # as the model's check_input casts its images
            for block, v in zip(blocks(dtype), variables):
                y = block.apply(v, y)
            result.append(y)
        return result

    y32, y16 = outputs(variables, x)
    assert y16.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y16)))
    scale = float(jnp.max(jnp.abs(y32)))
    assert float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32))) <= 0.05 * scale
    model = MINI(dtype=jnp.bfloat16)
    variables = mj.abstract_variables(model, (1, 32, 32, 3))
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_init_variables_starts_layer_scale_at_its_initial_value():
    model = MINI(layer_scale_init=m4.LAYER_SCALE_INIT)
    params = mj.init_variables(model, seed=0, input_shape=(1, 32, 32, 3))['params']
    gammas = [block['layer_scale']['gamma'] for block in params.values() if 'layer_scale' in block]
    assert gammas and all(bool(jnp.all(g == m4.LAYER_SCALE_INIT)) for g in gammas)


def test_too_small_inputs_are_refused_with_the_minimum():
    with pytest.raises(ValueError, match=r'image size 16x16 is too small for mobilenet_v4_conv_small.*>= 32'):
        mj.check_image_size('mobilenet_v4_conv_small', 16)
