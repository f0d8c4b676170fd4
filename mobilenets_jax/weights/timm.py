"""timm `model.safetensors` files (the model hub's release format): mobilenetv1, v2, v3 and v4.

Reading needs `safetensors` only (`safetensors.numpy.load_file`); a timm `.pth`/`.bin` state dict is read
with torch. Key names come from timm's source (huggingface/pytorch-image-models):

* `timm/models/efficientnet.py` (`EfficientNet`, `_gen_mobilenet_v1`, `_gen_mobilenet_v2`) and
  `timm/models/mobilenetv3.py` (`MobileNetV3`, `_gen_mobilenet_v3`): `conv_stem`, `bn1`, then `blocks.S.I`
  (stage S, repeat I, as in each model's `arch_def`), then V1 nothing, V2 `conv_head` + `bn2`, V3 the last
  stage is a ConvBnAct block (`blocks.S.0.conv`, `.bn1`) followed by `conv_head` (1×1 conv with bias, no
  BN, after pooling); last `classifier` (Linear).
* `timm/models/_efficientnet_blocks.py`: DepthwiseSeparableConv = `conv_dw`, `bn1`, [`se.conv_reduce`,
  `se.conv_expand`], `conv_pw`, `bn2`; InvertedResidual = `conv_pw`, `bn1`, `conv_dw`, `bn2`, [`se`],
  `conv_pwl`, `bn3`.
* MobileNetV4 (`timm/models/mobilenetv3.py` `_gen_mobilenet_v4`: a `MobileNetV3` with `head_norm=True`,
  `head_bias=False`; blocks from `_efficientnet_blocks.py`, attention from `timm/layers/attention2d.py`):
  `conv_stem`, `bn1`, `blocks.S.I`, the 960-wide last conv as the ConvBnAct `blocks.4.0` (`conv`, `bn1`),
  then `conv_head` (1×1, no bias, after pooling), `norm_head`, `classifier`. Per block: ConvBnAct 'cn' =
  `conv`, `bn1`; EdgeResidual 'er' (our FusedIB) = `conv_exp`, `bn1`, `conv_pwl`, `bn2`;
  UniversalInvertedResidual 'uir' = `dw_start`, `pw_exp`, `dw_mid`, `pw_proj` (each a ConvNormAct: `.conv`,
  `.bn`) and `layer_scale.gamma` (LayerScale2d, hybrids only); MobileAttention 'mqa' = `norm`, then
  MultiQueryAttention2d `attn.query.proj`, `attn.key.[down_conv, norm,] proj`, `attn.value.[...]`,
  `attn.output.proj` (down_conv/norm only with KV stride 2), and `layer_scale.gamma`. The query's channels are
  head-major (`reshape(B, heads, key_dim, HW)`), as ours.

Options the models are built with in timm: BatchNorm2d's default ε 1e-5, padding `((stride - 1) +
(k - 1)) // 2` = k // 2 on each side for these strides (our 'symmetric'), ReLU6 in V1 and V2
(`resolve_act_layer(kwargs, 'relu6')`); MobileNetV4 ReLU, GELU (erf form) in hybrid-large, both fixed by
our variants, layer scale on the hybrids' UIB and attention blocks. Inputs differ per pretrained tag: the
`config.json` the hub stores beside `model.safetensors` holds `pretrained_cfg.mean`/`std`, which this reader
maps to our normalization ('imagenet': mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225); 'inception':
0.5/0.5, i.e. [-1, 1], the ra4 tags and mobilenetv4_conv_small_050; 'unit': 0/1, the miil tags). Without a
config.json the model's default tag's values are used (`default_normalization`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from mobilenets_jax.weights import state_dict
from mobilenets_jax.weights.keras import Converted
from mobilenets_jax.weights.state_dict import Entry

# Our (model, α) -> timm's model name, for every timm model with our layout (depth multiplier 1).
TIMM_NAMES = {('mobilenet_v1', 1.0): 'mobilenetv1_100', ('mobilenet_v1', 1.25): 'mobilenetv1_125',
              ('mobilenet_v2', 0.35): 'mobilenetv2_035', ('mobilenet_v2', 0.5): 'mobilenetv2_050',
              ('mobilenet_v2', 0.75): 'mobilenetv2_075', ('mobilenet_v2', 1.0): 'mobilenetv2_100',
              ('mobilenet_v2', 1.4): 'mobilenetv2_140',
              ('mobilenet_v3_large', 0.75): 'mobilenetv3_large_075',
              ('mobilenet_v3_large', 1.0): 'mobilenetv3_large_100',
              ('mobilenet_v3_small', 0.5): 'mobilenetv3_small_050',
              ('mobilenet_v3_small', 0.75): 'mobilenetv3_small_075',
              ('mobilenet_v3_small', 1.0): 'mobilenetv3_small_100',
              # MobileNetV4 (timm/models/mobilenetv3.py): _035, _075 are registered 'untrained' (no hub file);
              # the anti-aliased mobilenetv4_conv_aa_* / _conv_blur_* have pooling layers our model lacks.
              ('mobilenet_v4_conv_small', 0.35): 'mobilenetv4_conv_small_035',
              ('mobilenet_v4_conv_small', 0.5): 'mobilenetv4_conv_small_050',
              ('mobilenet_v4_conv_small', 1.0): 'mobilenetv4_conv_small',
              ('mobilenet_v4_conv_medium', 1.0): 'mobilenetv4_conv_medium',
              ('mobilenet_v4_conv_large', 1.0): 'mobilenetv4_conv_large',
              ('mobilenet_v4_hybrid_medium', 0.75): 'mobilenetv4_hybrid_medium_075',
              ('mobilenet_v4_hybrid_medium', 1.0): 'mobilenetv4_hybrid_medium',
              ('mobilenet_v4_hybrid_large', 0.75): 'mobilenetv4_hybrid_large_075',
              ('mobilenet_v4_hybrid_large', 1.0): 'mobilenetv4_hybrid_large'}
MOBILENET_V4 = ('mobilenet_v4_conv_small', 'mobilenet_v4_conv_medium', 'mobilenet_v4_conv_large',
                'mobilenet_v4_hybrid_medium', 'mobilenet_v4_hybrid_large')
MODELS = ('mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small') + MOBILENET_V4
# Blocks per stage of each arch_def (the stages before V3's final ConvBnAct stage).
STAGE_REPEATS = {'mobilenet_v1': (1, 2, 2, 6, 2), 'mobilenet_v2': (1, 2, 3, 4, 3, 3, 1),
                 'mobilenet_v3_large': (1, 2, 3, 4, 2, 3), 'mobilenet_v3_small': (1, 2, 3, 2, 3),
                 # _gen_mobilenet_v4's arch_def stages (repeats r expanded), each opening with its stride-2 block;
                 # stage 4 is the 960-wide 'cn' conv (our `last`).
                 'mobilenet_v4_conv_small': (2, 2, 6, 6), 'mobilenet_v4_conv_medium': (1, 2, 8, 11),
                 'mobilenet_v4_conv_large': (1, 2, 11, 13), 'mobilenet_v4_hybrid_medium': (1, 2, 12, 16),
                 'mobilenet_v4_hybrid_large': (1, 2, 15, 18)}
BUILD_OPTIONS = {'mobilenet_v1': dict(activation='relu6', bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v2': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v3_large': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v3_small': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 # MobileNetV4: nn.BatchNorm2d (resolve_bn_args without overrides), timm's default pad_type ''.
                 **{name: dict(bn_epsilon=1e-5, padding_style='symmetric') for name in MOBILENET_V4}}
# timm's default pretrained tag per model (the first in its default_cfgs): mobilenetv1_100.ra4_e3600_r224_in1k
# (mean = std = 0.5), mobilenetv2_100.ra_in1k, mobilenetv3_large_100.ra_in1k, mobilenetv3_small_100.lamb_in1k.
# MobileNetV4 (mobilenetv3.py default_cfgs): conv_small.e2400_r224_in1k, conv_medium.e500_r256_in1k,
# conv_large.e600_r384_in1k, hybrid_medium.e200_r256_in12k_ft_in1k, hybrid_large.ix_e600_r384_in1k and the
# untrained _075 hybrids use ImageNet mean/std; conv_small_050.e3000_r224_in1k and _035 use 0.5/0.5.
DEFAULT_NORMALIZATION = {'mobilenet_v1': 'inception', 'mobilenet_v2': 'imagenet', 'mobilenet_v3_large': 'imagenet',
                         'mobilenet_v3_small': 'imagenet', **{name: 'imagenet' for name in MOBILENET_V4}}
# Default tags whose normalization differs from their model's (by timm name).
DEFAULT_NORMALIZATION_OF_TIMM_NAME = {'mobilenetv4_conv_small_050': 'inception',
                                      'mobilenetv4_conv_small_035': 'inception'}
_MEAN_STD = {'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 'inception': ((0.5,) * 3, (0.5,) * 3),
             'unit': ((0.0,) * 3, (1.0,) * 3)}
_DEPTHWISE_SEPARABLE = {'depthwise': 'conv_dw', 'depthwise_bn': 'bn1', 'pointwise': 'conv_pw', 'pointwise_bn': 'bn2',
                        'project': 'conv_pw', 'project_bn': 'bn2'}
_INVERTED_RESIDUAL = {'expand': 'conv_pw', 'expand_bn': 'bn1', 'depthwise': 'conv_dw', 'depthwise_bn': 'bn2',
                      'project': 'conv_pwl', 'project_bn': 'bn3'}
_SQUEEZE_EXCITE = {'reduce': 'se.conv_reduce', 'expand': 'se.conv_expand'}
# MobileNetV4 blocks: our sub-layer path (after block_N) -> timm's name inside blocks.S.I, per block kind.
_MNV4_CONV_BN = {('conv',): 'conv', ('bn',): 'bn1'}
_MNV4_FUSED_IB = {('expand',): 'conv_exp', ('expand_bn',): 'bn1', ('project',): 'conv_pwl', ('project_bn',): 'bn2'}
_MNV4_UIB = {('start_depthwise',): 'dw_start.conv', ('start_depthwise_bn',): 'dw_start.bn',
             ('expand',): 'pw_exp.conv', ('expand_bn',): 'pw_exp.bn', ('middle_depthwise',): 'dw_mid.conv',
             ('middle_depthwise_bn',): 'dw_mid.bn', ('project',): 'pw_proj.conv', ('project_bn',): 'pw_proj.bn',
             ('layer_scale',): 'layer_scale'}
_MNV4_MQA = {('input_bn',): 'norm', ('attention', 'query'): 'attn.query.proj',
             ('attention', 'key_depthwise'): 'attn.key.down_conv', ('attention', 'key_depthwise_bn'): 'attn.key.norm',
             ('attention', 'key'): 'attn.key.proj', ('attention', 'value_depthwise'): 'attn.value.down_conv',
             ('attention', 'value_depthwise_bn'): 'attn.value.norm', ('attention', 'value'): 'attn.value.proj',
             ('attention', 'output'): 'attn.output.proj', ('layer_scale',): 'layer_scale'}


def block_position(model_name: str, number: int) -> str:
    """Our block_<number> (from 1) -> timm's 'blocks.S.I'."""
    index = number - 1
    for stage, repeats in enumerate(STAGE_REPEATS[model_name]):
        if index < repeats:
            return f'blocks.{stage}.{index}'
        index -= repeats
    raise ValueError(f'{model_name} has {sum(STAGE_REPEATS[model_name])} blocks in timm, not {number}')


def mobilenet_v4_key_table(layers, model_name: str) -> dict:
    """Our MobileNetV4 layer path -> timm key prefix; each block's kind comes from our stage table."""
    from mobilenets_jax.models import mobilenet_v4
    blocks = mobilenet_v4.VARIANTS[model_name[len('mobilenet_v4_'):]]['blocks']
    names = {mobilenet_v4.ConvBN: _MNV4_CONV_BN, mobilenet_v4.FusedIB: _MNV4_FUSED_IB, mobilenet_v4.UIB: _MNV4_UIB,
             mobilenet_v4.MQA: _MNV4_MQA}
    final_stage = f'blocks.{len(STAGE_REPEATS[model_name])}.0'
    fixed = {('stem', 'conv'): 'conv_stem', ('stem', 'bn'): 'bn1', ('last', 'conv'): f'{final_stage}.conv',
             ('last', 'bn'): f'{final_stage}.bn1', ('head', 'conv'): 'conv_head', ('head', 'bn'): 'norm_head',
             ('classifier',): 'classifier'}
    table = {}
    for layer in layers:
        number = state_dict.block_number(layer.path[0])
        if number is None:
            table[layer.path] = Entry(fixed[layer.path])
        else:
            inside = names[type(blocks[number - 1])][layer.path[1:]]
            table[layer.path] = Entry(f'{block_position(model_name, number)}.{inside}')
    return table


def key_table(layers, model_name: str) -> dict:
    """Our layer path -> timm key prefix (see the module docstring)."""
    if model_name in MOBILENET_V4:
        return mobilenet_v4_key_table(layers, model_name)
    final_stage = f'blocks.{len(STAGE_REPEATS[model_name])}.0'
    fixed = {('stem',): 'conv_stem', ('stem_bn',): 'bn1', ('classifier',): 'classifier',
             ('head_conv',): 'conv_head'}
    if model_name.startswith('mobilenet_v3'):
        fixed.update({('last_conv',): f'{final_stage}.conv', ('last_bn',): f'{final_stage}.bn1'})
    else:
        fixed.update({('last_conv',): 'conv_head', ('last_bn',): 'bn2'})
    expanded = {layer.path[0] for layer in layers if len(layer.path) > 1 and layer.path[1] == 'expand'}
    table = {}
    for layer in layers:
        number = state_dict.block_number(layer.path[0])
        if number is None:
            table[layer.path] = Entry(fixed[layer.path])
            continue
        block = block_position(model_name, number)
        if layer.path[1] == 'se':
            table[layer.path] = Entry(f'{block}.{_SQUEEZE_EXCITE[layer.path[2]]}')
        else:
            names = _INVERTED_RESIDUAL if layer.path[0] in expanded else _DEPTHWISE_SEPARABLE
            table[layer.path] = Entry(f'{block}.{names[layer.path[1]]}')
    return table


def read_state_dict(path: str) -> dict:
    """name -> NumPy array: `.safetensors` with safetensors' NumPy API, anything else with torch.load."""
    if path.endswith('.safetensors'):
        try:
            from safetensors.numpy import load_file
        except ImportError as error:
            raise ImportError('reading .safetensors files needs safetensors (pip install "mobilenets_jax[timm]")') \
                from error
        return state_dict.as_float32(load_file(path))
    from mobilenets_jax.weights import torchvision
    return torchvision.read_state_dict(path, source='timm')


def read_hub_config(path: str) -> Optional[dict]:
    """The hub's config.json beside the weights file (None when there is none)."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    if not os.path.exists(config_path):
        return None
    with open(config_path) as handle:
        return json.load(handle)


def default_normalization(model_name: str, alpha: float) -> str:
    """The input normalization of the timm model's default pretrained tag."""
    timm_name = TIMM_NAMES.get((model_name, alpha))
    return DEFAULT_NORMALIZATION_OF_TIMM_NAME.get(timm_name, DEFAULT_NORMALIZATION[model_name])


def normalization_of(config: Optional[dict], model_name: str, path: str, alpha: float = 1.0) -> str:
    """Our normalization name for the config's pretrained_cfg mean/std (the model's default without one)."""
    if config is None or 'pretrained_cfg' not in config:
        return default_normalization(model_name, alpha)
    cfg = config['pretrained_cfg']
    mean_std = (tuple(float(v) for v in cfg.get('mean', ())), tuple(float(v) for v in cfg.get('std', ())))
    for name, (mean, std) in _MEAN_STD.items():
        if all(abs(a - b) < 1e-6 for a, b in zip(mean_std[0] + mean_std[1], mean + std)) and len(mean_std[0]) == 3:
            return name
    raise ValueError(f'{path}: config.json has mean {mean_std[0]} std {mean_std[1]}, which is none of our input '
                     f'normalizations ({", ".join(f"{n}: mean {m} std {s}" for n, (m, s) in _MEAN_STD.items())})')


_layout, _released_shapes = state_dict.source_layouts(BUILD_OPTIONS, key_table)


def file_stage_repeats(state: dict) -> tuple:
    """Blocks per stage in the file, read from its 'blocks.S.I...' keys."""
    stages: dict = {}
    for key in state:
        parts = key.split('.')
        if len(parts) > 3 and parts[0] == 'blocks' and parts[1].isdigit() and parts[2].isdigit():
            stages.setdefault(int(parts[1]), set()).add(int(parts[2]))
    return tuple(len(stages[stage]) for stage in sorted(stages))


def guess_model(state: dict) -> list:
    """The timm (model, α) whose every key and shape the file has (error path only). Only models whose
    stages have the file's block counts are built (each layout costs an abstract initialization)."""
    num_classes = state_dict.classifier_width(state, 'classifier.bias')
    repeats = file_stage_repeats(state)
    candidates = [(name, alpha, num_classes) for name, alpha in TIMM_NAMES
                  if repeats[:len(STAGE_REPEATS[name])] == STAGE_REPEATS[name]]
    return state_dict.guess_layouts(state, candidates, _released_shapes)


def _why(model_name: str, alpha: float, state: dict) -> str:
    matches = guess_model(state)
    if matches:
        listed = ' or '.join(f'model={name} alpha={a} ({TIMM_NAMES[(name, a)]})' for name, a in matches)
        what = 'alpha' if any(name == model_name for name, _ in matches) else 'model'
        return f'probably the {what} differs: the file has the layout of timm {listed}'
    return (f'the file matches no timm layout we support ({", ".join(TIMM_NAMES.values())}); its keys look like '
            f'{state_dict.describe_source(state)}: another source, a depth-scaled model (110d, 120d, 150d), '
            f'a head-conv variant (mobilenetv1_100h), an anti-aliased MobileNetV4 (mobilenetv4_conv_aa_*, '
            f'mobilenetv4_conv_blur_*), or a modified model')


def _check_architecture(config: Optional[dict], model_name: str, alpha: float, path: str) -> None:
    """config.json names the timm architecture: refuse another one before reading shapes."""
    architecture = (config or {}).get('architecture')
    expected = TIMM_NAMES.get((model_name, alpha))
    if architecture and expected and architecture != expected:
        ours = [f'model={m} alpha={a}' for (m, a), name in TIMM_NAMES.items() if name == architecture]
        hint = f' ({ours[0]} here)' if ours else ' (not one we support)'
        raise ValueError(f'{path}: config.json says architecture {architecture!r}{hint}; model={model_name} '
                         f'alpha={alpha} is timm\'s {expected!r}')


def load(path: str, *, model: str, alpha: float = 1.0, num_classes: Optional[int] = None,
         **options: Any) -> Converted:
    """Reads a timm `model.safetensors` (or `.pth`) into our `model` at width `alpha`.

    `num_classes` defaults to the file's classifier width; `options` go to `create_model` and override the
    timm build options (`BUILD_OPTIONS`). The input normalization comes from config.json beside the file.
    """
    if model not in MODELS:
        raise ValueError(f'model={model!r}: timm weights are read for '
                         f'{", ".join(f"{ours} alpha={a} ({theirs})" for (ours, a), theirs in TIMM_NAMES.items())}')
    alpha = float(alpha)
    config = read_hub_config(path)
    _check_architecture(config, model, alpha, path)
    normalization = normalization_of(config, model, path, alpha)
    state = read_state_dict(path)
    if num_classes is None:
        num_classes = state_dict.classifier_width(state, 'classifier.bias')
        if num_classes is None:
            raise ValueError(f'{path}: no classifier.bias tensor (a timm model built with num_classes=0?); '
                             f'{_why(model, alpha, state)}')
    module, layers = _layout(model, alpha, num_classes, options)
    variables = state_dict.convert(state, layers, key_table(layers, model),
                                   what=f'{path} does not fit timm {model} alpha={alpha}',
                                   why=lambda: _why(model, alpha, state))
    import jax
    import jax.numpy as jnp
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    mean, std = _MEAN_STD[normalization]
    origin = 'config.json' if config and 'pretrained_cfg' in config else 'the default tag'
    notes = (f'timm pretrained_cfg mean {mean} std {std} ({origin}): '
             f'normalization={normalization}')
    return Converted(module, variables, model, alpha, num_classes, normalization, notes)
