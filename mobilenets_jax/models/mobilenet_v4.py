"""MobileNetV4 (Qin et al. 2024): Universal Inverted Bottlenecks, Fused IB and Mobile MQA.

The five architectures are the block tables of tensorflow/models
`official/vision/modeling/backbones/mobilenet.py` (`MNV4ConvSmall_BLOCK_SPECS`, `_mnv4_conv_medium_block_specs`,
`MNV4ConvLarge_BLOCK_SPECS`, `_mnv4_hybrid_medium_block_specs`, `_mnv4_hybrid_large_block_specs`), one row per
block after the stem; timm's `_gen_mobilenet_v4` (`timm/models/mobilenetv3.py`) spells the same networks as
arch strings and builds them with `UniversalInvertedResidual`, `EdgeResidual` and `MobileAttention`.

Widths follow timm (whose released weights and parameter counts this family is tested against):
every block's output channels and the 960-wide last conv are `make_divisible(c·α)`; expansion widths are
`make_divisible(input channels × ratio)`; the stem keeps 32 (24 for the large models) filters for α < 1
(timm's `fix_stem`) and is scaled for α ≥ 1; the 1280-wide head conv is never scaled; attention heads and
key/value sizes are not scaled. (TF's decoder differs at α ≠ 1 only: it scales the stem always and the head
conv for α > 1.)

The head is MobileNetV4's: last 1×1 conv–BN–act, global pool, 1×1 conv (no bias)–BN–act, dropout,
classifier. The hybrid models put layer scale (initialized at 1e-5) on every UIB and attention block.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenets_jax.models import layers
from mobilenets_jax.models.base import ZooModel

ModuleDef = Any


class ConvBN(NamedTuple):
    """k×k convolution–BN–activation, no shortcut (TF 'convbn', timm 'cn')."""
    kernel_size: int
    strides: int
    channels: int


class FusedIB(NamedTuple):
    """Fused inverted bottleneck (TF 'fused_ib', timm 'er'): k×k expansion conv–BN–act, 1×1 projection–BN."""
    kernel_size: int
    strides: int
    channels: int
    expansion: float


class UIB(NamedTuple):
    """Universal inverted bottleneck (TF 'uib', timm 'uir'); a kernel size of 0 leaves that depthwise out.

    An optional start depthwise (BN, no activation) before the 1×1 expansion, an optional middle depthwise
    (BN, activation) after it; the middle one carries the stride when present. The four variants:
    ExtraDW (both), IB (middle only: MobileNetV2's block), ConvNext-like (start only), FFN (neither).
    """
    start_kernel: int
    middle_kernel: int
    strides: int
    channels: int
    expansion: float

    @property
    def variant(self) -> str:
        return {(True, True): 'ExtraDW', (False, True): 'IB', (True, False): 'ConvNext',
                (False, False): 'FFN'}[(bool(self.start_kernel), bool(self.middle_kernel))]


class MQA(NamedTuple):
    """Mobile MQA block: BN, multi-query attention with `kv_strides`-downsampled keys and values, residual.

    Keeps its input width; value size = key size, as in every MobileNetV4 table.
    """
    num_heads: int
    key_dim: int
    kv_strides: int


Block = Union[ConvBN, FusedIB, UIB, MQA]


def _uibs(*rows) -> tuple:
    return tuple(UIB(*row) for row in rows)


# Rows after the stem, in the reference's order; comments give the map size at 224 input.
MOBILENET_V4_CONV_SMALL_BLOCKS = (
    ConvBN(3, 2, 32), ConvBN(1, 1, 32),                      # 56px
    ConvBN(3, 2, 96), ConvBN(1, 1, 64),                      # 28px
) + _uibs(
    (5, 5, 2, 96, 3.0),                                      # 14px, ExtraDW
    (0, 3, 1, 96, 2.0), (0, 3, 1, 96, 2.0), (0, 3, 1, 96, 2.0), (0, 3, 1, 96, 2.0),   # IB
    (3, 0, 1, 96, 4.0),                                      # ConvNext
    (3, 3, 2, 128, 6.0), (5, 5, 1, 128, 4.0),                # 7px, ExtraDW
    (0, 5, 1, 128, 4.0), (0, 5, 1, 128, 3.0), (0, 3, 1, 128, 4.0), (0, 3, 1, 128, 4.0),   # IB
)

MOBILENET_V4_CONV_MEDIUM_BLOCKS = (FusedIB(3, 2, 48, 4.0),) + _uibs(
    (3, 5, 2, 80, 4.0), (3, 3, 1, 80, 2.0),
    (3, 5, 2, 160, 6.0), (3, 3, 1, 160, 4.0), (3, 3, 1, 160, 4.0), (3, 5, 1, 160, 4.0), (3, 3, 1, 160, 4.0),
    (3, 0, 1, 160, 4.0), (0, 0, 1, 160, 2.0), (3, 0, 1, 160, 4.0),
    (5, 5, 2, 256, 6.0), (5, 5, 1, 256, 4.0), (3, 5, 1, 256, 4.0), (3, 5, 1, 256, 4.0), (0, 0, 1, 256, 4.0),
    (3, 0, 1, 256, 4.0), (3, 5, 1, 256, 2.0), (5, 5, 1, 256, 4.0), (0, 0, 1, 256, 4.0), (0, 0, 1, 256, 4.0),
    (5, 0, 1, 256, 2.0),
)

MOBILENET_V4_CONV_LARGE_BLOCKS = (FusedIB(3, 2, 48, 4.0),) + _uibs(
    (3, 5, 2, 96, 4.0), (3, 3, 1, 96, 4.0),
    (3, 5, 2, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 5, 1, 192, 4.0),
    (5, 3, 1, 192, 4.0), (5, 3, 1, 192, 4.0), (5, 3, 1, 192, 4.0), (5, 3, 1, 192, 4.0), (5, 3, 1, 192, 4.0),
    (3, 0, 1, 192, 4.0),
    (5, 5, 2, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 0, 1, 512, 4.0),
    (5, 3, 1, 512, 4.0), (5, 0, 1, 512, 4.0), (5, 0, 1, 512, 4.0), (5, 3, 1, 512, 4.0), (5, 5, 1, 512, 4.0),
    (5, 0, 1, 512, 4.0), (5, 0, 1, 512, 4.0), (5, 0, 1, 512, 4.0),
)

_MQA_MEDIUM_14PX = MQA(num_heads=4, key_dim=64, kv_strides=2)   # the reference's "mhsa_24px" at 384 input
_MQA_MEDIUM_7PX = MQA(num_heads=4, key_dim=64, kv_strides=1)
MOBILENET_V4_HYBRID_MEDIUM_BLOCKS = (FusedIB(3, 2, 48, 4.0),) + _uibs(
    (3, 5, 2, 80, 4.0), (3, 3, 1, 80, 2.0),
    (3, 5, 2, 160, 6.0), (0, 0, 1, 160, 2.0), (3, 3, 1, 160, 4.0), (3, 5, 1, 160, 4.0),
) + (
    _MQA_MEDIUM_14PX, UIB(3, 3, 1, 160, 4.0), _MQA_MEDIUM_14PX, UIB(3, 0, 1, 160, 4.0),
    _MQA_MEDIUM_14PX, UIB(3, 3, 1, 160, 4.0), _MQA_MEDIUM_14PX, UIB(3, 0, 1, 160, 4.0),
) + _uibs(
    (5, 5, 2, 256, 6.0), (5, 5, 1, 256, 4.0), (3, 5, 1, 256, 4.0), (3, 5, 1, 256, 4.0), (0, 0, 1, 256, 2.0),
    (3, 5, 1, 256, 2.0), (0, 0, 1, 256, 2.0), (0, 0, 1, 256, 4.0),
) + (
    _MQA_MEDIUM_7PX, UIB(3, 0, 1, 256, 4.0), _MQA_MEDIUM_7PX, UIB(5, 5, 1, 256, 4.0),
    _MQA_MEDIUM_7PX, UIB(5, 0, 1, 256, 4.0), _MQA_MEDIUM_7PX, UIB(5, 0, 1, 256, 4.0),
)

_MQA_LARGE_14PX = MQA(num_heads=8, key_dim=48, kv_strides=2)
_MQA_LARGE_7PX = MQA(num_heads=8, key_dim=64, kv_strides=1)
MOBILENET_V4_HYBRID_LARGE_BLOCKS = (FusedIB(3, 2, 48, 4.0),) + _uibs(
    (3, 5, 2, 96, 4.0), (3, 3, 1, 96, 4.0),
    (3, 5, 2, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 3, 1, 192, 4.0), (3, 5, 1, 192, 4.0),
    (5, 3, 1, 192, 4.0), (5, 3, 1, 192, 4.0),
) + (
    _MQA_LARGE_14PX, UIB(5, 3, 1, 192, 4.0), _MQA_LARGE_14PX, UIB(5, 3, 1, 192, 4.0),
    _MQA_LARGE_14PX, UIB(5, 3, 1, 192, 4.0), _MQA_LARGE_14PX, UIB(3, 0, 1, 192, 4.0),
) + _uibs(
    (5, 5, 2, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 5, 1, 512, 4.0), (5, 0, 1, 512, 4.0),
    (5, 3, 1, 512, 4.0), (5, 0, 1, 512, 4.0), (5, 0, 1, 512, 4.0), (5, 3, 1, 512, 4.0), (5, 5, 1, 512, 4.0),
) + (
    _MQA_LARGE_7PX, UIB(5, 0, 1, 512, 4.0), _MQA_LARGE_7PX, UIB(5, 0, 1, 512, 4.0),
    _MQA_LARGE_7PX, UIB(5, 0, 1, 512, 4.0), _MQA_LARGE_7PX, UIB(5, 0, 1, 512, 4.0),
)

MOBILENET_V4_LAST = 960
MOBILENET_V4_HEAD = 1280
LAYER_SCALE_INIT = 1e-5

# What each registry name fixes: blocks, stem width, activation, layer scale (hybrids only).
VARIANTS = {
    'conv_small': dict(blocks=MOBILENET_V4_CONV_SMALL_BLOCKS, stem_channels=32),
    'conv_medium': dict(blocks=MOBILENET_V4_CONV_MEDIUM_BLOCKS, stem_channels=32),
    'conv_large': dict(blocks=MOBILENET_V4_CONV_LARGE_BLOCKS, stem_channels=24),
    'hybrid_medium': dict(blocks=MOBILENET_V4_HYBRID_MEDIUM_BLOCKS, stem_channels=32,
                          layer_scale_init=LAYER_SCALE_INIT),
    'hybrid_large': dict(blocks=MOBILENET_V4_HYBRID_LARGE_BLOCKS, stem_channels=24, activation='gelu',
                         layer_scale_init=LAYER_SCALE_INIT),
}

# 'gelu' is the erf form, as torch.nn.GELU and TF's 'gelu' compute it (flax's nn.gelu defaults to the tanh
# form). 'gelu_tanh' is the tanh approximation: the int8 TFLite export traces it in place of 'gelu', since
# the converter fuses it into its GELU builtin (mobilenets_jax/export/formats.py, INT8_ACTIVATIONS).
ACTIVATIONS: dict[str, Callable] = {'relu': nn.relu, 'gelu': functools.partial(nn.gelu, approximate=False),
                                    'gelu_tanh': functools.partial(nn.gelu, approximate=True)}


def attention_mult_adds(height: int, width: int, num_heads: int, key_dim: int, value_dim: int,
                        kv_strides: int, batch: int = 1) -> int:
    """Mult-adds of the two attention products (queries·keys, weights·values) at one feature-map size.

    Their operands are activations, not parameters, so no convolution or dense layer accounts for them.
    Keys and values come from a SAME-padded strided conv: ceil(h / s) × ceil(w / s) positions.
    """
    queries = height * width
    keys = -(-height // kv_strides) * -(-width // kv_strides)
    return batch * queries * num_heads * keys * (key_dim + value_dim)


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (parameter `gamma`, initialized at `init_value`)."""
    init_value: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param('gamma', nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype)
        return x * jnp.asarray(gamma, self.dtype)


class FusedInvertedBottleneck(nn.Module):
    """k×k expansion conv (strided)–BN–act, 1×1 projection–BN; identity shortcut at stride 1, same width."""
    expanded_channels: int
    features: int
    kernel_size: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    activation: Callable

    @nn.compact
    def __call__(self, x):
        inputs = x
        x = self.conv(self.expanded_channels, kernel_size=self.kernel_size, strides=self.strides, name='expand')(x)
        x = self.activation(self.norm(name='expand_bn')(x))
        x = self.norm(name='project_bn')(self.conv(self.features, name='project')(x))
        if self.strides == 1 and inputs.shape[-1] == self.features:
            x = x + inputs
        return x


class UniversalInvertedBottleneck(nn.Module):
    """The UIB block (see `UIB`): [start depthwise–BN], 1×1 expand–BN–act, [middle depthwise–BN–act],
    1×1 project–BN, [layer scale]; identity shortcut at stride 1 when the width is kept.

    The stride sits on the middle depthwise, or on the start one when there is no middle one.
    """
    start_kernel: int
    middle_kernel: int
    strides: int
    expanded_channels: int
    features: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    activation: Callable
    layer_scale_init: Optional[float] = None

    @nn.compact
    def __call__(self, x):
        if self.strides > 1 and not (self.start_kernel or self.middle_kernel):
            raise ValueError(f'a strided UIB needs a depthwise conv (start_kernel={self.start_kernel}, '
                             f'middle_kernel={self.middle_kernel}, strides={self.strides})')
        inputs = x
        if self.start_kernel:
            start_strides = 1 if self.middle_kernel else self.strides
            x = self.depthwise(kernel_size=self.start_kernel, strides=start_strides, name='start_depthwise')(x)
            x = self.norm(name='start_depthwise_bn')(x)
        x = self.activation(self.norm(name='expand_bn')(self.conv(self.expanded_channels, name='expand')(x)))
        if self.middle_kernel:
            x = self.depthwise(kernel_size=self.middle_kernel, strides=self.strides, name='middle_depthwise')(x)
            x = self.activation(self.norm(name='middle_depthwise_bn')(x))
        x = self.norm(name='project_bn')(self.conv(self.features, name='project')(x))
        if self.layer_scale_init is not None:
            x = LayerScale(self.layer_scale_init, dtype=x.dtype, name='layer_scale')(x)
        if self.strides == 1 and inputs.shape[-1] == self.features:
            x = x + inputs
        return x


class MultiQueryAttention(nn.Module):
    """Multi-query attention on a feature map: `num_heads` query heads share one key and one value head.

    Queries come from every position (1×1 conv to heads × key_dim); keys and values from the map
    downsampled by `kv_strides` (a strided depthwise conv–BN each, the paper's Mobile MQA), which divides
    the attention cost by about kv_strides². All projections are 1×1 convs without bias; the softmax runs in
    float32 whatever the compute dtype.
    """
    num_heads: int
    key_dim: int
    value_dim: int
    kv_strides: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    kv_kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        query = self.conv(self.num_heads * self.key_dim, name='query')(x)
        projected = {}
        for name, size in (('key', self.key_dim), ('value', self.value_dim)):
            source = x
            if self.kv_strides > 1:
                source = self.depthwise(kernel_size=self.kv_kernel_size, strides=self.kv_strides,
                                        name=f'{name}_depthwise')(source)
                source = self.norm(name=f'{name}_depthwise_bn')(source)
            projected[name] = self.conv(size, name=name)(source).reshape(batch, -1, size)
        query = query.reshape(batch, height * width, self.num_heads, self.key_dim)
        logits = jnp.einsum('blhk,bpk->blhp', query, projected['key']) * (self.key_dim ** -0.5)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
        out = jnp.einsum('blhp,bpv->blhv', weights, projected['value'])
        out = out.reshape(batch, height, width, self.num_heads * self.value_dim)
        return self.conv(channels, name='output')(out)


class MobileMQABlock(nn.Module):
    """BN, `MultiQueryAttention`, [layer scale], identity shortcut (the width never changes)."""
    num_heads: int
    key_dim: int
    kv_strides: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    layer_scale_init: Optional[float] = None

    @nn.compact
    def __call__(self, x):
        y = self.norm(name='input_bn')(x)
        y = MultiQueryAttention(self.num_heads, self.key_dim, self.key_dim, self.kv_strides, self.conv,
                                self.depthwise, self.norm, name='attention')(y)
        if self.layer_scale_init is not None:
            y = LayerScale(self.layer_scale_init, dtype=y.dtype, name='layer_scale')(y)
        return x + y


class MobileNetV4(ZooModel):
    """MobileNetV4; `blocks`, `stem_channels`, `activation` and `layer_scale_init` select the variant."""
    blocks: tuple = MOBILENET_V4_CONV_SMALL_BLOCKS
    stem_channels: int = 32
    activation: str = 'relu'
    layer_scale_init: Optional[float] = None

    def _block(self, block: Block, in_channels: int, name: str, conv, depthwise, norm, act) -> nn.Module:
        """The module of one table row, given the width of its input."""
        width = lambda c: layers.make_divisible(c * self.alpha)
        if isinstance(block, ConvBN):
            return layers.ConvNormAct(width(block.channels), block.kernel_size, block.strides, conv, norm, act, name=name)
        if isinstance(block, MQA):
            return MobileMQABlock(block.num_heads, block.key_dim, block.kv_strides, conv, depthwise, norm,
                                  self.layer_scale_init, name=name)
        expanded = layers.make_divisible(in_channels * block.expansion)
        if isinstance(block, FusedIB):
            return FusedInvertedBottleneck(expanded, width(block.channels), block.kernel_size, block.strides,
                                           conv, norm, act, name=name)
        if isinstance(block, UIB):
            return UniversalInvertedBottleneck(block.start_kernel, block.middle_kernel, block.strides, expanded,
                                               width(block.channels), conv, depthwise, norm, act,
                                               self.layer_scale_init, name=name)
        raise TypeError(f'unknown MobileNetV4 block {block!r}')

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'activation={self.activation!r}; allowed: {sorted(ACTIVATIONS)}')
        act = ACTIVATIONS[self.activation]
        width = lambda c: layers.make_divisible(c * self.alpha)

        stem = self.stem_channels if self.alpha < 1.0 else width(self.stem_channels)
        x = layers.ConvNormAct(stem, 3, 2, conv, norm, act, name='stem')(x)
        for index, block in enumerate(self.blocks, start=1):
            x = self._block(block, x.shape[-1], f'block_{index}', conv, depthwise, norm, act)(x)
        x = layers.ConvNormAct(width(MOBILENET_V4_LAST), 1, 1, conv, norm, act, name='last')(x)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        # MobileNetV4's head conv comes after the pooling (as in V3) but keeps a BatchNorm and has no bias.
        x = layers.ConvNormAct(MOBILENET_V4_HEAD, 1, 1, conv, norm, act, name='head')(x)
        return self.head(x.reshape(x.shape[0], -1), train, pool=False)
