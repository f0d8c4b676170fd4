"""Every depthwise / 1×1 / grouped-conv implementation computes what `lax` convolution computes.

Values and gradients (wrt input and kernel) are compared with `lax.conv_general_dilated` over
strides 1 and 2, both padding styles, odd/even/non-square inputs, kernels 3 and 5, in float32
(tolerance 1e-5 relative to the output scale) and bfloat16 (2e-2 relative: 8 mantissa bits, and the
two forms round their k² partial sums differently). Parameter trees and counts must not depend on the
implementation. Nothing here compiles a full-size model.
"""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax import ops
from mobilenets_jax.models import layers

IMPLS = [impl for impl in ops.DEPTHWISE_IMPLS if impl not in ('xla', 'auto')]
SIZES = [(7, 7), (8, 8), (9, 6)]   # odd, even, non-square (odd × even)
F32_TOL = 1e-5
BF16_TOL = 2e-2


def _lax_depthwise(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=x.shape[-1])


def _value_and_grads(fn, x, kernel, cotangent):
    y, vjp = jax.vjp(fn, x, kernel)
    return (y,) + vjp(cotangent)


def _assert_close(actual, expected, tol, what):
    actual = np.asarray(actual, np.float32)
    expected = np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err <= tol, f'{what}: max error {err:.2e} of the scale > {tol}'


CASES = list(itertools.product(SIZES, (3, 5), (1, 2), layers.PADDING_STYLES))


def _all_cases(impl_fn, xs, kernels, cotangents):
    """Values and gradients of every case in one traced program (one compile instead of 48 eager ones)."""
    results = []
    for ((height, width), k, strides, style), x, kernel, cotangent in zip(CASES, xs, kernels, cotangents):
        padding = layers.conv_padding(k, style)
        results.append(_value_and_grads(lambda a, b: impl_fn(a, b, strides, padding), x, kernel, cotangent))
    return results


# Policies that force a backward-pass form onto every case of these small shapes.
POLICIES = {
    # Large strided maps take the input gradient by output phase.
    'polyphase': dataclasses.replace(ops.DEFAULT_POLICY, polyphase_min_input_size=0),
    # Wide 3×3 layers take the kernel gradient row by row.
    'row_loop': dataclasses.replace(ops.DEFAULT_POLICY, row_loop_min_channels=0, row_loop_min_output_size=0,
                                    row_loop_max_taps=25),
}


@pytest.mark.parametrize('impl', IMPLS + ['shifted:polyphase', 'shifted:row_loop'])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)], ids=['f32', 'bf16'])
def test_depthwise_equals_lax(impl, dtype, tol):
    impl, _, forced = impl.partition(':')
    policy = POLICIES[forced] if forced else ops.DEFAULT_POLICY
    rng = np.random.default_rng(0)
    xs, kernels, cotangents = [], [], []
    for (height, width), k, strides, style in CASES:
        padding = layers.conv_padding(k, style)
        xs.append(jnp.asarray(rng.standard_normal((2, height, width, 6)), dtype))
        kernels.append(jnp.asarray(rng.standard_normal((k, k, 1, 6)), dtype))
        out_shape = jax.eval_shape(lambda a, b: _lax_depthwise(a, b, strides, padding), xs[-1], kernels[-1]).shape
        cotangents.append(jnp.asarray(rng.standard_normal(out_shape), dtype))
    expected = jax.jit(lambda *a: _all_cases(_lax_depthwise, *a))(xs, kernels, cotangents)
    ours = lambda a, b, strides, padding: ops.depthwise_conv(a, b, strides, padding, impl, policy)
    actual = jax.jit(lambda *a: _all_cases(ours, *a))(xs, kernels, cotangents)
    for ((height, width), k, strides, style), act, exp in zip(CASES, actual, expected):
        for name, a, e in zip(('value', 'grad x', 'grad kernel'), act, exp):
            assert a.dtype == e.dtype
            _assert_close(a, e, tol, f'{impl} {name} {height}x{width} k{k} s{strides} {style} {dtype.__name__}')


def _kernel_gradient_loops(shape, kernel_size, strides, policy=ops.DEFAULT_POLICY):
    """How many loops the shifted depthwise backward pass at this shape traces (the row loop's)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    kernel = jax.ShapeDtypeStruct((kernel_size, kernel_size, 1, shape[-1]), jnp.float32)
    grad = jax.grad(lambda a, b: jnp.sum(ops.depthwise_conv(a, b, strides, 'SAME', 'shifted', policy)), (0, 1))
    jaxpr = str(jax.make_jaxpr(grad)(x, kernel))
    return jaxpr.count('scan[') + jaxpr.count('while[')    # fori_loop with static bounds is a scan


def test_row_loop_kernel_gradient_only_on_wide_3x3_layers():
    # The measured rule: 3×3, ≥ 64 channels, ≥ 14×14 outputs (MobileNetV1's 14×14×512 blocks, say).
    assert _kernel_gradient_loops((2, 14, 14, 64), 3, 1) == 1
    assert _kernel_gradient_loops((2, 28, 28, 64), 3, 2) == 1
    assert _kernel_gradient_loops((2, 14, 14, 32), 3, 1) == 0      # narrow
    assert _kernel_gradient_loops((2, 7, 7, 1024), 3, 1) == 0      # small map
    assert _kernel_gradient_loops((2, 14, 14, 64), 3, 2) == 0      # 7×7 outputs
    assert _kernel_gradient_loops((2, 14, 14, 64), 5, 1) == 0      # 5×5
    # The thresholds are the policy's: a policy that forces the loop gets it on a 5×5 narrow layer.
    assert _kernel_gradient_loops((2, 7, 7, 8), 5, 1, POLICIES['row_loop']) == 1


def test_row_loop_kernel_gradient_on_a_wide_layer():
    # A shape the rule sends through the loop, against lax's kernel gradient (strides 1 and 2).
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 28, 29, 64)), jnp.float32)     # 14×15 outputs at stride 2
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 64)), jnp.float32)
    for strides, padding in ((1, 'SAME'), (2, ((1, 1), (1, 1)))):
        loss = lambda fn: (lambda a, b: jnp.sum(jnp.sin(fn(a, b, strides, padding))))
        ours = jax.jit(jax.grad(loss(lambda a, b, s, p: ops.depthwise_conv(a, b, s, p, 'shifted')), (0, 1)))
        expected = jax.grad(loss(_lax_depthwise), (0, 1))(x, kernel)
        for name, a, e in zip(('grad x', 'grad kernel'), ours(x, kernel), expected):
            _assert_close(a, e, F32_TOL, f'{name} s{strides}')


def test_depthwise_under_jit_matches_eager():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 10, 10, 4)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 1, 4)), jnp.float32)
    for impl in IMPLS:
        grad = jax.jit(jax.grad(lambda a, b: jnp.sum(ops.depthwise_conv(a, b, 2, 'SAME', impl) ** 2), (0, 1)))
        ref = jax.grad(lambda a, b: jnp.sum(_lax_depthwise(a, b, 2, 'SAME') ** 2), (0, 1))(x, kernel)
        for a, e in zip(grad(x, kernel), ref):
            _assert_close(a, e, F32_TOL, impl)


def test_auto_resolves_per_backend():
    assert ops.resolve_depthwise_impl('auto', 'cpu') == 'shifted'
    for backend in ('gpu', 'cuda', 'tpu', 'something_new'):
        assert ops.resolve_depthwise_impl('auto', backend) == 'xla'
    assert ops.resolve_depthwise_impl('xla', 'cpu') == 'xla'
    gpu_shifted = dataclasses.replace(ops.DEFAULT_POLICY, auto_depthwise_impl=(('gpu', 'shifted'),))
    assert ops.resolve_depthwise_impl('auto', 'gpu', gpu_shifted) == 'shifted'
    assert ops.resolve_depthwise_impl('auto', 'cpu', gpu_shifted) == 'xla'
    with pytest.raises(ValueError, match='depthwise_impl'):
        layers.DepthwiseConv2D(impl='nope').init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))


@pytest.mark.parametrize('kernel_size,in_channels,groups,strides,use_bias,style', [
    (1, 12, 1, 1, False, 'same'), (1, 12, 1, 2, True, 'same'), (1, 12, 3, 1, True, 'same'),
    (1, 12, 4, 1, False, 'same'),                                  # 1×1: matmul / one per group
    (3, 3, 1, 1, True, 'same'), (3, 3, 1, 1, False, 'symmetric'),  # few input channels: im2col
    (5, 4, 1, 1, True, 'symmetric'), (3, 3, 1, 2, True, 'same'), (3, 3, 1, 2, False, 'symmetric'),
    (3, 12, 1, 1, False, 'same'), (3, 12, 1, 1, True, 'symmetric'),  # 3×3 stride 1: Winograd (f32)
    (3, 12, 1, 2, True, 'same'),                                   # lax, kernel gradient as a GEMM
    (3, 12, 1, 2, False, 'symmetric'), (5, 8, 1, 1, True, 'symmetric'),
    (3, 12, 3, 1, True, 'same'),                                   # grouped k×k: plain lax
])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)], ids=['f32', 'bf16'])
def test_conv2d_equals_nn_conv(kernel_size, in_channels, groups, strides, use_bias, style, dtype, tol):
    """Conv2D (matmul for 1×1, im2col for convolutions over few input channels, Winograd for float32
    3×3 stride 1, `lax` with a GEMM kernel gradient for other dense ones, `lax` for grouped ones)
    against `nn.Conv`: values and gradients."""
    import flax.linen as nn
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 7, 6, in_channels)), dtype)
    ours = layers.Conv2D(24, kernel_size, strides, groups, use_bias, padding_style=style, dtype=dtype)
    variables = ours.init(jax.random.key(0), x)
    reference = nn.Conv(24, (kernel_size, kernel_size), strides=(strides, strides),
                        padding=layers.conv_padding(kernel_size, style), feature_group_count=groups,
                        use_bias=use_bias, dtype=dtype)
    ref_vars = {'params': variables['params']['conv']}
    assert jax.tree.map(jnp.shape, reference.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, ref_vars)

    def ours_fn(v, a):
        return ours.apply(v, a)

    def ref_fn(v, a):
        return reference.apply({'params': v['params']['conv']}, a)

    y, vjp = jax.vjp(ours_fn, variables, x)
    y_ref, vjp_ref = jax.vjp(ref_fn, variables, x)
    _assert_close(y, y_ref, tol, 'value')
    cotangent = jnp.asarray(np.random.default_rng(4).standard_normal(y.shape), dtype)
    for a, e in zip(jax.tree.leaves(vjp(cotangent)), jax.tree.leaves(vjp_ref(cotangent))):
        _assert_close(a, e, tol, 'grad')


WINOGRAD_PADS = {'same': ((1, 1), (1, 1)), 'valid': ((0, 0), (0, 0)), 'asymmetric': ((0, 1), (1, 0)),
                 'wide': ((2, 2), (2, 1))}


def test_im2col_patches_are_the_taps_concatenated():
    """The block-wise patches equal the k² shifted taps concatenated in the kernel's (i, j, c) order,
    exactly, for kernels 1–7 and strides 1–3 on odd/even/non-square inputs with same, symmetric and
    asymmetric paddings (all cases in one traced program: one compile instead of hundreds of eager ops)."""
    rng = np.random.default_rng(0)
    cases, xs = [], []
    for k, strides in [(1, 1), (3, 1), (3, 2), (5, 2), (3, 3), (2, 2), (7, 2)]:
        for height, width in SIZES + [(11, 4)]:
            for padding in ('SAME', ((k // 2, k // 2),) * 2, ((0, 1), (2, 0))):
                pads = ops.explicit_padding(height, width, (k, k), strides, padding)
                if min(size + lo + hi - k for size, (lo, hi) in zip((height, width), pads)) < 0:
                    continue                                        # no output position
                cases.append((k, strides, pads, f'{height}x{width} k{k} s{strides} {padding}'))
                xs.append(jnp.asarray(rng.standard_normal((2, height, width, 3)), jnp.float32))

    def both(xs):
        results = []
        for (k, strides, pads, _), x in zip(cases, xs):
            xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
            taps = ops.taps(xp, (k, k), strides, ops.out_hw(x, (k, k), strides, pads))
            results.append((ops.im2col_patches(x, (k, k), strides, pads),
                            jnp.concatenate([tap for _, tap in taps], axis=-1)))
        return results

    assert len(cases) > 60
    for (_, _, _, what), (actual, expected) in zip(cases, jax.jit(both)(xs)):
        np.testing.assert_array_equal(actual, expected, what)


@pytest.mark.parametrize('shape,pads', [
    pytest.param(shape, pads, id=f'{"x".join(map(str, shape))}-{name}')
    for shape in [(2, 7, 7, 8), (2, 8, 8, 8), (1, 9, 6, 5), (1, 14, 14, 16), (3, 1, 2, 6)]
    for name, pads in WINOGRAD_PADS.items()
    if shape[1] + sum(pads[0]) >= 3 and shape[2] + sum(pads[1]) >= 3])   # at least one output pixel
def test_winograd_equals_lax(shape, pads):
    """F(2×2, 3×3) Winograd: values, input and kernel gradients equal `lax` (odd, even, non-square,
    single-row inputs; partial last tiles; every padding a 3×3 kernel can take)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 7)), jnp.float32)
    ref = lambda a, k: ops.lax_conv(a, k, 1, pads)  # noqa: E731
    cotangent = jnp.asarray(rng.standard_normal(ref(x, kernel).shape), jnp.float32)
    expected = _value_and_grads(ref, x, kernel, cotangent)
    actual = jax.jit(lambda a, k, c: _value_and_grads(lambda u, v: ops.winograd_conv(u, v, pads), a, k, c))(
        x, kernel, cotangent)
    for what, a, e in zip(('value', 'input grad', 'kernel grad'), actual, expected):
        _assert_close(a, e, F32_TOL, what)


def test_winograd_is_chosen_only_where_measured():
    """Dense 3×3 stride-1 float32 over > 4 channels on CPU takes Winograd; nothing else does."""
    same = ((1, 1), (1, 1))
    x, kernel = jnp.zeros((1, 8, 8, 12)), jnp.zeros((3, 3, 12, 16))
    applies = lambda x, kernel, strides, groups, pads: ops.winograd_applies(  # noqa: E731
        kernel.shape, strides, groups, pads, x.dtype)
    assert applies(x, kernel, 1, 1, same) == (jax.default_backend() == 'cpu')
    assert not applies(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 1, 1, same)
    assert not applies(x, kernel, 2, 1, same)
    wide = jnp.zeros((1, 8, 8, 24))                 # grouped: 8 input channels per group, else eligible
    assert applies(wide, jnp.zeros((3, 3, 24, 16)), 1, 1, same) == (jax.default_backend() == 'cpu')
    assert not applies(wide, jnp.zeros((3, 3, 8, 16)), 1, 3, same)
    assert not applies(x[..., :3], kernel[:, :, :3], 1, 1, same)
    assert not applies(x, jnp.zeros((5, 5, 12, 16)), 1, 1, ((2, 2), (2, 2)))
    assert not applies(x, kernel, 1, 1, ((3, 3), (1, 1)))
    assert ops.winograd_applies(kernel.shape, 1, 1, same, jnp.float32, backend='cpu')
    assert not ops.winograd_applies(kernel.shape, 1, 1, same, jnp.float32, backend='gpu')
    # The backend, dtype and stem rules are the policy's.
    everywhere = dataclasses.replace(ops.DEFAULT_POLICY, winograd_backends=('cpu', 'gpu'),
                                     winograd_dtypes=('float32', 'bfloat16'), im2col_max_input_channels=2)
    assert ops.winograd_applies(kernel.shape, 1, 1, same, jnp.float32, backend='gpu', policy=everywhere)
    assert ops.winograd_applies(kernel.shape, 1, 1, same, jnp.bfloat16, backend='cpu', policy=everywhere)
    assert ops.winograd_applies((3, 3, 3, 16), 1, 1, same, jnp.float32, backend='cpu', policy=everywhere)


POOL_CASES = list(itertools.product(SIZES, (2, 3), (1, 2), ('SAME', ((1, 1), (1, 1)), ((0, 1), (1, 0)))))


def test_xla_average_pool_equals_flax_padded_average_pool():
    """The 'xla' average pool (explicit zero pad, then a VALID window: the form TFLite maps to PAD +
    AVERAGE_POOL_2D) equals flax's pool over the same padding, which counts the padded zeros."""
    import flax.linen as nn
    rng = np.random.default_rng(0)
    for (height, width), window, strides, padding in POOL_CASES:
        x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
        expected = nn.avg_pool(x, (window, window), (strides, strides), padding=padding)
        actual = layers.avg_pool(x, window, strides, padding, 'xla')
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6,
                                   err_msg=f'{height}x{width} k{window} s{strides} {padding}')


def _pool_values_and_grads(pool, impl, xs, cotangents):
    results = []
    for (_, window, strides, padding), x, cotangent in zip(POOL_CASES, xs, cotangents):
        y, vjp = jax.vjp(lambda a: pool(a, window, strides, padding, impl), x)
        results.append((y,) + vjp(cotangent))
    return results


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['f32', 'bf16'])
def test_pools_equal_flax(dtype):
    """Max pooling: values and gradients exactly equal, ties included (the inputs are ReLU'd small
    integers, so most windows hold several equal maxima, and the integer cotangents sum exactly): each
    gradient must reach the window's first maximum, as `select_and_scatter` does. Average pooling:
    values and gradients within the depthwise tolerances."""
    rng = np.random.default_rng(0)
    xs, cotangents = [], []
    for (height, width), window, strides, padding in POOL_CASES:
        xs.append(jnp.asarray(np.maximum(rng.integers(-2, 3, (2, height, width, 5)), 0), dtype))
        out_shape = jax.eval_shape(lambda a: layers.max_pool(a, window, strides, padding, 'xla'), xs[-1]).shape
        cotangents.append(jnp.asarray(rng.integers(-3, 4, out_shape), dtype))
    for pool, exact in ((layers.max_pool, True), (layers.avg_pool, False)):
        expected = jax.jit(lambda *a: _pool_values_and_grads(pool, 'xla', *a))(xs, cotangents)
        for impl in IMPLS:
            actual = jax.jit(lambda *a: _pool_values_and_grads(pool, impl, *a))(xs, cotangents)
            for ((height, width), window, strides, padding), act, exp in zip(POOL_CASES, actual, expected):
                for name, a, e in zip(('value', 'grad x'), act, exp):
                    what = f'{pool.__name__} {impl} {name} {height}x{width} k{window} s{strides} {padding}'
                    assert a.dtype == e.dtype, what
                    if exact:
                        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(e, np.float32), what)
                    else:
                        _assert_close(a, e, F32_TOL if dtype == jnp.float32 else BF16_TOL, what)
    with pytest.raises(ValueError, match="depthwise_impl 'nope'"):
        layers.max_pool(xs[0], 3, 2, 'SAME', 'nope')


def test_shufflenet_same_numbers_under_every_impl():
    """A whole network in train mode (max and average pools, depthwise layers, BatchNorm statistics):
    logits and the gradient with respect to the images (which flows back through every layer) match
    'xla'. Measured: ~1e-5 of the scale. (At batch 2 and 32×48 the last stage normalizes over 4
    values and the two forms' rounding differs by 2e-4, with the pools taken by `lax` as well.)"""
    name = 'shufflenet_v1'
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 64, 3)), jnp.float32)
    results = {}
    for impl in ('xla', 'shifted'):
        model = mj.create_model(name, num_classes=10, alpha=0.5, depthwise_impl=impl)
        variables = mj.init_variables(model, seed=0, input_shape=images.shape)

        def loss(x):
            logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
            return jnp.sum(logits * jnp.arange(10.0)), logits

        results[impl] = jax.jit(jax.grad(loss, has_aux=True))(images)
    for what, actual, expected in zip(('image gradient', 'logits'), results['shifted'], results['xla']):
        _assert_close(actual, expected, 1e-4, f'{name} {what}')


def test_channel_shuffle_is_transpose():
    x = jnp.arange(2 * 12).reshape(1, 1, 2, 12)
    y = layers.channel_shuffle(x, 3)
    np.testing.assert_array_equal(y[0, 0, 0], np.arange(12).reshape(3, 4).T.reshape(-1))


def _abstract_variables(name, impl, **kwargs):
    return mj.abstract_variables(mj.create_model(name, depthwise_impl=impl, **kwargs), (1, 64, 64, 3))


@pytest.mark.parametrize('name,kwargs', [('mobilenet_v2', {}), ('mobilenet_v3_small', {}),
                                         ('shufflenet_v1', {'groups': 3}), ('cifar_mobilenet_v1', {})])
def test_parameter_tree_and_count_independent_of_impl(name, kwargs):
    trees = {impl: _abstract_variables(name, impl, **kwargs) for impl in ops.DEPTHWISE_IMPLS}
    shapes = {impl: jax.tree_util.tree_map_with_path(lambda p, a: (jax.tree_util.keystr(p), a.shape, a.dtype), t)
              for impl, t in trees.items()}
    reference = shapes['xla']
    for impl, tree in shapes.items():
        assert tree == reference, impl
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(trees['xla']['params']))
    assert count > 0
    # The 1×1 convolutions keep nn.Conv's parameter path <name>/conv/kernel.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees['xla']['params'])[0]]
    assert any(p.endswith("['conv']['kernel']") for p in paths)


def test_init_variables_identical_across_impls():
    values = {}
    for impl in ('xla', 'shifted', 'auto'):
        model = mj.create_model('cifar_mobilenet_v2', alpha=0.5, depthwise_impl=impl)
        values[impl] = mj.init_variables(model, seed=0, input_shape=(1, 16, 16, 3))
    for impl in ('shifted', 'auto'):
        for a, b in zip(jax.tree.leaves(values['xla']), jax.tree.leaves(values[impl])):
            np.testing.assert_array_equal(a, b)
