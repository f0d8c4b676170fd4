"""ShuffleNet V1 (Zhang et al. 2017) and ShuffleNet V2 (Ma et al. 2018).

Both: 3×3/s2 conv stem (24 filters), 3×3/s2 max-pool, three stages of 4, 8 and 4 units whose first
unit has stride 2, global pool, classifier.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from mobilenets_jax.models import layers
from mobilenets_jax.models.base import ZooModel

ModuleDef = Any

SHUFFLENET_STAGE_REPEATS = (4, 8, 4)
SHUFFLENET_STEM = 24

# ShuffleNet V1, Table 1: output channels of stages 2-4 at scale 1x for each number of groups g.
SHUFFLENET_V1_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
SHUFFLENET_V1_GROUPS = tuple(SHUFFLENET_V1_CHANNELS)
# The paper does not give the stem of its narrow variants; the authors' release uses 12 filters at
# 0.5x, and 12 (not 24 * 0.25 = 6) reproduces the paper's 13 MFLOPs for 0.25x.
SHUFFLENET_V1_MIN_STEM = 12



class ShuffleNetV2Widths(NamedTuple):
    """One column of ShuffleNet V2's Table 5: output channels of stages 2-4 and of conv5."""
    stage2: int
    stage3: int
    stage4: int
    conv5: int

    @property
    def stages(self) -> tuple:
        return (self.stage2, self.stage3, self.stage4)


SHUFFLENET_V2_CHANNELS = {
    0.5: ShuffleNetV2Widths(48, 96, 192, 1024),
    1.0: ShuffleNetV2Widths(116, 232, 464, 1024),
    1.5: ShuffleNetV2Widths(176, 352, 704, 1024),
    2.0: ShuffleNetV2Widths(244, 488, 976, 2048),
}


def _pool_padding(padding_style: str):
    return 'SAME' if padding_style == 'same' else ((1, 1), (1, 1))


class ShuffleV1Unit(nn.Module):
    """1×1 group conv–BN–ReLU, channel shuffle, 3×3 depthwise (stride)–BN, 1×1 group conv–BN.

    Stride 1: add the input, then ReLU. Stride 2: concatenate a 3×3/s2 average-pooled shortcut, so the
    branch produces only `features - input channels`. The pool is computed like the depthwise
    convolutions (`depthwise_impl`, see `layers.avg_pool`).
    """
    features: int
    strides: int
    groups: int
    first_conv_groups: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef
    padding_style: str = 'same'
    depthwise_impl: str = 'auto'

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        branch_channels = self.features - in_channels if self.strides == 2 else self.features
        bottleneck = self.features // 4
        y = self.conv(bottleneck, groups=self.first_conv_groups, name='compress')(x)
        y = nn.relu(self.norm(name='compress_bn')(y))
        y = layers.channel_shuffle(y, self.groups)
        y = self.depthwise(kernel_size=3, strides=self.strides, name='depthwise')(y)
        y = self.norm(name='depthwise_bn')(y)
        y = self.conv(branch_channels, groups=self.groups, name='expand')(y)
        y = self.norm(name='expand_bn')(y)
        if self.strides == 1:
            return nn.relu(y + x)
        shortcut = layers.avg_pool(x, 3, 2, _pool_padding(self.padding_style), self.depthwise_impl)
        return jnp.concatenate([shortcut, nn.relu(y)], axis=-1)


class ShuffleNetV1(ZooModel):
    """ShuffleNet V1 with g groups and scale α ("ShuffleNet α×").

    Stage widths are `make_divisible(c × α, 4g)` — each unit's bottleneck (a quarter of the width)
    must split into g groups; at 1×, 1.5× and 2× this reproduces the published widths exactly. The
    stem is `make_divisible(max(24α, 12), g)` (24 at 1×, 12 at 0.5× as in the authors' release). The
    first 1×1 conv of stage 2 is not grouped: its input has only 24 channels.
    """
    groups: int = 3
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        g = self.groups
        stem = layers.make_divisible(max(SHUFFLENET_STEM * self.alpha, SHUFFLENET_V1_MIN_STEM), g)
        x = conv(stem, kernel_size=3, strides=2, name='stem')(x)
        x = nn.relu(norm(name='stem_bn')(x))
        x = layers.max_pool(x, 3, 2, _pool_padding(self.padding_style), self.depthwise_impl)
        for stage, (channels, repeats) in enumerate(zip(SHUFFLENET_V1_CHANNELS[g], SHUFFLENET_STAGE_REPEATS)):
            features = layers.make_divisible(channels * self.alpha, 4 * g)
            for repeat in range(repeats):
                x = ShuffleV1Unit(
                    features=features, strides=2 if repeat == 0 else 1, groups=g,
                    first_conv_groups=1 if (stage == 0 and repeat == 0) else g, conv=conv, depthwise=depthwise,
                    norm=norm, padding_style=self.padding_style, depthwise_impl=self.depthwise_impl,
                    name=f'stage{stage + 2}_unit{repeat + 1}')(x)
        # The authors' released ShuffleNetV1 (megvii ShuffleNet-Series) has no classifier bias; its
        # published parameter counts depend on that.
        return self.head(x, train, use_bias=False)


class ShuffleV2Unit(nn.Module):
    """Stride 1: split channels in half, transform one half (1×1–BN–ReLU, 3×3 dw–BN, 1×1–BN–ReLU),
    concatenate, shuffle. Stride 2: both branches see the whole input and downsample (no split)."""
    features: int
    strides: int
    conv: ModuleDef
    depthwise: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        branch_channels = self.features // 2
        if self.strides == 1:
            shortcut, x = jnp.split(x, 2, axis=-1)
        else:
            shortcut = self.depthwise(kernel_size=3, strides=self.strides, name='shortcut_depthwise')(x)
            shortcut = self.norm(name='shortcut_depthwise_bn')(shortcut)
            shortcut = self.conv(branch_channels, name='shortcut_pointwise')(shortcut)
            shortcut = nn.relu(self.norm(name='shortcut_pointwise_bn')(shortcut))
        y = self.conv(branch_channels, name='compress')(x)
        y = nn.relu(self.norm(name='compress_bn')(y))
        y = self.depthwise(kernel_size=3, strides=self.strides, name='depthwise')(y)
        y = self.norm(name='depthwise_bn')(y)
        y = self.conv(branch_channels, name='expand')(y)
        y = nn.relu(self.norm(name='expand_bn')(y))
        return layers.channel_shuffle(jnp.concatenate([shortcut, y], axis=-1), 2)


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 at one of its four published scales α ∈ {0.5, 1, 1.5, 2} (Table 5)."""
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.check_input(x)
        conv, depthwise, norm = self.factories(train)
        widths = SHUFFLENET_V2_CHANNELS[float(self.alpha)]
        x = conv(SHUFFLENET_STEM, kernel_size=3, strides=2, name='stem')(x)
        x = nn.relu(norm(name='stem_bn')(x))
        x = layers.max_pool(x, 3, 2, _pool_padding(self.padding_style), self.depthwise_impl)
        for stage, (features, repeats) in enumerate(zip(widths.stages, SHUFFLENET_STAGE_REPEATS)):
            for repeat in range(repeats):
                x = ShuffleV2Unit(features, 2 if repeat == 0 else 1, conv, depthwise, norm,
                                  name=f'stage{stage + 2}_unit{repeat + 1}')(x)
        x = conv(widths.conv5, name='last_conv')(x)
        x = nn.relu(norm(name='last_bn')(x))
        return self.head(x, train)
