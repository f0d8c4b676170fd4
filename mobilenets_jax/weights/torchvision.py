"""torchvision state dicts (`.pth`): mobilenet_v2, mobilenet_v3_large/small, shufflenet_v2_x0_5 … x2_0.

Reading needs torch only (`torch.load(path, map_location='cpu', weights_only=True)`); torchvision itself
is not needed. The key tables below are derived from torchvision's source (pytorch/vision):

* `torchvision/models/mobilenetv2.py`: `features.0` = Conv2dNormActivation(3→32, s2) (`.0` conv, `.1` BN);
  `features.1 … 17` the inverted residuals, each `.conv` = [1×1 expand ConvNormAct if t ≠ 1], 3×3 dw
  ConvNormAct, 1×1 Conv2d, BatchNorm2d; `features.18` = 1×1 ConvNormAct → 1280; `classifier` =
  [Dropout, Linear]. BatchNorm2d's default ε 1e-5; ReLU6.
* `torchvision/models/mobilenetv3.py`: `features.0` stem ConvNormAct (h-swish); `features.1 … n` each
  `.block` = [expand ConvNormAct if expanded ≠ input], dw ConvNormAct, [SqueezeExcitation `fc1`, `fc2`
  (`torchvision/ops/misc.py`, gate Hardsigmoid)], project ConvNormAct; `features.n+1` the 1×1 ConvNormAct
  to 6× the last width; `classifier` = [Linear(960 → 1280), Hardswish, Dropout, Linear]. BatchNorm ε 0.001
  (`norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)`). Its first Linear is our `head_conv`,
  a 1×1 convolution with bias on the pooled 1×1 map: the same function, so no model option is needed.
* `torchvision/models/shufflenetv2.py`: `conv1` = [Conv2d 3×3/s2, BN, ReLU], max-pool 3×3/s2 pad 1,
  `stage2 … stage4` of InvertedResidual units (`branch1` = [dw 3×3, BN, 1×1, BN, ReLU] on stride 2 units;
  `branch2` = [1×1, BN, ReLU, dw 3×3, BN, 1×1, BN, ReLU]), `conv5` = [1×1, BN, ReLU], `fc`. BN ε 1e-5.

All convolutions pad k // 2 on each side (our padding_style='symmetric'). Inputs: torchvision's
`ImageClassification` preset normalizes with the ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225) (our 'imagenet' normalization). torchvision's V3 at width ≠ 1 scales the expansion
widths directly, so only its released α = 1 V3 models have our V3's layout.
"""
from __future__ import annotations

from typing import Any, Optional

from mobilenets_jax.weights import state_dict
from mobilenets_jax.weights.keras import Converted
from mobilenets_jax.weights.state_dict import Entry

# Our (model, α) -> torchvision's builder name, for every released torchvision file.
TORCHVISION_NAMES = {('mobilenet_v2', 1.0): 'mobilenet_v2', ('mobilenet_v3_large', 1.0): 'mobilenet_v3_large',
                     ('mobilenet_v3_small', 1.0): 'mobilenet_v3_small',
                     ('shufflenet_v2', 0.5): 'shufflenet_v2_x0_5', ('shufflenet_v2', 1.0): 'shufflenet_v2_x1_0',
                     ('shufflenet_v2', 1.5): 'shufflenet_v2_x1_5', ('shufflenet_v2', 2.0): 'shufflenet_v2_x2_0'}
MODELS = ('mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small', 'shufflenet_v2')
BUILD_OPTIONS = {'mobilenet_v2': dict(bn_epsilon=1e-5, padding_style='symmetric'),
                 'mobilenet_v3_large': dict(bn_epsilon=1e-3, padding_style='symmetric'),
                 'mobilenet_v3_small': dict(bn_epsilon=1e-3, padding_style='symmetric'),
                 'shufflenet_v2': dict(bn_epsilon=1e-5, padding_style='symmetric')}
NORMALIZATION = 'imagenet'
NOTES = ('torchvision ImageClassification preset: pixels / 255, then ImageNet mean (0.485, 0.456, 0.406) and '
         'std (0.229, 0.224, 0.225) (normalization=imagenet)')
CLASSIFIER_BIAS = {'mobilenet_v2': 'classifier.1.bias', 'mobilenet_v3_large': 'classifier.3.bias',
                   'mobilenet_v3_small': 'classifier.3.bias', 'shufflenet_v2': 'fc.bias'}

# Inside one of our inverted residuals: our child -> its position in torchvision's Sequential, in order.
_INVERTED_RESIDUAL_ORDER = ('expand', 'depthwise', 'se', 'project')
_SHUFFLE_UNIT = {'shortcut_depthwise': 'branch1.0', 'shortcut_depthwise_bn': 'branch1.1',
                 'shortcut_pointwise': 'branch1.2', 'shortcut_pointwise_bn': 'branch1.3',
                 'compress': 'branch2.0', 'compress_bn': 'branch2.1', 'depthwise': 'branch2.3',
                 'depthwise_bn': 'branch2.4', 'expand': 'branch2.5', 'expand_bn': 'branch2.6'}


def _block_children(layers) -> dict:
    """block number -> the set of its children that hold weights ('expand', 'depthwise', 'se', ...)."""
    children: dict = {}
    for layer in layers:
        number = state_dict.block_number(layer.path[0])
        if number is not None:
            children.setdefault(number, set()).add(layer.path[1].removesuffix('_bn'))
    return children


def _inverted_residual_entry(path: tuple, present: set, container: str, v2_layout: bool) -> Entry:
    """A layer inside features.k: V3's `.block` puts every part in a ConvNormAct (`.j.0` conv, `.j.1` BN);
    V2's `.conv` does too except its project conv and BN, which are two plain entries `.j`, `.j+1`."""
    parts = [part for part in _INVERTED_RESIDUAL_ORDER if part in present]
    child = path[1]
    part = child.removesuffix('_bn')
    index = parts.index(part)
    if part == 'se':
        return Entry(f'{container}.{index}.{"fc1" if path[2] == "reduce" else "fc2"}')
    if v2_layout and part == 'project':
        return Entry(f'{container}.{index + (1 if child.endswith("_bn") else 0)}')
    return Entry(f'{container}.{index}.{1 if child.endswith("_bn") else 0}')


def mobilenet_table(layers, model_name: str) -> dict:
    """Our MobileNetV2/V3 layer path -> torchvision key prefix (see the module docstring)."""
    children = _block_children(layers)
    last = max(children) + 1
    v2_layout = model_name == 'mobilenet_v2'
    fixed = {('stem',): Entry('features.0.0'), ('stem_bn',): Entry('features.0.1'),
             ('last_conv',): Entry(f'features.{last}.0'), ('last_bn',): Entry(f'features.{last}.1')}
    if v2_layout:
        fixed[('classifier',)] = Entry('classifier.1')
    else:
        fixed[('head_conv',)] = Entry('classifier.0', linear=True)
        fixed[('classifier',)] = Entry('classifier.3')
    table = {}
    for layer in layers:
        number = state_dict.block_number(layer.path[0])
        if number is None:
            table[layer.path] = fixed[layer.path]
        else:
            container = f'features.{number}.{"conv" if v2_layout else "block"}'
            table[layer.path] = _inverted_residual_entry(layer.path, children[number], container, v2_layout)
    return table


def shufflenet_table(layers) -> dict:
    """Our ShuffleNetV2 layer path -> torchvision key prefix: stage{s}_unit{u} is stage{s}.{u - 1}."""
    fixed = {('stem',): 'conv1.0', ('stem_bn',): 'conv1.1', ('last_conv',): 'conv5.0', ('last_bn',): 'conv5.1',
             ('classifier',): 'fc'}
    table = {}
    for layer in layers:
        if layer.path in fixed:
            table[layer.path] = Entry(fixed[layer.path])
        else:
            stage, unit = layer.path[0].split('_unit')
            table[layer.path] = Entry(f'{stage}.{int(unit) - 1}.{_SHUFFLE_UNIT[layer.path[1]]}')
    return table


def key_table(layers, model_name: str) -> dict:
    if model_name == 'shufflenet_v2':
        return shufflenet_table(layers)
    return mobilenet_table(layers, model_name)


def read_state_dict(path: str, source: str = 'torchvision') -> dict:
    """name -> NumPy array of a torch-saved plain state dict (how torchvision, and timm's `.pth`/`.bin`,
    release weights); `source` names the file's origin in the errors."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(f'reading {source} .pth files needs torch (pip install "mobilenets_jax[torch]")') from error
    loaded = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(loaded, dict) or not all(hasattr(v, 'numpy') for v in loaded.values()):
        raise ValueError(f'{path}: not a state dict of tensors (got {type(loaded).__name__}); {source} releases '
                         f'plain state dicts (torch.save(model.state_dict(), path))')
    return state_dict.as_float32({key: value.detach().cpu().numpy() for key, value in loaded.items()})


_layout, _released_shapes = state_dict.source_layouts(BUILD_OPTIONS, key_table)


def guess_model(state: dict) -> list:
    """The released torchvision (model, α) whose every key and shape the file has (error path only)."""
    candidates = [(name, alpha, state_dict.classifier_width(state, CLASSIFIER_BIAS[name]))
                  for name, alpha in TORCHVISION_NAMES]
    return state_dict.guess_layouts(state, candidates, _released_shapes)


def _why(model_name: str, alpha: float, state: dict) -> str:
    matches = guess_model(state)
    if matches:
        listed = ' or '.join(f'model={name} alpha={a} ({TORCHVISION_NAMES[(name, a)]})' for name, a in matches)
        what = 'alpha' if any(name == model_name for name, _ in matches) else 'model'
        return f'probably the {what} differs: the file has the layout of torchvision {listed}'
    return (f'the file matches no released torchvision layout ({", ".join(TORCHVISION_NAMES.values())}); its keys '
            f'look like {state_dict.describe_source(state)}: another source, another width, or a modified model')


def load(path: str, *, model: str, alpha: float = 1.0, num_classes: Optional[int] = None,
         **options: Any) -> Converted:
    """Reads a torchvision `.pth` state dict into our `model` at width `alpha`.

    `num_classes` defaults to the file's classifier width; `options` go to `create_model` and override the
    torchvision build options (`BUILD_OPTIONS`: symmetric padding, BatchNorm ε 1e-5, or 1e-3 for V3).
    """
    if model not in MODELS:
        raise ValueError(f'model={model!r}: torchvision releases weights for '
                         f'{", ".join(f"{ours} alpha={a} ({theirs})" for (ours, a), theirs in TORCHVISION_NAMES.items())}')
    alpha = float(alpha)
    state = read_state_dict(path)
    if num_classes is None:
        num_classes = state_dict.classifier_width(state, CLASSIFIER_BIAS[model])
        if num_classes is None:
            raise ValueError(f'{path}: no {CLASSIFIER_BIAS[model]} tensor (the {model} classifier); '
                             f'{_why(model, alpha, state)}')
    module, layers = _layout(model, alpha, num_classes, options)
    variables = state_dict.convert(state, layers, key_table(layers, model),
                                   what=f'{path} does not fit torchvision {model} alpha={alpha}',
                                   why=lambda: _why(model, alpha, state))
    import jax
    import jax.numpy as jnp
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return Converted(module, variables, model, alpha, num_classes, NORMALIZATION, NOTES)
