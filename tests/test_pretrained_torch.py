"""Pretrained weights from torchvision `.pth` and timm `model.safetensors` load with the same logits.

torchvision: torchvision itself cannot be imported here (its PyPI wheels link CUDA libraries that the CPU
build of torch 2.13.0 lacks: 'operator torchvision::nms does not exist'). The reference is therefore a
re-statement of torchvision's models in `torch.nn.functional` ops, written from pytorch/vision's source
(torchvision/models/mobilenetv2.py, mobilenetv3.py, shufflenetv2.py, ops/misc.py Conv2dNormActivation and
SqueezeExcitation, models/_utils.py _make_divisible): the same channel tables, state-dict key names,
padding (k - 1) // 2, groups, BatchNorm ε (1e-5; 1e-3 for V3), Hardswish/Hardsigmoid and
`channel_shuffle`. Running it once on an empty dict creates every tensor under torchvision's key, with
random weights and BatchNorm statistics, in module order; the dict is saved with `torch.save` and read
back by our loader; the same function then computes the reference logits.

timm: the real timm (`timm.create_model`) is the reference. timm imports torchvision at import time for
its data transforms and FrozenBatchNorm2d, none of which a MobileNet uses; `_import_timm` lets those
imports resolve to empty stand-in modules whose classes raise when instantiated, so a model that did use
one would fail here, not pass. The file is written as timm releases it (`model.safetensors` from the
state dict with safetensors, `config.json` by timm's own `save_config_for_hf`).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types

import jax
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax.weights import timm as timm_weights

import torch  # noqa: E402  (a requirement of the test env: a missing one fails, never skips)
F = torch.nn.functional

IMAGE_SIZE = 56   # 56 -> 28 -> 14 -> 7 -> 4 -> 2: odd maps too, where padding conventions would show
BATCH = 2


@pytest.fixture(autouse=True, scope='module')
def _torch_single_threaded():
    """The reference runs on one torch thread: on a busy 2-core runner torch's intra-op pool waits milliseconds
    per op for cores that XLA's threads hold (a MobileNetV4-hybrid forward at 56 px: ~4.7 s on 2 threads,
    ~0.06 s on 1, on this project's 2-core VM). Restored afterwards for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- torchvision, restated functionally

class Params:
    """Tensors by state-dict key: created (random) on first use while building, read afterwards."""

    def __init__(self, seed: int):
        self.state, self.generator = {}, torch.Generator().manual_seed(seed)

    def get(self, key: str, shape: tuple, kind: str) -> torch.Tensor:
        if key not in self.state:
            if kind == 'var':
                value = torch.rand(shape, generator=self.generator) + 0.5
            elif kind == 'gamma':
                value = torch.rand(shape, generator=self.generator) + 0.5
            elif kind == 'shift':
                value = torch.randn(shape, generator=self.generator) * 0.2
            else:   # weights, variance-preserving over the fan-in
                fan_in = int(np.prod(shape[1:]))
                value = torch.randn(shape, generator=self.generator) * (2.0 / fan_in) ** 0.5
            self.state[key] = value
        assert tuple(self.state[key].shape) == tuple(shape), (key, self.state[key].shape, shape)
        return self.state[key]


def conv(p, x, key, out, kernel=1, stride=1, groups=1, bias=False):
    weight = p.get(f'{key}.weight', (out, x.shape[1] // groups, kernel, kernel), 'weight')
    b = p.get(f'{key}.bias', (out,), 'shift') if bias else None
    return F.conv2d(x, weight, b, stride=stride, padding=(kernel - 1) // 2, groups=groups)


def batch_norm(p, x, key, eps):
    c = x.shape[1]
    return F.batch_norm(x, p.get(f'{key}.running_mean', (c,), 'shift'), p.get(f'{key}.running_var', (c,), 'var'),
                        p.get(f'{key}.weight', (c,), 'gamma'), p.get(f'{key}.bias', (c,), 'shift'),
                        training=False, eps=eps)


def linear(p, x, key, out):
    return F.linear(x, p.get(f'{key}.weight', (out, x.shape[1]), 'weight'), p.get(f'{key}.bias', (out,), 'shift'))


def conv_norm_act(p, x, key, out, kernel, stride, groups, act, eps):
    """torchvision.ops.misc.Conv2dNormActivation: `.0` conv (no bias), `.1` BatchNorm, activation."""
    return act(batch_norm(p, conv(p, x, f'{key}.0', out, kernel, stride, groups), f'{key}.1', eps))


def make_divisible(v, divisor=8):
    """torchvision/models/_utils.py _make_divisible."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def tv_mobilenet_v2(p, x, num_classes=1000):
    """torchvision/models/mobilenetv2.py MobileNetV2 (width_mult 1), BatchNorm2d default eps 1e-5."""
    eps, act = 1e-5, F.relu6
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    x = conv_norm_act(p, x, 'features.0', make_divisible(32), 3, 2, 1, act, eps)
    index = 1
    for t, c, n, s in setting:
        out = make_divisible(c)
        for i in range(n):
            stride, inp = (s if i == 0 else 1), x.shape[1]
            hidden, key, y, j = int(round(inp * t)), f'features.{index}.conv', x, 0
            if t != 1:
                y, j = conv_norm_act(p, y, f'{key}.0', hidden, 1, 1, 1, act, eps), 1
            y = conv_norm_act(p, y, f'{key}.{j}', hidden, 3, stride, hidden, act, eps)
            y = batch_norm(p, conv(p, y, f'{key}.{j + 1}', out), f'{key}.{j + 2}', eps)
            x = x + y if stride == 1 and inp == out else y
            index += 1
    x = conv_norm_act(p, x, f'features.{index}', 1280, 1, 1, 1, act, eps)
    return linear(p, x.mean((2, 3)), 'classifier.1', num_classes)


# torchvision/models/mobilenetv3.py _mobilenet_v3_conf: (input, kernel, expanded, out, use_se, activation, stride).
TV_V3_LARGE = [(16, 3, 16, 16, False, 'RE', 1), (16, 3, 64, 24, False, 'RE', 2), (24, 3, 72, 24, False, 'RE', 1),
               (24, 5, 72, 40, True, 'RE', 2), (40, 5, 120, 40, True, 'RE', 1), (40, 5, 120, 40, True, 'RE', 1),
               (40, 3, 240, 80, False, 'HS', 2), (80, 3, 200, 80, False, 'HS', 1), (80, 3, 184, 80, False, 'HS', 1),
               (80, 3, 184, 80, False, 'HS', 1), (80, 3, 480, 112, True, 'HS', 1), (112, 3, 672, 112, True, 'HS', 1),
               (112, 5, 672, 160, True, 'HS', 2), (160, 5, 960, 160, True, 'HS', 1), (160, 5, 960, 160, True, 'HS', 1)]
TV_V3_SMALL = [(16, 3, 16, 16, True, 'RE', 2), (16, 3, 72, 24, False, 'RE', 2), (24, 3, 88, 24, False, 'RE', 1),
               (24, 5, 96, 40, True, 'HS', 2), (40, 5, 240, 40, True, 'HS', 1), (40, 5, 240, 40, True, 'HS', 1),
               (40, 5, 120, 48, True, 'HS', 1), (48, 5, 144, 48, True, 'HS', 1), (48, 5, 288, 96, True, 'HS', 2),
               (96, 5, 576, 96, True, 'HS', 1), (96, 5, 576, 96, True, 'HS', 1)]


def tv_mobilenet_v3(p, x, setting, last_channel, num_classes=1000):
    """torchvision/models/mobilenetv3.py MobileNetV3 (width 1): BatchNorm eps 0.001, SE with Hardsigmoid."""
    eps = 1e-3
    x = conv_norm_act(p, x, 'features.0', setting[0][0], 3, 2, 1, F.hardswish, eps)
    for index, (inp, kernel, expanded, out, use_se, activation, stride) in enumerate(setting, start=1):
        act = F.hardswish if activation == 'HS' else F.relu
        key, y, j = f'features.{index}.block', x, 0
        if expanded != inp:
            y, j = conv_norm_act(p, y, f'{key}.0', expanded, 1, 1, 1, act, eps), 1
        y = conv_norm_act(p, y, f'{key}.{j}', expanded, kernel, stride, expanded, act, eps)
        j += 1
        if use_se:   # torchvision.ops.misc.SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8))
            scale = F.adaptive_avg_pool2d(y, 1)
            scale = F.relu(conv(p, scale, f'{key}.{j}.fc1', make_divisible(expanded // 4), bias=True))
            y = y * F.hardsigmoid(conv(p, scale, f'{key}.{j}.fc2', expanded, bias=True))
            j += 1
        y = conv_norm_act(p, y, f'{key}.{j}', out, 1, 1, 1, lambda v: v, eps)
        x = x + y if stride == 1 and inp == out else y
    x = conv_norm_act(p, x, f'features.{len(setting) + 1}', 6 * x.shape[1], 1, 1, 1, F.hardswish, eps)
    x = F.hardswish(linear(p, x.mean((2, 3)), 'classifier.0', last_channel))   # dropout: identity in eval
    return linear(p, x, 'classifier.3', num_classes)


def channel_shuffle(x, groups):
    """torchvision/models/shufflenetv2.py channel_shuffle, as written there."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


# torchvision/models/shufflenetv2.py: stages_out_channels of shufflenet_v2_x0_5 ... x2_0.
TV_SHUFFLENET_CHANNELS = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024],
                          1.5: [24, 176, 352, 704, 1024], 2.0: [24, 244, 488, 976, 2048]}


def tv_shufflenet_v2(p, x, alpha, num_classes=1000):
    """torchvision/models/shufflenetv2.py ShuffleNetV2 (BatchNorm2d default eps 1e-5)."""
    eps, channels = 1e-5, TV_SHUFFLENET_CHANNELS[alpha]
    x = F.relu(batch_norm(p, conv(p, x, 'conv1.0', channels[0], 3, 2), 'conv1.1', eps))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, out in zip((2, 3, 4), channels[1:4]):
        for unit in range({2: 4, 3: 8, 4: 4}[stage]):
            key, stride, branch = f'stage{stage}.{unit}', (2 if unit == 0 else 1), out // 2
            if stride == 1:
                x1, x2 = x.chunk(2, dim=1)
            else:
                x1 = batch_norm(p, conv(p, x, f'{key}.branch1.0', x.shape[1], 3, 2, x.shape[1]), f'{key}.branch1.1', eps)
                x1 = F.relu(batch_norm(p, conv(p, x1, f'{key}.branch1.2', branch), f'{key}.branch1.3', eps))
                x2 = x
            y = F.relu(batch_norm(p, conv(p, x2, f'{key}.branch2.0', branch), f'{key}.branch2.1', eps))
            y = batch_norm(p, conv(p, y, f'{key}.branch2.3', branch, 3, stride, branch), f'{key}.branch2.4', eps)
            y = F.relu(batch_norm(p, conv(p, y, f'{key}.branch2.5', branch), f'{key}.branch2.6', eps))
            x = channel_shuffle(torch.cat((x1, y), dim=1), 2)
    x = F.relu(batch_norm(p, conv(p, x, 'conv5.0', channels[4]), 'conv5.1', eps))
    return linear(p, x.mean([2, 3]), 'fc', num_classes)


TORCHVISION_REFERENCES = {
    ('mobilenet_v2', 1.0): tv_mobilenet_v2,
    ('mobilenet_v3_large', 1.0): lambda p, x: tv_mobilenet_v3(p, x, TV_V3_LARGE, 1280),
    ('mobilenet_v3_small', 1.0): lambda p, x: tv_mobilenet_v3(p, x, TV_V3_SMALL, 1024),
    **{('shufflenet_v2', a): (lambda a: lambda p, x: tv_shufflenet_v2(p, x, a))(a) for a in TV_SHUFFLENET_CHANNELS},
}
# Published torchvision parameter counts (the weights' meta num_params in pytorch/vision's model files).
TORCHVISION_NUM_PARAMS = {('mobilenet_v2', 1.0): 3504872, ('mobilenet_v3_large', 1.0): 5483032,
                          ('mobilenet_v3_small', 1.0): 2542856, ('shufflenet_v2', 0.5): 1366792,
                          ('shufflenet_v2', 1.0): 2278604, ('shufflenet_v2', 1.5): 3503624,
                          ('shufflenet_v2', 2.0): 7393996}


def _images(seed: int) -> np.ndarray:
    """Normalized images (what the model sees after the source's preprocessing), NHWC."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def build_reference(forward, seed: int) -> Params:
    """Every tensor of the reference, created in module order by one small forward pass."""
    params = Params(seed)
    with torch.no_grad():
        forward(params, torch.zeros(1, 3, 32, 32))
    return params


def _torch_logits(forward, params, images) -> np.ndarray:
    with torch.no_grad():
        return forward(params, torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _our_logits(module, variables, images) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images))


def write_torchvision_file(model_name, alpha, path, seed=0):
    """The reference's state dict, saved as torchvision releases it; returns (reference params, forward)."""
    forward = TORCHVISION_REFERENCES[(model_name, alpha)]
    params = build_reference(forward, seed)
    state = {}
    for key, value in params.state.items():   # BatchNorm's counter, as nn.BatchNorm2d's state dict has it
        state[key] = value
        if key.endswith('.running_var'):
            state[key.replace('.running_var', '.num_batches_tracked')] = torch.tensor(0)
    torch.save(state, path)
    return params, forward


def _assert_logits_match(ours, expected, case):
    error = float(np.max(np.abs(ours - expected)))
    assert error <= 1e-4 * float(np.max(np.abs(expected))), (case, error, float(np.max(np.abs(expected))))
    np.testing.assert_array_equal(ours.argmax(-1), expected.argmax(-1))
    return error


def test_reference_parameter_counts_are_torchvision_published_ones():
    """The functional restatement has exactly torchvision's published parameter counts (BN stats excluded)."""
    for case, forward in TORCHVISION_REFERENCES.items():
        params = build_reference(forward, 0)
        count = sum(v.numel() for k, v in params.state.items() if not k.endswith(('running_mean', 'running_var')))
        assert count == TORCHVISION_NUM_PARAMS[case], case


@pytest.mark.slow
@pytest.mark.parametrize('model_name,alpha', list(TORCHVISION_REFERENCES))
def test_torchvision_logits_match(tmp_path, model_name, alpha):
    path = str(tmp_path / f'{model_name}_{alpha}.pth')
    params, forward = write_torchvision_file(model_name, alpha, path, seed=1)
    module, variables = mj.load_pretrained(path, source='torchvision', model=model_name, alpha=alpha,
                                           depthwise_impl='xla')
    images = _images(2)
    _assert_logits_match(_our_logits(module, variables, images), _torch_logits(forward, params, images),
                         (model_name, alpha))


@pytest.fixture(scope='module')
def shufflenet_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tv') / 'shufflenet_v2_x0_5.pth')
    write_torchvision_file('shufflenet_v2', 0.5, path)
    return path


def test_torchvision_wrong_alpha_names_layer_shapes_and_alpha(shufflenet_file):
    with pytest.raises(ValueError) as error:
        mj.load_pretrained(shufflenet_file, source='torchvision', model='shufflenet_v2', alpha=1.0)
    message = str(error.value)
    assert "our stage2_unit1/shortcut_pointwise [conv] against the file's stage2.0.branch1.2.weight" in message
    assert 'the file has (24, 24, 1, 1), we expect (58, 24, 1, 1)' in message
    assert 'probably the alpha differs' in message and 'model=shufflenet_v2 alpha=0.5 (shufflenet_v2_x0_5)' in message


def test_torchvision_missing_and_unused_tensors_are_listed(shufflenet_file, tmp_path):
    state = torch.load(shufflenet_file, weights_only=True)
    state['extra.weight'] = torch.zeros(3)
    del state['conv5.1.running_var']
    path = str(tmp_path / 'changed.pth')
    torch.save(state, path)
    with pytest.raises(ValueError, match=r'weights missing from the file: conv5\.1\.running_var \(our last_bn\); '
                                         r'unused weights in the file: extra\.weight \(3,\)'):
        mj.load_pretrained(path, source='torchvision', model='shufflenet_v2', alpha=0.5)


def test_torchvision_refuses_a_model_it_does_not_release(shufflenet_file):
    with pytest.raises(ValueError, match='torchvision releases weights for'):
        mj.load_pretrained(shufflenet_file, source='torchvision', model='mobilenet_v1')


def test_torchvision_build_options_and_preprocessing(shufflenet_file):
    from mobilenets_jax import weights
    converted = weights.load(shufflenet_file, source='torchvision', model='shufflenet_v2', alpha=0.5)
    assert converted.normalization == 'imagenet' and converted.num_classes == 1000
    assert converted.model.padding_style == 'symmetric' and converted.model.bn_epsilon == 1e-5
    assert weights.build_options('torchvision', 'mobilenet_v3_large')['bn_epsilon'] == 1e-3


# ---------------------------------------------------------------- timm, the real library


class _StandInMeta(type):
    def __getattr__(cls, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return f'{cls.__name__}.{name}'


class _StandIn(metaclass=_StandInMeta):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f'{type(self).__name__}: a torchvision stand-in was used by timm')


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        value = type(name, (_StandIn,), {})
        setattr(self, name, value)
        return value


class _TorchvisionStandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == 'torchvision' or fullname.startswith('torchvision.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _torchvision_modules():
    return [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]


def _import_timm():
    """timm, imported with torchvision's stand-ins where torchvision does not load; the stand-ins leave
    sys.meta_path and sys.modules once timm holds its references, so no later import in this worker sees them."""
    import safetensors  # noqa: F401
    if 'timm' in sys.modules:
        return sys.modules['timm']
    try:
        import torchvision  # noqa: F401  (a working torchvision: no stand-ins)
    except Exception:   # noqa: BLE001  (absent, or a CUDA wheel that fails to load its operators)
        for name in _torchvision_modules():
            del sys.modules[name]
        finder = _TorchvisionStandIns()
        sys.meta_path.insert(0, finder)
        try:
            importlib.import_module('timm')
        finally:
            sys.meta_path.remove(finder)
            for name in _torchvision_modules():
                if isinstance(sys.modules[name], _StandInModule):
                    del sys.modules[name]
    import timm
    return timm


def _randomize_timm(model, seed):
    """Random weights and BatchNorm statistics (BatchNorm scales and variances in [0.5, 1.5)). Layer scales
    (`.gamma`), which timm initializes at 1e-5 and which would hide the branches they scale, are drawn in
    [0.1, 0.3): large enough to matter, small enough that 36 residual blocks keep float32 attention finite."""
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    norms = {name[:-len('.running_var')] for name in state if name.endswith('.running_var')}
    with torch.no_grad():
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            if name.endswith('.gamma'):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 + 0.1)
            elif name.endswith('running_var') or name.endswith('.weight') and name.rsplit('.', 1)[0] in norms:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(('running_mean', '.bias')):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
            else:
                fan_in = int(np.prod(tensor.shape[1:])) or 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def write_timm_release(timm_name, directory, seed=0):
    """A timm model with random weights, written as the hub holds it: model.safetensors + config.json."""
    timm = _import_timm()
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf
    model = _randomize_timm(timm.create_model(timm_name, pretrained=False), seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / 'model.safetensors'))
    save_config_for_hf(model, str(directory / 'config.json'))
    return model


# The default tier runs one convolutional and one hybrid MobileNetV4 (UIB, FusedIB-free stem rows, Mobile MQA
# with and without KV stride, layer scale); every other timm model is in the slow tier.
TIMM_FAST = ('mobilenetv4_conv_small', 'mobilenetv4_hybrid_medium')
TIMM_CASES = [pytest.param(case, name, id=name, marks=() if name in TIMM_FAST else pytest.mark.slow)
              for case, name in sorted(timm_weights.TIMM_NAMES.items())]


@pytest.mark.parametrize('case,timm_name', TIMM_CASES)
def test_timm_logits_match(tmp_path, case, timm_name):
    model_name, alpha = case
    reference = write_timm_release(timm_name, tmp_path / timm_name, seed=3)
    module, variables = mj.load_pretrained(str(tmp_path / timm_name / 'model.safetensors'), source='timm',
                                           model=model_name, alpha=alpha, depthwise_impl='xla')
    images = _images(4)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    _assert_logits_match(_our_logits(module, variables, images), expected, timm_name)


@pytest.fixture(scope='module')
def timm_v2_release(tmp_path_factory):
    directory = tmp_path_factory.mktemp('timm') / 'mobilenetv2_050'
    write_timm_release('mobilenetv2_050', directory)
    return directory


def test_timm_normalization_comes_from_config_json(timm_v2_release, tmp_path):
    from mobilenets_jax import weights
    converted = weights.load(str(timm_v2_release / 'model.safetensors'), source='timm', model='mobilenet_v2',
                             alpha=0.5)
    assert converted.normalization == 'imagenet'   # mobilenetv2_050.lamb_in1k: ImageNet mean/std
    assert converted.model.bn_epsilon == 1e-5 and converted.model.padding_style == 'symmetric'
    config = json.loads((timm_v2_release / 'config.json').read_text())
    config['pretrained_cfg'].update(mean=[0.5] * 3, std=[0.5] * 3)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'config.json').write_text(json.dumps(config))
    (other / 'model.safetensors').write_bytes((timm_v2_release / 'model.safetensors').read_bytes())
    assert weights.load(str(other / 'model.safetensors'), source='timm', model='mobilenet_v2',
                        alpha=0.5).normalization == 'inception'


def test_timm_wrong_alpha_is_refused_by_config_and_by_shapes(timm_v2_release, tmp_path):
    with pytest.raises(ValueError, match=r"config.json says architecture 'mobilenetv2_050' \(model=mobilenet_v2 "
                                         r"alpha=0.5 here\); model=mobilenet_v2 alpha=1.0 is timm's 'mobilenetv2_100'"):
        mj.load_pretrained(str(timm_v2_release / 'model.safetensors'), source='timm', model='mobilenet_v2')
    alone = tmp_path / 'model.safetensors'   # without its config.json: the shapes decide
    alone.write_bytes((timm_v2_release / 'model.safetensors').read_bytes())
    with pytest.raises(ValueError) as error:
        mj.load_pretrained(str(alone), source='timm', model='mobilenet_v2', alpha=1.0)
    message = str(error.value)
    assert "our stem [conv] against the file's conv_stem.weight: the file has (16, 3, 3, 3), we expect " \
           "(32, 3, 3, 3)" in message
    assert 'probably the alpha differs: the file has the layout of timm model=mobilenet_v2 alpha=0.5' in message


def test_timm_default_normalization_is_the_default_tags():
    """Without config.json each model gets its default tag's mean/std, read here from timm's own default_cfgs
    (mobilenetv4_conv_small_050's e3000 tag uses 0.5/0.5, mobilenetv4_conv_small's e2400 ImageNet's)."""
    timm = _import_timm()
    for (model_name, alpha), timm_name in timm_weights.TIMM_NAMES.items():
        cfg = timm.models.get_pretrained_cfg(timm_name)
        mean, std = timm_weights._MEAN_STD[timm_weights.default_normalization(model_name, alpha)]
        assert (tuple(cfg.mean), tuple(cfg.std)) == (mean, std), (timm_name, cfg.tag)


def test_timm_mobilenet_v4_wrong_model_names_the_model(tmp_path):
    """A hybrid-medium file read as conv-medium: the first differing layer (the third stage's second block is an
    FFN with expansion 2 in the hybrid, an ExtraDW with expansion 4 in conv-medium) and the model the file fits
    are named."""
    write_timm_release('mobilenetv4_hybrid_medium', tmp_path / 'release')
    alone = tmp_path / 'model.safetensors'   # without its config.json: the shapes decide
    alone.write_bytes((tmp_path / 'release' / 'model.safetensors').read_bytes())
    with pytest.raises(ValueError) as error:
        mj.load_pretrained(str(alone), source='timm', model='mobilenet_v4_conv_medium')
    message = str(error.value)
    assert 'does not fit timm mobilenet_v4_conv_medium alpha=1.0' in message
    assert "our block_5/expand [conv] against the file's blocks.2.1.pw_exp.conv.weight" in message
    assert ('probably the model differs: the file has the layout of timm model=mobilenet_v4_hybrid_medium '
            'alpha=1.0 (mobilenetv4_hybrid_medium)') in message


@pytest.mark.slow
def test_convert_torchvision_then_eval_round_trip(tmp_path):
    """convert.py --source=torchvision writes a workdir whose config builds the model as torchvision ran it
    (symmetric padding, ε 1e-5, ImageNet mean/std) and which eval evaluates with the converted weights."""
    import importlib.util
    import os
    import subprocess

    from mobilenets_jax import checkpoints, evaluation, steps
    params = build_reference(lambda p, x: tv_shufflenet_v2(p, x, 0.5, num_classes=10), seed=5)
    weights_file, workdir = str(tmp_path / 'snv2.pth'), str(tmp_path / 'converted')
    torch.save(params.state, weights_file)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, os.path.join(repo, 'convert.py'), '--source=torchvision', '--model=shufflenet_v2',
               '--alpha=0.5', f'--weights={weights_file}', f'--workdir={workdir}', '--dataset=digits']
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=repo, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = importlib.util.spec_from_file_location('converted_config', os.path.join(workdir, 'config.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.padding_style == 'symmetric' and config.model.bn_epsilon == 1e-5
    assert config.normalization == 'imagenet'
    config.data_dir, config.batch_size = str(tmp_path / 'tfds'), 40
    manager = checkpoints.open_checkpoints(workdir)
    assert checkpoints.read_metadata(manager, 0).normalization == 'imagenet'
    _, expected = mj.load_pretrained(weights_file, source='torchvision', model='shufflenet_v2', alpha=0.5)
    loaded, _ = checkpoints.load_variables(manager, 0, expected, steps.create_mesh())
    manager.close()
    for (name, value), (_, reference) in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                             jax.tree_util.tree_leaves_with_path(expected)):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(reference), err_msg=str(name))
    record = evaluation.evaluate_checkpoint(config, workdir)
    assert record['num_examples'] == 360 and record['model'] == 'shufflenet_v2'


def test_init_from_names_the_source_by_suffix_or_prefix():
    from mobilenets_jax.weights import init_from
    assert init_from.source_of('/w/mobilenet_v2-b0353104.pth') == ('torchvision', '/w/mobilenet_v2-b0353104.pth')
    assert init_from.source_of('/w/model.safetensors') == ('timm', '/w/model.safetensors')
    assert init_from.source_of('timm:/w/pytorch_model.pth') == ('timm', '/w/pytorch_model.pth')
    with pytest.raises(ValueError, match="config.init_from='/w/weights.npz': neither a workdir"):
        init_from.source_of('/w/weights.npz')
