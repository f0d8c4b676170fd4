"""PyTorch mirrors of the zoo's networks, for side-by-side throughput measurements only.

Each mirror has the same layers, widths, BatchNorm placement, biases and parameter count as the JAX
model of the same name (the tables are imported from `mobilenets_jax.models`, so widths cannot drift;
`benchmarks/throughput.py` checks the parameter counts agree before timing). Padding is PyTorch's
symmetric k//2 (the zoo's 'symmetric' style), which has the same cost as TF 'SAME'.

PyTorch is an optional benchmark dependency, never a requirement of the package.
"""
from __future__ import annotations

import torch
from torch import nn

from mobilenets_jax.models import layers, mobilenet_v1, mobilenet_v2, mobilenet_v3, shufflenet

BN_EPS = 1e-3


def _conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU, bias=False, bn=True):
    mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)]
    if bn:
        mods.append(nn.BatchNorm2d(cout, eps=BN_EPS))
    if act is not None:
        mods.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish) else act())
    return nn.Sequential(*mods)


class Head(nn.Sequential):
    def __init__(self, cin, num_classes, dropout, bias=True):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(cin, num_classes, bias=bias))


def mobilenet_v1_torch(num_classes=1000, alpha=1.0, blocks=mobilenet_v1.MOBILENET_V1_BLOCKS, block_type='separable'):
    width = lambda c: int(c * alpha)
    mods = [_conv_bn(3, width(32), 3, 2)]
    cin = width(32)
    for features, stride in blocks:
        cout = width(features)
        if block_type == 'conv':
            mods.append(_conv_bn(cin, cout, 3, stride))
        else:
            mods += [_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout)]
        cin = cout
    return nn.Sequential(*mods, Head(cin, num_classes, 1e-3))


def cifar_mobilenet_torch(num_classes=10, alpha=1.0, blocks=mobilenet_v1.CIFAR_MOBILENET_V1_BLOCKS):
    cin = int(mobilenet_v1.CIFAR_STEM * alpha)
    mods = [nn.Conv2d(3, cin, 3, 1, 1, bias=True)]
    for features, stride in blocks:
        cout = int(features * alpha)
        mods += [_conv_bn(cin, cin, 3, stride, groups=cin, bias=True), _conv_bn(cin, cout, bias=True),
                 nn.Dropout(0.2)]
        cin = cout
    return nn.Sequential(*mods, Head(cin, num_classes, 0.2))


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, expanded, cout, stride, act, k=3, squeeze=None):
        super().__init__()
        mods = []
        if expanded != cin:
            mods.append(_conv_bn(cin, expanded, act=act))
        mods.append(_conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
        if squeeze is not None:
            mods.append(SqueezeExcite(expanded, squeeze))
        mods.append(_conv_bn(expanded, cout, act=None))
        self.body = nn.Sequential(*mods)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v2_torch(num_classes=1000, alpha=1.0):
    md = layers.make_divisible
    cin = md(mobilenet_v2.MOBILENET_V2_STEM * alpha)
    mods = [_conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in mobilenet_v2.MOBILENET_V2_STAGES:
        cout = md(int(c * alpha))
        for r in range(n):
            mods.append(InvertedResidual(cin, cin * t, cout, s if r == 0 else 1, nn.ReLU6))
            cin = cout
    last = md(mobilenet_v2.MOBILENET_V2_LAST * alpha) if alpha > 1.0 else mobilenet_v2.MOBILENET_V2_LAST
    mods.append(_conv_bn(cin, last, act=nn.ReLU6))
    return nn.Sequential(*mods, Head(last, num_classes, 0.2))


def mobilenet_v3_torch(num_classes=1000, alpha=1.0, large=True):
    md = layers.make_divisible
    blocks = mobilenet_v3.MOBILENET_V3_LARGE_BLOCKS if large else mobilenet_v3.MOBILENET_V3_SMALL_BLOCKS
    head = mobilenet_v3.MOBILENET_V3_LARGE_HEAD if large else mobilenet_v3.MOBILENET_V3_SMALL_HEAD
    acts = {'relu': nn.ReLU, 'hard_swish': nn.Hardswish}
    cin = mobilenet_v3.MOBILENET_V3_STEM
    mods = [_conv_bn(3, cin, 3, 2, act=nn.Hardswish)]
    for k, ratio, c, se, act, s in blocks:
        expanded = md(cin * ratio)
        cout = md(c * alpha)
        mods.append(InvertedResidual(cin, expanded, cout, s, acts[act], k, md(expanded / 4) if se else None))
        cin = cout
    last = md(cin * mobilenet_v3.MOBILENET_V3_LAST_EXPANSION)
    mods.append(_conv_bn(cin, last, act=nn.Hardswish))
    head = md(head * alpha) if alpha > 1.0 else head
    mods += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(last, head, 1, bias=True), nn.Hardswish(inplace=True),
             nn.Flatten(), nn.Dropout(0.2), nn.Linear(head, num_classes)]
    return nn.Sequential(*mods)


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    def __init__(self, cin, features, stride, groups, first_groups):
        super().__init__()
        branch = features - cin if stride == 2 else features
        bottleneck = features // 4
        self.groups, self.stride = groups, stride
        self.compress = _conv_bn(cin, bottleneck, groups=first_groups)
        self.depthwise = _conv_bn(bottleneck, bottleneck, 3, stride, groups=bottleneck, act=None)
        self.expand = _conv_bn(bottleneck, branch, groups=groups, act=None)

    def forward(self, x):
        y = self.expand(self.depthwise(channel_shuffle(self.compress(x), self.groups)))
        if self.stride == 1:
            return torch.relu(y + x)
        return torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), torch.relu(y)], 1)


def shufflenet_v1_torch(num_classes=1000, alpha=1.0, groups=3):
    md = layers.make_divisible
    cin = md(shufflenet.SHUFFLENET_STEM * alpha, groups)
    mods = [_conv_bn(3, cin, 3, 2), nn.MaxPool2d(3, 2, 1)]
    for stage, (c, repeats) in enumerate(zip(shufflenet.SHUFFLENET_V1_CHANNELS[groups],
                                             shufflenet.SHUFFLENET_STAGE_REPEATS)):
        features = md(c * alpha, 4 * groups)
        for r in range(repeats):
            mods.append(ShuffleV1Unit(cin, features, 2 if r == 0 else 1, groups,
                                      1 if stage == 0 and r == 0 else groups))
            cin = features
    return nn.Sequential(*mods, Head(cin, num_classes, 0.0, bias=False))


class ShuffleV2Unit(nn.Module):
    def __init__(self, cin, features, stride):
        super().__init__()
        half = features // 2
        self.stride = stride
        branch_in = cin if stride == 2 else cin // 2
        if stride == 2:
            self.shortcut = nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin, act=None), _conv_bn(cin, half))
        self.branch = nn.Sequential(_conv_bn(branch_in, half),
                                    _conv_bn(half, half, 3, stride, groups=half, act=None), _conv_bn(half, half))

    def forward(self, x):
        if self.stride == 1:
            shortcut, x = x.chunk(2, dim=1)
        else:
            shortcut = self.shortcut(x)
        return channel_shuffle(torch.cat([shortcut, self.branch(x)], 1), 2)


def shufflenet_v2_torch(num_classes=1000, alpha=1.0):
    *stages, last = shufflenet.SHUFFLENET_V2_CHANNELS[float(alpha)]
    cin = shufflenet.SHUFFLENET_STEM
    mods = [_conv_bn(3, cin, 3, 2), nn.MaxPool2d(3, 2, 1)]
    for features, repeats in zip(stages, shufflenet.SHUFFLENET_STAGE_REPEATS):
        for r in range(repeats):
            mods.append(ShuffleV2Unit(cin, features, 2 if r == 0 else 1))
            cin = features
    mods.append(_conv_bn(cin, last))
    return nn.Sequential(*mods, Head(last, num_classes, 0.0))


BUILDERS = {
    'mobilenet_v1': lambda **kw: mobilenet_v1_torch(**kw),
    'mobilenet_v1_conv': lambda **kw: mobilenet_v1_torch(block_type='conv', **kw),
    'mobilenet_v1_shallow': lambda **kw: mobilenet_v1_torch(blocks=mobilenet_v1.MOBILENET_V1_SHALLOW_BLOCKS, **kw),
    'cifar_mobilenet_v1': lambda **kw: cifar_mobilenet_torch(**kw),
    'cifar_mobilenet_v2': lambda **kw: cifar_mobilenet_torch(blocks=mobilenet_v1.CIFAR_MOBILENET_V2_BLOCKS, **kw),
    'mobilenet_v2': lambda **kw: mobilenet_v2_torch(**kw),
    'mobilenet_v3_large': lambda **kw: mobilenet_v3_torch(large=True, **kw),
    'mobilenet_v3_small': lambda **kw: mobilenet_v3_torch(large=False, **kw),
    'shufflenet_v1': lambda groups=3, **kw: shufflenet_v1_torch(groups=groups, **kw),
    'shufflenet_v2': lambda **kw: shufflenet_v2_torch(**kw),
}


def create_torch_model(name: str, num_classes: int, alpha: float = 1.0, groups=None) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f'no PyTorch mirror for {name!r}; available: {", ".join(sorted(BUILDERS))}')
    kwargs = dict(num_classes=num_classes, alpha=alpha)
    if groups is not None:
        kwargs['groups'] = groups
    return BUILDERS[name](**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
