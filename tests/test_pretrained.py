"""Pretrained weights: Keras applications files load into our models with the same logits (no network).

Each case builds the Keras application with weights=None, gives it random weights and random BatchNorm
moving statistics, writes it in the released files' Keras 2 HDF5 layout and compares Keras' logits with
ours on random images. Keras 3 writes `.weights.h5` in another layout, so the legacy file is written here
with h5py from the model's own layer and weight names, as Keras 2 wrote the released files
(`layer_names`, `weight_names` such as `block_1_depthwise/depthwise_kernel:0`).
"""
from __future__ import annotations

import h5py
import jax
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax.weights import keras as keras_weights

# The images are even-sized at every stride-2 layer: Keras' V1 pads ((0, 1), (0, 1)), TF SAME only there.
IMAGE_SIZE = 64
BATCH = 3
# (model, α, V3's include_preprocessing): every released Keras file, and V3 built without its Rescaling layer.
KERAS_CASES = ([('mobilenet_v1', a, None) for a in (0.25, 0.5, 0.75, 1.0)]
               + [('mobilenet_v2', a, None) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)]
               + [(m, a, True) for m in ('mobilenet_v3_large', 'mobilenet_v3_small') for a in (0.75, 1.0)]
               + [('mobilenet_v3_small', 1.0, False)])


def _keras_application(model_name: str, alpha: float, image_size: int = IMAGE_SIZE,
                       include_preprocessing: bool = True):
    """The Keras application as released (V3 with its Rescaling layer by default), logits out, weights=None."""
    import keras
    build = getattr(keras.applications, keras_weights.KERAS_NAMES[model_name])
    options = dict(include_preprocessing=include_preprocessing) if model_name.startswith('mobilenet_v3') else {}
    return build(weights=None, input_shape=(image_size, image_size, 3), alpha=alpha, classes=1000,
                 classifier_activation=None, **options)


def _randomize(model, seed: int) -> None:
    """Random weights, and random BatchNorm statistics (positive variances) so no identity BN hides a bug."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        names = [w.name for w in layer.weights]
        values = []
        for name, value in zip(names, weights):
            if name in ('gamma', 'moving_variance'):
                values.append(rng.uniform(0.5, 1.5, value.shape))
            elif name in ('beta', 'moving_mean', 'bias'):
                values.append(rng.normal(0.0, 0.2, value.shape))
            else:   # kernels: variance-preserving scale over the fan-in
                fan_in = int(np.prod(value.shape[:-1])) if value.shape[-1] != 1 else int(np.prod(value.shape[:2]))
                values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), value.shape))
        layer.set_weights([v.astype(np.float32) for v in values])


def write_keras2_h5(model, path: str) -> None:
    """The Keras 2 `save_weights` HDF5 layout of the released files, written with h5py."""
    with h5py.File(path, 'w') as handle:
        handle.attrs['layer_names'] = [layer.name.encode('utf8') for layer in model.layers]
        handle.attrs['backend'] = b'tensorflow'
        handle.attrs['keras_version'] = b'2.2.4'
        for layer in model.layers:
            group = handle.create_group(layer.name)
            names = [f'{layer.name}/{w.name}:0'.replace('/kernel:0', '/depthwise_kernel:0')
                     if type(layer).__name__ == 'DepthwiseConv2D' else f'{layer.name}/{w.name}:0'
                     for w in layer.weights]
            group.attrs['weight_names'] = [n.encode('utf8') for n in names]
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name, data=value)


def _images(seed: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Pixels in [0, 255] (what Keras V3 takes; V1/V2 and our models take pixels / 127.5 - 1)."""
    return np.random.default_rng(seed).uniform(0, 255, (BATCH, image_size, image_size, 3)).astype(np.float32)


def _keras_logits(model, takes_pixels: bool, pixels: np.ndarray) -> np.ndarray:
    """V3 with its Rescaling layer takes [0, 255]; V1, V2 (after preprocess_input) and V3 without it [-1, 1]."""
    inputs = pixels if takes_pixels else pixels / 127.5 - 1.0
    return np.asarray(model(inputs, training=False))


def _our_logits(module, variables, pixels: np.ndarray) -> np.ndarray:
    """Our logits on pixels / 127.5 - 1 (the 'inception' normalization Keras' weights expect)."""
    return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, pixels / 127.5 - 1.0))


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
    """Writes each case's file once: (path, Keras logits, pixels) by case."""
    cache = {}

    def get(model_name, alpha, include_preprocessing):
        key = (model_name, alpha, include_preprocessing)
        if key not in cache:
            model = _keras_application(model_name, alpha, include_preprocessing=bool(include_preprocessing))
            _randomize(model, seed=len(cache))
            path = str(tmp_path_factory.mktemp('keras') / f'{model_name}_{alpha}.h5')
            write_keras2_h5(model, path)
            pixels = _images(seed=len(cache))
            cache[key] = (path, _keras_logits(model, bool(include_preprocessing), pixels), pixels)
        return cache[key]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('model_name,alpha,include_preprocessing', KERAS_CASES)
def test_keras_logits_match(keras_files, model_name, alpha, include_preprocessing):
    path, expected, pixels = keras_files(model_name, alpha, include_preprocessing)
    # XLA's depthwise convolution compiles faster than the CPU default's shifted taps (same numbers:
    # tests/test_depthwise.py); compiling is most of this test's time.
    module, variables = mj.load_pretrained(path, source='keras', model=model_name, alpha=alpha,
                                           depthwise_impl='xla')
    assert module.num_classes == 1000
    ours = _our_logits(module, variables, pixels)
    error = float(np.max(np.abs(ours - expected)))
    assert error <= 1e-4 * float(np.max(np.abs(expected))), (model_name, alpha, error)
    np.testing.assert_array_equal(ours.argmax(-1), expected.argmax(-1))


def _rewrite(source: str, target: str, *, drop_last: int = 0, extra_layer: bool = False,
             rename=lambda name: name) -> None:
    """A copy of a Keras 2 layout file with layers dropped, one appended, or every layer renamed."""
    with h5py.File(source, 'r') as old, h5py.File(target, 'w') as new:
        names = [keras_weights._decode(n) for n in old.attrs["layer_names"]]
        with_weights = [n for n in names if len(old[n].attrs['weight_names'])]
        dropped = set(with_weights[len(with_weights) - drop_last:]) if drop_last else set()
        kept = [n for n in names if n not in dropped]
        new.attrs['layer_names'] = [rename(n).encode() for n in kept] + ([b'extra_dense'] if extra_layer else [])
        for name in kept:
            group = new.create_group(rename(name))
            weight_names = [keras_weights._decode(w) for w in old[name].attrs["weight_names"]]
            renamed = [rename(name) + w[len(name):] for w in weight_names]
            group.attrs['weight_names'] = [w.encode() for w in renamed]
            for old_name, new_name in zip(weight_names, renamed):
                group.create_dataset(new_name, data=old[name][old_name][()])
        if extra_layer:
            group = new.create_group('extra_dense')
            group.attrs['weight_names'] = [b'extra_dense/kernel:0', b'extra_dense/bias:0']
            group.create_dataset('extra_dense/kernel:0', data=np.zeros((1000, 5), np.float32))
            group.create_dataset('extra_dense/bias:0', data=np.zeros((5,), np.float32))


@pytest.fixture(scope='module')
def small_v2_file(tmp_path_factory):
    """A Keras MobileNetV2 α 0.35 file in the released layout, and the Keras model it came from."""
    model = _keras_application('mobilenet_v2', 0.35, image_size=32)
    _randomize(model, seed=7)
    path = str(tmp_path_factory.mktemp('keras_v2') / 'v2_035.h5')
    write_keras2_h5(model, path)
    return path, model


def _leaves(variables):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(variables)}


def test_layers_are_paired_by_order_not_name(small_v2_file, tmp_path):
    """The released V3 files and Keras 3 name layers differently; Keras loads by order, and so do we."""
    path, _ = small_v2_file
    renamed = str(tmp_path / 'renamed.h5')
    _rewrite(path, renamed, rename=lambda name: f'other_name_{name}')
    _, expected = mj.load_pretrained(path, model='mobilenet_v2', alpha=0.35)
    _, loaded = mj.load_pretrained(renamed, model='mobilenet_v2', alpha=0.35)
    np.testing.assert_equal(_leaves(loaded), _leaves(expected))


def test_keras3_legacy_writer_loads_the_same(small_v2_file, tmp_path):
    """Keras 3's own legacy-HDF5 writer (weight names without ':0', depthwise weight 'kernel') reads the same."""
    from keras.src.legacy.saving import legacy_h5_format
    path, model = small_v2_file
    keras3 = str(tmp_path / 'keras3.h5')
    with h5py.File(keras3, 'w') as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    _, expected = mj.load_pretrained(path, model='mobilenet_v2', alpha=0.35)
    _, loaded = mj.load_pretrained(keras3, model='mobilenet_v2', alpha=0.35)
    np.testing.assert_equal(_leaves(loaded), _leaves(expected))


def test_wrong_alpha_names_the_layer_both_shapes_and_the_alpha(small_v2_file):
    path, _ = small_v2_file
    with pytest.raises(ValueError) as error:
        mj.load_pretrained(path, model='mobilenet_v2', alpha=0.5)
    message = str(error.value)
    # The stems agree (16 filters at both α); the first layer that differs, Keras' block_1 being our block_2:
    assert "'block_1_project'" in message and 'our block_2/project' in message
    assert 'the file has (1, 1, 48, 8), we expect (1, 1, 48, 16)' in message
    assert 'probably the alpha differs' in message and 'model=mobilenet_v2 alpha=0.35' in message


def test_wrong_model_says_the_model_differs(small_v2_file):
    path, _ = small_v2_file
    with pytest.raises(ValueError, match=r'probably the model differs: .*model=mobilenet_v2 alpha=0.35'):
        mj.load_pretrained(path, model='mobilenet_v1', alpha=0.35)


def test_missing_and_unused_weights_are_listed(small_v2_file, tmp_path):
    path, _ = small_v2_file
    extra, truncated = str(tmp_path / 'extra.h5'), str(tmp_path / 'truncated.h5')
    _rewrite(path, extra, extra_layer=True)
    _rewrite(path, truncated, drop_last=3)   # no classifier and no last BatchNorm/conv: an include_top=False file
    with pytest.raises(ValueError, match=r"unused weights in the file: layer \d+ 'extra_dense' \(kernel \(1000, 5\)"):
        mj.load_pretrained(extra, model='mobilenet_v2', alpha=0.35, num_classes=1000)
    with pytest.raises(ValueError, match=r'not a classifier'):
        mj.load_pretrained(truncated, model='mobilenet_v2', alpha=0.35)
    with pytest.raises(ValueError, match=r'weights missing from the file: last_conv .*; last_bn .*; classifier'):
        mj.load_pretrained(truncated, model='mobilenet_v2', alpha=0.35, num_classes=1000)


def test_unsupported_sources_and_models_are_refused(small_v2_file):
    path, _ = small_v2_file
    with pytest.raises(ValueError, match='unknown source'):
        mj.load_pretrained(path, source='caffe', model='mobilenet_v2')
    with pytest.raises(ValueError, match='Keras applications release weights for'):
        mj.load_pretrained(path, model='shufflenet_v2')


@pytest.mark.slow
def test_convert_then_eval_round_trip(tmp_path):
    """convert.py writes a checkpoint and config.py that eval evaluates with the converted weights as they are."""
    import importlib.util
    import os
    import subprocess
    import sys

    from mobilenets_jax import checkpoints, evaluation, steps
    from mobilenets_jax.weights import to_workdir
    model = _keras_application('mobilenet_v1', 0.25, image_size=32)   # digits images are 32x32 at rho 1
    model = _keras_classes(model, 'mobilenet_v1', 0.25, classes=10)
    _randomize(model, seed=3)
    weights_file, workdir = str(tmp_path / 'v1.h5'), str(tmp_path / 'converted')
    write_keras2_h5(model, weights_file)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, os.path.join(repo, 'convert.py'), '--source=keras', '--model=mobilenet_v1',
               '--alpha=0.25', f'--weights={weights_file}', f'--workdir={workdir}', '--dataset=digits']
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=repo, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == (f'python eval.py --config={workdir}/config.py '
                                                    f'--workdir={workdir}')
    with pytest.raises(ValueError, match='already holds step 0'):   # never overwritten
        to_workdir.convert_to_workdir(weights_file, workdir, source='keras', model='mobilenet_v1', alpha=0.25,
                                      dataset='digits')

    spec = importlib.util.spec_from_file_location('converted_config', os.path.join(workdir, 'config.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.options.activation == 'relu6' and config.model.bn_epsilon == 1e-3
    assert config.normalization == 'inception'
    config.data_dir, config.batch_size = str(tmp_path / 'tfds'), 40
    manager = checkpoints.open_checkpoints(workdir)
    assert checkpoints.read_metadata(manager, 0).normalization == 'inception'
    _, expected = mj.load_pretrained(weights_file, model='mobilenet_v1', alpha=0.25)
    loaded, chosen = checkpoints.load_variables(manager, 0, expected, steps.create_mesh())
    manager.close()
    assert chosen == 'raw'
    np.testing.assert_equal(_leaves(loaded), _leaves(expected))
    record = evaluation.evaluate_checkpoint(config, workdir)
    assert record['num_examples'] == 360 and record['model'] == 'mobilenet_v1' and record['weights'] == 'raw'

    # The converted workdir is also a fine-tuning start (config.init_from), every variable loaded.
    from mobilenets_jax.weights import init_from
    fresh = mj.init_variables(mj.create_model('mobilenet_v1', num_classes=10, alpha=0.25), 0, (1, 32, 32, 3))
    config.init_from = workdir
    np.testing.assert_equal(_leaves(init_from.initial_variables(fresh, config)), _leaves(expected))


def _keras_classes(model, model_name: str, alpha: float, classes: int):
    """The same Keras application with another classifier width."""
    import keras
    build = getattr(keras.applications, keras_weights.KERAS_NAMES[model_name])
    return build(weights=None, input_shape=model.input_shape[1:], alpha=alpha, classes=classes,
                 classifier_activation=None)


def test_init_from_keras_file_loads_the_backbone_and_a_fresh_classifier(tiny_config, small_v1_file, caplog):
    """config.init_from: every weight from the file but the classifier, which 10 digit classes re-initialise."""
    import logging

    from mobilenets_jax import steps, train_lib
    path = small_v1_file
    config = tiny_config(**{'model.name': 'mobilenet_v1', 'model.alpha': 0.25, 'rho': 1.0})
    config.init_from = path
    mesh = steps.create_mesh(jax.local_devices()[:1])
    with caplog.at_level(logging.INFO, logger='absl'):
        state = train_lib.initial_state(train_lib.create_setup(config, 100), config, mesh, pretrained=True)
    assert 're-initialised (class count differs): params/classifier/bias, params/classifier/kernel' in caplog.text
    _, pretrained = mj.load_pretrained(path, model='mobilenet_v1', alpha=0.25)
    expected = _leaves(pretrained)
    loaded = _leaves({'params': state['params'], 'batch_stats': state['batch_stats']})
    assert set(loaded) == set(expected)
    for name, value in loaded.items():
        if 'classifier' in name:
            assert value.shape[-1] == 10
        else:
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert 'activation=\'relu6\' (config: \'relu\')' in caplog.text   # Keras' V1 is ReLU6; the config says ReLU
    np.testing.assert_equal(_leaves(state['ema_params']), _leaves(state['params']))   # the EMA starts there too


def test_init_from_names_a_backbone_variable_that_does_not_fit():
    from mobilenets_jax.weights import init_from
    fresh = {'params': {'stem': {'conv': {'kernel': np.zeros((3, 3, 3, 8))}}, 'classifier': {'bias': np.zeros(10)}}}
    other = {'params': {'stem': {'conv': {'kernel': np.zeros((3, 3, 3, 16))}}, 'classifier': {'bias': np.zeros(5)}}}
    with pytest.raises(ValueError, match=r'params/stem/conv/kernel has shape \(3, 3, 3, 16\) there, '
                                         r'\(3, 3, 3, 8\) in this model'):
        init_from.merge(fresh, other)
    merged, kept = init_from.merge(fresh, {'params': {'stem': {'conv': {'kernel': np.ones((3, 3, 3, 8))}},
                                                      'classifier': {'bias': np.ones(5)}}})
    assert kept == ['params/classifier/bias'] and merged['params']['stem']['conv']['kernel'].sum() == 216
    with pytest.raises(ValueError, match=r"missing \['params/classifier/bias'\]"):
        init_from.merge(fresh, {'params': {'stem': fresh['params']['stem']}})


@pytest.fixture(scope='module')
def small_v1_file(tmp_path_factory):
    """A Keras MobileNet α 0.25 file (1000 classes) in the released layout, for 32x32 inputs."""
    model = _keras_application('mobilenet_v1', 0.25, image_size=32)
    _randomize(model, seed=11)
    path = str(tmp_path_factory.mktemp('keras_v1') / 'v1_025.h5')
    write_keras2_h5(model, path)
    return path
