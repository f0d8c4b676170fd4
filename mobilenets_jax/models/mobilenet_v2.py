"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks.

Channel rounding follows the Keras/TF-slim reference exactly (it fixes the published parameter
counts): stem `make_divisible(32α)`, block outputs `make_divisible(int(cα))`, expansion `t × input`,
and the last 1×1 conv 1280 for α ≤ 1, `make_divisible(1280α)` above.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn

from mobilenets_jax.models import layers
from mobilenets_jax.models.base import ZooModel

ModuleDef = Any



class Stage(NamedTuple):
    """One row of Table 2: expansion t, output channels c, repeats n, stride s of the first repeat."""
    expansion: int
    channels: int
    repeats: int
    first_stride: int


MOBILENET_V2_STAGES = tuple(Stage(*row) for row in (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
))
MOBILENET_V2_STEM = 32
MOBILENET_V2_LAST = 1280


class InvertedResidual(nn.Module):
    """1×1 expand–BN–act (skipped when nothing is expanded), k×k depthwise–BN–act, optional SE,
    1×1 project–BN with no activation (the linear bottleneck); identity shortcut when the stride is 1
    and the input and output widths agree."""
    expanded_channels: int
    features: int
    strides: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    activation: Callable
    kernel_size: int = 3
    squeeze_channels: Optional[int] = None  # MobileNetV3's squeeze-and-excite width; None: no SE
    squeeze_excite: ModuleDef = layers.SqueezeExcite

    @nn.compact
    def __call__(self, x):
        inputs = x
        in_channels = x.shape[-1]
        if self.expanded_channels != in_channels:
            x = self.conv(self.expanded_channels, name='expand')(x)
            x = self.activation(self.norm(name='expand_bn')(x))
        x = self.depthwise(kernel_size=self.kernel_size, strides=self.strides, name='depthwise')(x)
        x = self.activation(self.norm(name='depthwise_bn')(x))
        if self.squeeze_channels is not None:
            x = self.squeeze_excite(self.squeeze_channels, name='se')(x)
        x = self.conv(self.features, name='project')(x)
        x = self.norm(name='project_bn')(x)
        if self.has_residual(in_channels):
            x = x + inputs
        return x

    def has_residual(self, in_channels: int) -> bool:
        return self.strides == 1 and in_channels == self.features


class MobileNetV2(ZooModel):
    """MobileNetV2 with width multiplier α at any resolution (ReLU6 throughout)."""
    stages: tuple = MOBILENET_V2_STAGES

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        act = nn.relu6

        x = conv(layers.make_divisible(MOBILENET_V2_STEM * self.alpha), kernel_size=3, strides=2, name='stem')(x)
        x = act(norm(name='stem_bn')(x))
        index = 0
        for stage in self.stages:
            features = layers.make_divisible(int(stage.channels * self.alpha))
            for repeat in range(stage.repeats):
                index += 1
                x = InvertedResidual(
                    expanded_channels=x.shape[-1] * stage.expansion, features=features,
                    strides=stage.first_stride if repeat == 0 else 1, conv=conv, depthwise=depthwise, norm=norm,
                    activation=act, name=f'block_{index}')(x)
        last = layers.make_divisible(MOBILENET_V2_LAST * self.alpha) if self.alpha > 1.0 else MOBILENET_V2_LAST
        x = conv(last, name='last_conv')(x)
        x = act(norm(name='last_bn')(x))
        return self.head(x, train)
