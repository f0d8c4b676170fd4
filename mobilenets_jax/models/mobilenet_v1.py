"""MobileNetV1 (Howard et al. 2017), its full-convolution and shallow baselines, and the CIFAR variants.

Architecture tables are data: one `Block(features, strides)` per block. Channel counts are `int(c * alpha)`,
as in the paper and the Keras/TF-slim reference implementations.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn

from mobilenets_jax.models import layers
from mobilenets_jax.models.base import ZooModel

ModuleDef = Any


class Block(NamedTuple):
    """One block of a MobileNetV1-style table: its output channels (at α = 1) and the stride of its 3×3 layer."""
    features: int
    strides: int


# Table 1 of the paper: stem 3x3/s2 conv with 32 filters, then 13 depthwise-separable blocks.
# (The paper's table prints stride 2 for the last depthwise layer; the released models use 1.)
MOBILENET_V1_STEM = 32
MOBILENET_V1_BLOCKS = tuple(Block(*b) for b in (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
))
# Table 5: the shallow baseline drops the five 14x14x512 separable blocks.
MOBILENET_V1_SHALLOW_BLOCKS = tuple(b for i, b in enumerate(MOBILENET_V1_BLOCKS) if not 6 <= i <= 10)

# The CIFAR-10 reproduction study's two models: stem int(32*alpha) filters at stride 1, then 5 blocks.
CIFAR_STEM = 32
CIFAR_MOBILENET_V1_BLOCKS = tuple(Block(*b) for b in ((64, 1), (128, 1), (256, 2), (512, 2), (1024, 2)))
CIFAR_MOBILENET_V2_BLOCKS = tuple(Block(*b) for b in ((32, 1), (32, 1), (64, 2), (128, 2), (256, 2)))


class SeparableBlock(nn.Module):
    """3×3 depthwise conv–BN–act, then 1×1 pointwise conv–BN–act (no conv biases)."""
    features: int
    strides: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    activation: Callable

    @nn.compact
    def __call__(self, x):
        x = self.depthwise(kernel_size=3, strides=self.strides, name='depthwise')(x)
        x = self.activation(self.norm(name='depthwise_bn')(x))
        x = self.conv(self.features, name='pointwise')(x)
        return self.activation(self.norm(name='pointwise_bn')(x))


class MobileNetV1(ZooModel):
    """MobileNetV1 and its conv/shallow baselines (select with `block_type` and `blocks`).

    `activation` is 'relu' (the paper) or 'relu6' (the Keras/TF-slim releases).
    """
    blocks: tuple = MOBILENET_V1_BLOCKS
    block_type: str = 'separable'  # 'separable' | 'conv'
    activation: str = 'relu'
    dropout_rate: float = 1e-3     # TF-slim/Keras keep probability 0.999

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        act = layers.get_activation(self.activation)
        width = lambda c: int(c * self.alpha)

        x = conv(width(MOBILENET_V1_STEM), kernel_size=3, strides=2, name='stem')(x)
        x = act(norm(name='stem_bn')(x))
        for index, block in enumerate(self.blocks):
            if self.block_type == 'conv':
                # Table 4's baseline: one full 3×3 conv–BN–act in place of a depthwise-separable pair.
                x = layers.ConvNormAct(width(block.features), 3, block.strides, conv, norm, act,
                                       name=f'block_{index + 1}')(x)
            else:
                x = SeparableBlock(width(block.features), block.strides, conv, depthwise, norm, act,
                                   name=f'block_{index + 1}')(x)
        return self.head(x, train)


class CifarMobileNet(ZooModel):
    """The CIFAR-10 reproduction study's MobileNet v1/v2 (five separable blocks, conv biases, no stem BN).

    Each block: 3×3 depthwise conv (bias, stride s)–BN–ReLU–1×1 conv (bias, int(α·w))–BN–ReLU–dropout.
    `dropout_rate` is used both inside the blocks and before the classifier (0.2 in the study).
    """
    blocks: tuple = CIFAR_MOBILENET_V1_BLOCKS
    dropout_rate: float = 0.2
    min_input_size: ClassVar[int] = 8  # three stride-2 blocks
    batch_norm_form: ClassVar[str] = 'centered'  # nn.BatchNorm: 1.6–1.8× faster steps here (`layers.BatchNorm`)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        # The study's stem is a plain biased conv, with neither BatchNorm nor activation.
        x = conv(int(CIFAR_STEM * self.alpha), kernel_size=3, use_bias=True, name='stem')(x)
        for index, block in enumerate(self.blocks):
            name = f'block_{index + 1}'
            x = depthwise(kernel_size=3, strides=block.strides, use_bias=True, name=f'{name}_depthwise')(x)
            x = nn.relu(norm(name=f'{name}_depthwise_bn')(x))
            x = conv(int(block.features * self.alpha), use_bias=True, name=f'{name}_pointwise')(x)
            x = nn.relu(norm(name=f'{name}_pointwise_bn')(x))
            x = layers.Dropout(self.dropout_rate, deterministic=not train, name=f'{name}_dropout')(x)
        return self.head(x, train)
