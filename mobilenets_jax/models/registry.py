"""The model registry: one entry per architecture name, and `create_model` with its argument checks.

All argument errors are raised here, eagerly, before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax.numpy as jnp

from mobilenets_jax.models import layers, mobilenet_v1, mobilenet_v2, mobilenet_v3, mobilenet_v4, shufflenet
from mobilenets_jax.models.base import ZooModel


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a name means: the module class, the attributes the name fixes, and what may vary."""
    name: str
    module: type
    fixed: dict
    base_resolution: int             # ρ = image size / base_resolution
    default_num_classes: int
    published_alphas: tuple          # the α values of the published grid (flops.py --all)
    published_resolutions: tuple
    allowed_alphas: Optional[tuple] = None   # None: any α > 0
    allowed_groups: Optional[tuple] = None   # None: the model has no groups argument
    default_groups: Optional[int] = None
    options: tuple = ()              # extra family-specific keyword options
    summary: str = ''

    @property
    def min_input_size(self) -> int:
        return self.module.min_input_size


_IMAGENET_RESOLUTIONS = (224, 192, 160, 128)
_SPECS = (
    ModelSpec('cifar_mobilenet_v1', mobilenet_v1.CifarMobileNet,
              dict(blocks=mobilenet_v1.CIFAR_MOBILENET_V1_BLOCKS), 32, 10,
              (0.5, 0.75, 0.8, 0.9, 1.0, 2.0), (32, 30, 28, 24, 20, 16),
              summary='CIFAR reproduction study, MobileNet v1 widths'),
    ModelSpec('cifar_mobilenet_v2', mobilenet_v1.CifarMobileNet,
              dict(blocks=mobilenet_v1.CIFAR_MOBILENET_V2_BLOCKS), 32, 10,
              (0.5, 0.75, 0.8, 0.9, 1.0, 2.0), (32, 30, 28, 24, 20, 16),
              summary='CIFAR reproduction study, MobileNet v2 widths'),
    ModelSpec('mobilenet_v1', mobilenet_v1.MobileNetV1, {}, 224, 1000,
              (1.0, 0.75, 0.5, 0.25), _IMAGENET_RESOLUTIONS, options=('activation',),
              summary='MobileNetV1, Table 1'),
    ModelSpec('mobilenet_v1_conv', mobilenet_v1.MobileNetV1, dict(block_type='conv'), 224, 1000,
              (1.0,), (224,), options=('activation',), summary='full-convolution baseline, Table 4'),
    ModelSpec('mobilenet_v1_shallow', mobilenet_v1.MobileNetV1,
              dict(blocks=mobilenet_v1.MOBILENET_V1_SHALLOW_BLOCKS), 224, 1000, (1.0,), (224,),
              options=('activation',), summary='shallow baseline, Table 5'),
    ModelSpec('mobilenet_v2', mobilenet_v2.MobileNetV2, {}, 224, 1000,
              (1.4, 1.3, 1.0, 0.75, 0.5, 0.35), (224, 192, 160, 128, 96), summary='MobileNetV2, Table 2'),
    ModelSpec('mobilenet_v3_large', mobilenet_v3.MobileNetV3,
              dict(blocks=mobilenet_v3.MOBILENET_V3_LARGE_BLOCKS, head_channels=mobilenet_v3.MOBILENET_V3_LARGE_HEAD),
              224, 1000, (1.0, 0.75), (224,), summary='MobileNetV3-Large, Table 1'),
    ModelSpec('mobilenet_v3_small', mobilenet_v3.MobileNetV3,
              dict(blocks=mobilenet_v3.MOBILENET_V3_SMALL_BLOCKS, head_channels=mobilenet_v3.MOBILENET_V3_SMALL_HEAD),
              224, 1000, (1.0, 0.75), (224,), summary='MobileNetV3-Small, Table 2'),
    ModelSpec('shufflenet_v1', shufflenet.ShuffleNetV1, {}, 224, 1000, (1.0, 0.5, 0.25), (224,),
              allowed_groups=shufflenet.SHUFFLENET_V1_GROUPS, default_groups=3,
              summary='ShuffleNet V1, Table 1 (groups 1, 2, 3, 4, 8)'),
    ModelSpec('shufflenet_v2', shufflenet.ShuffleNetV2, {}, 224, 1000, (0.5, 1.0, 1.5, 2.0), (224,),
              allowed_alphas=tuple(shufflenet.SHUFFLENET_V2_CHANNELS), summary='ShuffleNet V2, Table 5'),
    # MobileNetV4: published α are timm's variants; the resolution is the tensorflow/models recipe's training size.
    ModelSpec('mobilenet_v4_conv_small', mobilenet_v4.MobileNetV4, mobilenet_v4.VARIANTS['conv_small'], 224, 1000,
              (1.0, 0.5, 0.35), (224,), summary='MobileNetV4-Conv-S (UIB)'),
    ModelSpec('mobilenet_v4_conv_medium', mobilenet_v4.MobileNetV4, mobilenet_v4.VARIANTS['conv_medium'], 224,
              1000, (1.0,), (256,), summary='MobileNetV4-Conv-M (UIB, Fused IB)'),
    ModelSpec('mobilenet_v4_conv_large', mobilenet_v4.MobileNetV4, mobilenet_v4.VARIANTS['conv_large'], 224, 1000,
              (1.0,), (384,), summary='MobileNetV4-Conv-L (UIB, Fused IB)'),
    ModelSpec('mobilenet_v4_hybrid_medium', mobilenet_v4.MobileNetV4, mobilenet_v4.VARIANTS['hybrid_medium'], 224,
              1000, (1.0, 0.75), (256,), summary='MobileNetV4-Hybrid-M (UIB, Mobile MQA: attention products not in mult-adds)'),
    ModelSpec('mobilenet_v4_hybrid_large', mobilenet_v4.MobileNetV4, mobilenet_v4.VARIANTS['hybrid_large'], 224,
              1000, (1.0, 0.75), (384,), summary='MobileNetV4-Hybrid-L (UIB, Mobile MQA: attention products not in mult-adds; GELU)'),
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def list_models() -> list[str]:
    """All architecture names, sorted."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}; valid models: {", ".join(list_models())}')
    return MODELS[name]


def _as_dtype(value: Any, field: str):
    if isinstance(value, str):
        if value not in _DTYPES:
            raise ValueError(f'{field}={value!r} is not supported; allowed: {sorted(_DTYPES)}')
        return _DTYPES[value]
    return value


def check_alpha(spec: ModelSpec, alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f'alpha={alpha!r} for {spec.name}: the width multiplier must be a number > 0')
    if spec.allowed_alphas is not None and float(alpha) not in spec.allowed_alphas:
        raise ValueError(f'alpha={alpha!r} for {spec.name}: allowed values are '
                         f'{", ".join(str(a) for a in spec.allowed_alphas)} (the published scales)')
    return float(alpha)


def check_groups(spec: ModelSpec, groups: Any) -> Optional[int]:
    if spec.allowed_groups is None:
        if groups is not None:
            raise ValueError(f'groups={groups!r}: {spec.name} has no groups argument '
                             f'(only shufflenet_v1 takes groups)')
        return None
    if groups is None:
        return spec.default_groups
    if isinstance(groups, bool) or groups not in spec.allowed_groups:
        raise ValueError(f'groups={groups!r} for {spec.name}: allowed values are '
                         f'{", ".join(str(g) for g in spec.allowed_groups)}')
    return int(groups)


def check_image_size(name: str, height: int, width: Optional[int] = None) -> None:
    """Raises if an input of this size is too small for the model's strides (usable before any tracing)."""
    spec = get_spec(name)
    width = height if width is None else width
    if height < spec.min_input_size or width < spec.min_input_size:
        raise ValueError(f'image size {height}x{width} is too small for {name}: height and width must be >= '
                         f'{spec.min_input_size} (the product of its strides)')


def create_model(name: str, *, num_classes: Optional[int] = None, alpha: float = 1.0,
                 groups: Optional[int] = None, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 dropout_rate: Optional[float] = None, padding_style: str = 'same',
                 depthwise_impl: str = 'auto', bn_axis_name: Optional[str] = None,
                 bn_momentum: Optional[float] = None, bn_epsilon: Optional[float] = None,
                 **options) -> ZooModel:
    """Builds an architecture by name.

    Args:
      name: one of `list_models()`.
      num_classes: classifier size (default 1000; 10 for the CIFAR variants).
      alpha: width multiplier α (> 0; shufflenet_v2 takes only 0.5, 1, 1.5, 2).
      groups: group count of shufflenet_v1 (1, 2, 3, 4 or 8; default 3); must be None for other models.
      dtype: computation dtype (jnp dtype or 'float32'/'bfloat16'/'float16'); param_dtype: storage dtype.
      dropout_rate: dropout before the classifier; None keeps the family's default.
      padding_style: 'same' (TensorFlow) or 'symmetric' (PyTorch).
      depthwise_impl: 'auto' (default: 'shifted' on CPU, 'xla' on GPU/TPU), 'xla', 'shifted' or
        'shifted_autodiff' (see `layers.DepthwiseConv2D`); the parameters are the same.
      bn_axis_name: named mesh axis for synchronized batch statistics (None: per device).
      bn_momentum: BatchNorm running-average momentum; None keeps the family's TensorFlow default
        (0.99; 0.999 for V3). Short runs need less (e.g. 0.9) for the running statistics to forget
        their initial values.
      bn_epsilon: BatchNorm epsilon; None keeps the family's (TensorFlow's 1e-3). PyTorch-trained
        weights use 1e-5.
      **options: family options; MobileNetV1 takes `activation` ('relu' or 'relu6').

    Returns:
      A Flax module; call `init(key, images, train=False)` and `apply(variables, images, train=...)`.
    """
    spec = get_spec(name)
    alpha = check_alpha(spec, alpha)
    groups = check_groups(spec, groups)
    num_classes = spec.default_num_classes if num_classes is None else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'num_classes={num_classes!r}: must be an integer >= 1')
    if padding_style not in layers.PADDING_STYLES:
        raise ValueError(f'padding_style={padding_style!r}; allowed: {", ".join(layers.PADDING_STYLES)}')
    if depthwise_impl not in layers.DEPTHWISE_IMPLS:
        raise ValueError(f'depthwise_impl={depthwise_impl!r}; allowed: {", ".join(layers.DEPTHWISE_IMPLS)}')
    if bn_momentum is not None and not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f'bn_momentum={bn_momentum!r}: must be in [0, 1)')
    if bn_epsilon is not None and not bn_epsilon > 0:
        raise ValueError(f'bn_epsilon={bn_epsilon!r}: must be > 0')
    if dropout_rate is not None and not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f'dropout_rate={dropout_rate!r}: must be in [0, 1)')
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ', '.join(spec.options) if spec.options else 'none'
        raise ValueError(f'unknown option(s) {", ".join(unknown)} for {name}; family options allowed: {allowed}')
    if 'activation' in options and options['activation'] not in ('relu', 'relu6'):
        raise ValueError(f'activation={options["activation"]!r} for {name}; allowed: relu, relu6')

    kwargs = dict(spec.fixed, **options)
    kwargs.update(num_classes=num_classes, alpha=alpha, dtype=_as_dtype(dtype, 'dtype'),
                  param_dtype=_as_dtype(param_dtype, 'param_dtype'), padding_style=padding_style,
                  depthwise_impl=depthwise_impl, bn_axis_name=bn_axis_name)
    if groups is not None:
        kwargs['groups'] = groups
    if dropout_rate is not None:
        kwargs['dropout_rate'] = float(dropout_rate)
    if bn_momentum is not None:
        kwargs['bn_momentum'] = float(bn_momentum)
    if bn_epsilon is not None:
        kwargs['bn_epsilon'] = float(bn_epsilon)
    return spec.module(**kwargs)
