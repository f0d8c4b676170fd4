"""timm `model.safetensors` files (the model hub's release format): mobilenetv1, mobilenetv2, mobilenetv3.

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

Options the models are built with in timm: BatchNorm2d's default ε 1e-5, padding `((stride - 1) +
(k - 1)) // 2` = k // 2 on each side for these strides (our 'symmetric'), ReLU6 in V1 and V2
(`resolve_act_layer(kwargs, 'relu6')`). Inputs differ per pretrained tag: the `config.json` the hub
stores beside `model.safetensors` holds `pretrained_cfg.mean`/`std`, which this reader maps to our
normalization ('imagenet': mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225); 'inception': 0.5/0.5,
i.e. [-1, 1], the ra4 tags; 'unit': 0/1, the miil tags). Without a config.json the model's default tag's
values are used (`DEFAULT_NORMALIZATION`).
"""
from __future__ import annotations

import functools
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
              ('mobilenet_v3_small', 1.0): 'mobilenetv3_small_100'}
MODELS = ('mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small')
# Blocks per stage of each arch_def (the stages before V3's final ConvBnAct stage).
STAGE_REPEATS = {'mobilenet_v1': (1, 2, 2, 6, 2), 'mobilenet_v2': (1, 2, 3, 4, 3, 3, 1),
                 'mobilenet_v3_large': (1, 2, 3, 4, 2, 3), 'mobilenet_v3_small': (1, 2, 3, 2, 3)}
BUILD_OPTIONS = {'mobilenet_v1': dict(activation='relu6', bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v2': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v3_large': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v3_small': dict(bn_epsilon=1e-5, padding_style='symmetric')}
# timm's default pretrained tag per model (the first in its default_cfgs): mobilenetv1_100.ra4_e3600_r224_in1k
# (mean = std = 0.5), mobilenetv2_100.ra_in1k, mobilenetv3_large_100.ra_in1k, mobilenetv3_small_100.lamb_in1k.
DEFAULT_NORMALIZATION = {'mobilenet_v1': 'inception', 'mobilenet_v2': 'imagenet', 'mobilenet_v3_large': 'imagenet',
                         'mobilenet_v3_small': 'imagenet'}
_MEAN_STD = {'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 'inception': ((0.5,) * 3, (0.5,) * 3),
             'unit': ((0.0,) * 3, (1.0,) * 3)}
_DEPTHWISE_SEPARABLE = {'depthwise': 'conv_dw', 'depthwise_bn': 'bn1', 'pointwise': 'conv_pw', 'pointwise_bn': 'bn2',
                        'project': 'conv_pw', 'project_bn': 'bn2'}
_INVERTED_RESIDUAL = {'expand': 'conv_pw', 'expand_bn': 'bn1', 'depthwise': 'conv_dw', 'depthwise_bn': 'bn2',
                      'project': 'conv_pwl', 'project_bn': 'bn3'}
_SQUEEZE_EXCITE = {'reduce': 'se.conv_reduce', 'expand': 'se.conv_expand'}


def block_position(model_name: str, number: int) -> str:
    """Our block_<number> (from 1) -> timm's 'blocks.S.I'."""
    index = number - 1
    for stage, repeats in enumerate(STAGE_REPEATS[model_name]):
        if index < repeats:
            return f'blocks.{stage}.{index}'
        index -= repeats
    raise ValueError(f'{model_name} has {sum(STAGE_REPEATS[model_name])} blocks in timm, not {number}')


def key_table(layers, model_name: str) -> dict:
    """Our layer path -> timm key prefix (see the module docstring)."""
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
    return torchvision.read_state_dict(path)


def read_hub_config(path: str) -> Optional[dict]:
    """The hub's config.json beside the weights file (None when there is none)."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    if not os.path.exists(config_path):
        return None
    with open(config_path) as handle:
        return json.load(handle)


def normalization_of(config: Optional[dict], model_name: str, path: str) -> str:
    """Our normalization name for the config's pretrained_cfg mean/std (the model's default without one)."""
    if config is None or 'pretrained_cfg' not in config:
        return DEFAULT_NORMALIZATION[model_name]
    cfg = config['pretrained_cfg']
    mean_std = (tuple(float(v) for v in cfg.get('mean', ())), tuple(float(v) for v in cfg.get('std', ())))
    for name, (mean, std) in _MEAN_STD.items():
        if all(abs(a - b) < 1e-6 for a, b in zip(mean_std[0] + mean_std[1], mean + std)) and len(mean_std[0]) == 3:
            return name
    raise ValueError(f'{path}: config.json has mean {mean_std[0]} std {mean_std[1]}, which is none of our input '
                     f'normalizations ({", ".join(f"{n}: mean {m} std {s}" for n, (m, s) in _MEAN_STD.items())})')


def _layout(model_name: str, alpha: float, num_classes: int, options: Optional[dict] = None):
    return state_dict.model_layers(model_name, alpha, num_classes, dict(BUILD_OPTIONS[model_name], **(options or {})))


@functools.cache
def _released_shapes(model_name: str, alpha: float, num_classes: int) -> dict:
    _, layers = _layout(model_name, alpha, num_classes)
    return state_dict.expected_shapes(layers, key_table(layers, model_name))


def guess_model(state: dict) -> list:
    """The timm (model, α) whose every key and shape the file has (error path only)."""
    num_classes = state_dict.classifier_width(state, 'classifier.bias')
    candidates = [(name, alpha, num_classes) for name, alpha in TIMM_NAMES]
    return state_dict.guess_layouts(state, candidates, _released_shapes)


def _why(model_name: str, alpha: float, state: dict) -> str:
    matches = guess_model(state)
    if matches:
        listed = ' or '.join(f'model={name} alpha={a} ({TIMM_NAMES[(name, a)]})' for name, a in matches)
        what = 'alpha' if any(name == model_name for name, _ in matches) else 'model'
        return f'probably the {what} differs: the file has the layout of timm {listed}'
    return (f'the file matches no timm layout we support ({", ".join(TIMM_NAMES.values())}); its keys look like '
            f'{state_dict.describe_source(state)}: another source, a depth-scaled model (110d, 120d, 150d), '
            f'a head-conv variant (mobilenetv1_100h), or a modified model')


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
    normalization = normalization_of(config, model, path)
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
    notes = (f'timm pretrained_cfg mean {mean} std {std} ({"config.json" if config else "the default tag"}): '
             f'normalization={normalization}')
    return Converted(module, variables, model, alpha, num_classes, normalization, notes)
