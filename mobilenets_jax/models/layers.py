"""Building blocks shared by every family: padding, conv, depthwise conv, SE, activations, shuffle.

Every convolution in the zoo goes through `Conv2D` (dense or grouped) or `DepthwiseConv2D` so that
padding style, dtypes and the depthwise implementation are decided in one place. Depthwise layers are
always *named* with "depthwise" in their module path: the optimizer's weight-decay mask relies on it
(the MobileNet paper puts little or no decay on depthwise filters).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
PADDING_STYLES = ('same', 'symmetric')
DEPTHWISE_IMPLS = ('xla', 'shifted')


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


class Conv2D(nn.Module):
    """A square 2-D convolution (optionally grouped) with the zoo's padding convention."""
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
        return nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding=conv_padding(self.kernel_size, self.padding_style),
            feature_group_count=self.groups,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal'),
            name='conv',
        )(x)


def _shifted_depthwise(x, kernel, strides: int, padding):
    """Depthwise conv as k*k shifted multiply-adds (one per tap) instead of a grouped convolution.

    XLA:CPU lowers grouped convolutions with one group per channel poorly; a sum of strided slices
    times a per-channel weight vector is plain elementwise work that vectorizes well, and its autodiff
    is again slices and adds. Numerically it is the same sum as `lax.conv_general_dilated`.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    height, width = x.shape[1], x.shape[2]
    if padding == 'SAME':
        pads = []
        for size, k in ((height, kh), (width, kw)):
            out = -(-size // strides)
            total = max((out - 1) * strides + k - size, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = list(padding)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (x.shape[1] - kh) // strides + 1
    out_w = (x.shape[2] - kw) // strides + 1
    result = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(
                x, (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * strides + 1, j + (out_w - 1) * strides + 1, x.shape[3]),
                (1, strides, strides, 1))
            term = tap * kernel[i, j, 0]
            result = term if result is None else result + term
    return result


class DepthwiseConv2D(nn.Module):
    """k×k depthwise convolution (one filter per channel; kernel shape (k, k, 1, C) as in Flax/lax).

    `impl` selects how it is computed: 'xla' (a grouped `lax` convolution) or 'shifted' (k² shifted
    multiply-adds). Both own the same parameters (`kernel`, optional `bias`) and give the same numbers,
    so checkpoints are interchangeable.
    """
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = False
    padding_style: str = 'same'
    impl: str = 'xla'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.impl not in DEPTHWISE_IMPLS:
            raise ValueError(f'unknown depthwise_impl {self.impl!r}; allowed: {list(DEPTHWISE_IMPLS)}')
        channels = x.shape[-1]
        padding = conv_padding(self.kernel_size, self.padding_style)
        kernel = self.param(
            'kernel', nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal'),
            (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if self.impl == 'xla':
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.strides, self.strides), padding,
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels)
        else:
            y = _shifted_depthwise(x, kernel, self.strides, padding)
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return y


def batch_norm(train: bool, *, momentum: float, epsilon: float, dtype: Dtype, param_dtype: Dtype,
               axis_name: Optional[str]):
    """BatchNorm factory fixed once per model (TF defaults: momentum 0.99/0.999, epsilon 1e-3)."""
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum, epsilon=epsilon,
                             dtype=dtype, param_dtype=param_dtype, axis_name=axis_name)


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
