"""The Flax modules and small helpers every architecture is built from.

Every convolution in the zoo goes through `Conv2D` (dense or grouped) or `DepthwiseConv2D` so that
padding style, dtypes and the depthwise implementation are decided in one place; how each is computed
(matmul, im2col, Winograd, shifted taps) is `mobilenets_jax.ops`'s business. Depthwise layers are
always *named* with "depthwise" in their module path: the optimizer's weight-decay mask relies on it
(the MobileNet paper puts little or no decay on depthwise filters).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenets_jax import ops
from mobilenets_jax.ops import DEPTHWISE_IMPLS  # noqa: F401  (re-exported: what `DepthwiseConv2D.impl` takes)

Dtype = Any
PADDING_STYLES = ('same', 'symmetric')
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Rounds a channel count to a multiple of `divisor`, never dropping below 90% of `value`.

    This is the rounding of the TF-slim / Keras MobileNetV2 and V3 reference code; the published
    parameter counts depend on it exactly.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def hard_sigmoid(x):
    """relu6(x + 3) / 6, the piecewise-linear sigmoid of MobileNetV3."""
    return nn.relu6(x + 3.0) / 6.0


def hard_swish(x):
    """x * hard_sigmoid(x), MobileNetV3's cheap swish."""
    return x * hard_sigmoid(x)


def identity(x):
    return x


ACTIVATIONS: dict[str, Callable] = {
    'relu': nn.relu,
    'relu6': nn.relu6,
    'hard_swish': hard_swish,
    'hard_sigmoid': hard_sigmoid,
    'identity': identity,
}


def get_activation(name: Optional[str]) -> Callable:
    if name is None:
        return identity
    if name not in ACTIVATIONS:
        raise ValueError(f'unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}')
    return ACTIVATIONS[name]


def conv_padding(kernel_size: int, padding_style: str):
    """TensorFlow 'SAME' padding (what Keras/TF-slim checkpoints used) or PyTorch-style k//2 on each side.

    The two agree for stride 1 and for odd inputs; for stride 2 on an even input TF pads (0, 1) and
    PyTorch (1, 1), which shifts the sampling grid by one pixel. Weights must be run with the style
    they were trained with.
    """
    if padding_style == 'same':
        return 'SAME'
    if padding_style == 'symmetric':
        half = kernel_size // 2
        return ((half, half), (half, half))
    raise ValueError(f'unknown padding_style {padding_style!r}; allowed: {list(PADDING_STYLES)}')


class _ConvParams(nn.Module):
    """The parameters `nn.Conv(name='conv')` would create (same names, shapes, initializers), unapplied.

    Declaring them in a child named 'conv' keeps the parameter tree `<name>/conv/{kernel,bias}`, so
    checkpoints and parameter counts do not depend on how `Conv2D` computes the convolution.
    """
    kernel_shape: tuple
    use_bias: bool
    param_dtype: Dtype

    @nn.compact
    def __call__(self):
        kernel = self.param('kernel', _CONV_INIT, self.kernel_shape, self.param_dtype)
        bias = (self.param('bias', nn.initializers.zeros, self.kernel_shape[-1:], self.param_dtype)
                if self.use_bias else None)
        return kernel, bias


class Conv2D(nn.Module):
    """A square 2-D convolution (optionally grouped) with the zoo's padding convention.

    Parameters always live at `<name>/conv/kernel` (k, k, cin/groups, cout) and `<name>/conv/bias`,
    as `nn.Conv(name='conv')` creates them; `ops.conv2d` picks the form (matmul for 1×1, im2col for
    convolutions over few input channels, Winograd for float32 3×3 stride 1 on CPU, `lax` otherwise,
    with a GEMM kernel gradient when dense) with the same numbers.
    """
    features: int
    kernel_size: int = 1
    strides: int = 1
    groups: int = 1
    use_bias: bool = False
    padding_style: str = 'same'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        if in_channels % self.groups or self.features % self.groups:
            raise ValueError(f'channels ({in_channels} in, {self.features} out) must be divisible by '
                             f'groups={self.groups}')
        k = self.kernel_size
        kernel, bias = _ConvParams((k, k, in_channels // self.groups, self.features), self.use_bias,
                                   self.param_dtype, name='conv')()
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = ops.conv2d(x, kernel, self.strides, conv_padding(k, self.padding_style), self.groups)
        return y if bias is None else y + bias


class DepthwiseConv2D(nn.Module):
    """k×k depthwise convolution (one filter per channel; kernel shape (k, k, 1, C) as in Flax/lax).

    `impl` selects how it is computed (`ops.depthwise_conv`): 'xla' (a grouped `lax` convolution),
    'shifted' (k² shifted multiply-adds with a hand-written transposed backward pass),
    'shifted_autodiff' (the same forward differentiated by autodiff; kept as a reference) or 'auto'
    (per backend, `ops.KernelPolicy.auto_depthwise_impl`: 'shifted' on CPU, where XLA's grouped
    convolution is slow, 'xla' on GPU/TPU, whose convolution libraries handle depthwise natively).
    All own the same parameters (`kernel`, optional `bias`) and give the same numbers, so checkpoints
    are interchangeable. `python benchmarks/depthwise_layer.py` times the implementations.
    """
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = False
    padding_style: str = 'same'
    impl: str = 'auto'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ops.check_depthwise_impl(self.impl)     # a bad name fails before any parameter is made
        channels = x.shape[-1]
        padding = conv_padding(self.kernel_size, self.padding_style)
        kernel = self.param('kernel', _CONV_INIT, (self.kernel_size, self.kernel_size, 1, channels),
                            self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = ops.depthwise_conv(x, kernel, self.strides, padding, self.impl)
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return y


def max_pool(x, window: int, strides: int, padding, impl: str = 'auto'):
    """k×k max pooling (NHWC; 'SAME' or explicit padding, padded with −inf), by depthwise implementation.

    Pooling is a depthwise window op, so it follows the model's `depthwise_impl`: 'xla' is
    `nn.max_pool` (`lax.reduce_window`, whose gradient is `select_and_scatter`); the other names take
    `ops.shifted_max_pool` (same numbers, ties included).
    """
    if ops.check_depthwise_impl(impl) == 'xla':
        # keywords: jax2onnx replaces nn.max_pool with a keyword-only twin while it traces (export)
        return nn.max_pool(x, window_shape=(window, window), strides=(strides, strides), padding=padding)
    return ops.shifted_max_pool(x, window, strides, padding)


def avg_pool(x, window: int, strides: int, padding, impl: str = 'auto'):
    """k×k average pooling that counts the zero padding (as `nn.avg_pool` and PyTorch by default).

    'xla' is `nn.avg_pool` (`lax.reduce_window`) over the input zero-padded beforehand; the other
    implementations `ops.shifted_avg_pool`.
    """
    if ops.check_depthwise_impl(impl) == 'xla':
        # The padding is its own op and the window runs VALID: the same sums to rounding (the zeros are
        # counted either way), in the form the TFLite converter maps to PAD + AVERAGE_POOL_2D. A padded window
        # sum stays a StableHLO reduce_window there, which its int8 quantizer rejects (ShuffleNet V1).
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(x.shape[1:3], (window, window), (strides, strides), padding)
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
        return nn.avg_pool(x, window_shape=(window, window), strides=(strides, strides), padding='VALID')
    return ops.shifted_avg_pool(x, window, strides, padding)


BATCH_NORM_FORMS = ('folded', 'centered')


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with `nn.BatchNorm`'s parameters, statistics and update rule.

    Same variables (params `scale`, `bias`; batch_stats `mean`, `var`), the same fast variance
    E[x²] − E[x]² in float32, the same running-average update (not while initializing) and the same
    `axis_name` averaging of the batch statistics across devices. The difference is the form of the
    normalization: y = x·a + (bias − mean·a) with a = scale/sqrt(var + ε), per channel, where nn.BatchNorm
    computes (x − mean)·a + bias. Under autodiff the latter makes XLA:CPU write x − mean out as a second
    full activation for the backward pass; folded, the backward needs only x, which the convolution has
    already written. Which module XLA:CPU runs faster depends on the network (XLA's fusion of the
    backward pass differs), so each family picks one (`ZooModel.batch_norm_form`: 'folded' for this
    module, 'centered' for nn.BatchNorm).
    """
    use_running_average: bool = False
    momentum: float = 0.99          # nn.BatchNorm's defaults; the zoo passes TF's via `batch_norm`
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean, mean_of_squares = jnp.mean(x32, axes), jnp.mean(jax.lax.square(x32), axes)
            if self.axis_name is not None and not self.is_initializing():
                mean, mean_of_squares = jax.lax.pmean((mean, mean_of_squares), self.axis_name)
            var = jnp.maximum(mean_of_squares - mean * mean, 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
        gain = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        shift = bias.astype(jnp.float32) - mean * gain
        return (x * gain.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


def batch_norm(train: bool, *, momentum: float, epsilon: float, dtype: Dtype, param_dtype: Dtype,
               axis_name: Optional[str], form: str = 'folded'):
    """BatchNorm factory fixed once per model (TF defaults: momentum 0.99/0.999, epsilon 1e-3).

    `form` 'folded' is `BatchNorm`, 'centered' flax's nn.BatchNorm: the same variables and numbers.
    """
    if form not in BATCH_NORM_FORMS:
        raise ValueError(f'unknown batch_norm form {form!r}; allowed: {list(BATCH_NORM_FORMS)}')
    module = BatchNorm if form == 'folded' else nn.BatchNorm
    return functools.partial(module, use_running_average=not train, momentum=momentum, epsilon=epsilon,
                             dtype=dtype, param_dtype=param_dtype, axis_name=axis_name)


class ConvNormAct(nn.Module):
    """k×k conv–BN–activation: MobileNetV1's full-convolution baseline blocks, MobileNetV4's stem, 'convbn'
    rows and heads. `conv` and `norm` are the model's configured Conv2D and BatchNorm factories."""
    features: int
    kernel_size: int
    strides: int
    conv: Any
    norm: Any
    activation: Callable

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, kernel_size=self.kernel_size, strides=self.strides, name='conv')(x)
        return self.activation(self.norm(name='bn')(x))


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-and-excite: pool, 1×1 conv (bias) ReLU, 1×1 conv (bias), hard-sigmoid gate."""
    squeeze_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = Conv2D(self.squeeze_channels, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                       name='reduce')(scale)
        scale = nn.relu(scale)
        scale = Conv2D(channels, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                       name='expand')(scale)
        return x * hard_sigmoid(scale)




class Dropout(nn.Module):
    """Inverted dropout (`nn.Dropout` semantics, 'dropout' RNG stream) with `ops.dropout_keep_mask`."""
    rate: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = ops.dropout_keep_mask(self.make_rng('dropout'), x.shape, self.rate)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle: (…, g, c/g) → (…, c/g, g), so the next group conv sees every group."""
    if groups == 1:
        return x
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    x = jnp.swapaxes(x, -1, -2)
    return x.reshape(*lead, channels)


def check_images(x, *, model_name: str, min_size: int) -> None:
    """Shape checks that must fail with a clear message before any tracing of the network."""
    if getattr(x, 'ndim', None) != 4:
        shape = getattr(x, 'shape', None)
        raise ValueError(f'{model_name} expects a 4-D NHWC batch (batch, height, width, channels); '
                         f'got an input of shape {shape}')
    height, width = x.shape[1], x.shape[2]
    if height < min_size or width < min_size:
        raise ValueError(f'{model_name}: input {height}x{width} is too small for the network\'s strides; '
                         f'height and width must be >= {min_size}')


def global_average_pool(x):
    return jnp.mean(x, axis=(1, 2))


def classifier(x, num_classes: int, *, dtype, param_dtype, use_bias: bool = True, name: str = 'classifier'):
    return nn.Dense(num_classes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)(x)
