"""MobileNetV3 Large and Small (Howard et al. 2019), Tables 1 and 2.

Expansion is stored as a ratio of the block's input width (as TF-slim/Keras define it), so that
`make_divisible(input × ratio)` reproduces the paper's "exp size" column at α = 1 and the reference
implementations' widths at other α. The stem stays 16 filters (Keras), the last stage is the paper's
efficient one: 1×1 conv–BN–h-swish, pool, 1×1 conv (bias, no BN)–h-swish, dropout, classifier.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from mobilenets_jax.models import layers
from mobilenets_jax.models.base import ZooModel
from mobilenets_jax.models.mobilenet_v2 import InvertedResidual



class Block(NamedTuple):
    """One row of Tables 1-2; the paper's "exp size" is make_divisible(input channels × expansion)."""
    kernel_size: int
    expansion: float
    channels: int
    squeeze_excite: bool
    activation: str
    strides: int


MOBILENET_V3_LARGE_BLOCKS = tuple(Block(*row) for row in (
    (3, 1, 16, False, 'relu', 1),
    (3, 4, 24, False, 'relu', 2),        # exp 64
    (3, 3, 24, False, 'relu', 1),        # exp 72
    (5, 3, 40, True, 'relu', 2),         # exp 72
    (5, 3, 40, True, 'relu', 1),         # exp 120
    (5, 3, 40, True, 'relu', 1),         # exp 120
    (3, 6, 80, False, 'hard_swish', 2),  # exp 240
    (3, 2.5, 80, False, 'hard_swish', 1),  # exp 200
    (3, 2.3, 80, False, 'hard_swish', 1),  # exp 184
    (3, 2.3, 80, False, 'hard_swish', 1),  # exp 184
    (3, 6, 112, True, 'hard_swish', 1),  # exp 480
    (3, 6, 112, True, 'hard_swish', 1),  # exp 672
    (5, 6, 160, True, 'hard_swish', 2),  # exp 672
    (5, 6, 160, True, 'hard_swish', 1),  # exp 960
    (5, 6, 160, True, 'hard_swish', 1),  # exp 960
))
MOBILENET_V3_SMALL_BLOCKS = tuple(Block(*row) for row in (
    (3, 1, 16, True, 'relu', 2),             # exp 16
    (3, 72 / 16, 24, False, 'relu', 2),      # exp 72
    (3, 88 / 24, 24, False, 'relu', 1),      # exp 88
    (5, 4, 40, True, 'hard_swish', 2),       # exp 96
    (5, 6, 40, True, 'hard_swish', 1),       # exp 240
    (5, 6, 40, True, 'hard_swish', 1),       # exp 240
    (5, 3, 48, True, 'hard_swish', 1),       # exp 120
    (5, 3, 48, True, 'hard_swish', 1),       # exp 144
    (5, 6, 96, True, 'hard_swish', 2),       # exp 288
    (5, 6, 96, True, 'hard_swish', 1),       # exp 576
    (5, 6, 96, True, 'hard_swish', 1),       # exp 576
))
MOBILENET_V3_STEM = 16
MOBILENET_V3_LAST_EXPANSION = 6
MOBILENET_V3_LARGE_HEAD = 1280
MOBILENET_V3_SMALL_HEAD = 1024


class MobileNetV3(ZooModel):
    """MobileNetV3; `blocks` and `head_channels` select Large or Small."""
    blocks: tuple = MOBILENET_V3_LARGE_BLOCKS
    head_channels: int = MOBILENET_V3_LARGE_HEAD
    bn_momentum: float = 0.999  # the Keras/TF reference value for V3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        squeeze_excite = functools.partial(layers.SqueezeExcite, dtype=self.dtype, param_dtype=self.param_dtype)
        depth = lambda c: layers.make_divisible(c * self.alpha)

        x = conv(MOBILENET_V3_STEM, kernel_size=3, strides=2, name='stem')(x)
        x = layers.hard_swish(norm(name='stem_bn')(x))
        for index, block in enumerate(self.blocks):
            expanded = layers.make_divisible(x.shape[-1] * block.expansion)
            x = InvertedResidual(
                expanded_channels=expanded, features=depth(block.channels), strides=block.strides, conv=conv,
                depthwise=depthwise, norm=norm, activation=layers.get_activation(block.activation),
                kernel_size=block.kernel_size,
                squeeze_channels=layers.make_divisible(expanded / 4) if block.squeeze_excite else None,
                squeeze_excite=squeeze_excite,
                name=f'block_{index + 1}')(x)
        x = conv(layers.make_divisible(x.shape[-1] * MOBILENET_V3_LAST_EXPANSION), name='last_conv')(x)
        x = layers.hard_swish(norm(name='last_bn')(x))
        head = layers.make_divisible(self.head_channels * self.alpha) if self.alpha > 1.0 else self.head_channels
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        # The paper moves this 1x1 conv after the pooling (no BatchNorm, with bias) to save latency.
        x = layers.hard_swish(conv(head, use_bias=True, name='head_conv')(x))
        return self.head(x.reshape(x.shape[0], -1), train, pool=False)
