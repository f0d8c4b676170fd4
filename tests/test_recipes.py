"""Each ImageNet config against the published recipe its docstring cites, field by field and step by step.

The tables below are the recipes' own numbers, each with its source (repository + path + key, or paper
section); the test compares them with `get_config()` and with the learning-rate schedule the trainer builds
(`optim.optimizer_for_run`, what train_lib trains with) at the recipe's batch size. The optimizers are compared
with the real TensorFlow implementations (TF1 `RMSPropOptimizer`, Keras `RMSprop` and `AdamW`) over several steps.
"""
import importlib

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilenets_jax import optim
from mobilenets_jax.data import datasets

IMAGENET_TRAIN = 1_281_167   # official/vision image_classification.py IMAGENET_TRAIN_EXAMPLES

OFFICIAL_VISION = 'tensorflow/models official/vision/configs/experiments/image_classification/'
# Fields of the `mobilenet_imagenet` experiment (official/vision/configs/image_classification.py) that the
# MobileNet YAMLs inherit: RMSprop rho/momentum/epsilon, BatchNorm momentum/epsilon, warmup from 0.
_OV_BASE = {'model.bn_momentum': 0.997, 'model.bn_epsilon': 1e-3, 'warmup_style': 'absolute',
            'batch_size': 4096, 'half_precision': True, 'label_smoothing': 0.1, 'model.dropout_rate': 0.2,
            'normalization': 'imagenet', 'weight_decay_depthwise': False}
_OV_RMSPROP = dict(_OV_BASE, **{'optimizer': 'rmsprop', 'rmsprop_decay': 0.9, 'momentum': 0.9, 'epsilon': 0.002,
                                'rmsprop_initial_scale': 0.0,   # Keras RMSprop: the accumulator starts at 0
                                'weight_decay': 1e-5})

# config name -> (source, reported top-1, expected config fields, {step: learning rate} at the recipe's batch)
RECIPES = {
    'mobilenet_v1_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv1_tpu.yaml', '72.33%',
        dict(_OV_RMSPROP, **{'model.name': 'mobilenet_v1', 'schedule': 'exponential', 'lr_decay_rate': 0.94,
                          'ema_decay': 0.0}),
        # 0.256 * 0.94 ** floor(step / 780), warmed up linearly from 0 to its value at step 1560.
        {'total_steps': 156_000, 0: 0.0, 1: 0.2262016 / 1560, 1560: 0.256 * 0.94 ** 2, 2339: 0.256 * 0.94 ** 2,
         2340: 0.256 * 0.94 ** 3, 155_999: 0.256 * 0.94 ** 199}),
    'mobilenet_v2_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv2_tpu.yaml', '72.72%',
        dict(_OV_RMSPROP, **{'model.name': 'mobilenet_v2', 'schedule': 'exponential', 'lr_decay_rate': 0.96,
                          'ema_decay': 0.0}),
        {'total_steps': 156_000, 0: 0.0, 1560: 0.256 * 0.96 ** 2, 2340: 0.256 * 0.96 ** 3,
         155_999: 0.256 * 0.96 ** 199}),
    'mobilenet_v3_small_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv3small_tpu.yaml', '67.5%',
        dict(_OV_RMSPROP, **{'model.name': 'mobilenet_v3_small', 'schedule': 'exponential', 'lr_decay_rate': 0.99,
                          'ema_decay': 0.9999}),
        # 0.426 * 0.99 ** floor(step / 936), warmup over 1560 steps.
        {'total_steps': 312_000, 0: 0.0, 780: 0.426 * 0.99 / 2, 1560: 0.426 * 0.99, 1871: 0.426 * 0.99,
         1872: 0.426 * 0.99 ** 2, 311_999: 0.426 * 0.99 ** 333}),
    'mobilenet_v3_large_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv3large_tpu.yaml', '~75.7%',
        dict(_OV_BASE, **{'model.name': 'mobilenet_v3_large', 'optimizer': 'adamw', 'adam_epsilon': 1e-7,
                          'decoupled_weight_decay': 0.1, 'weight_decay': 0.0, 'schedule': 'cosine',
                          'ema_decay': 0.0}),
        # 0.004 * 0.5 * (1 + cos(pi * step / 218000)), warmup over 1560 steps to its value there.
        {'total_steps': 218_000, 0: 0.0, 1560: 0.002 * (1 + np.cos(np.pi * 1560 / 218_000)),
         109_000: 0.002, 217_999: 0.002 * (1 + np.cos(np.pi * 217_999 / 218_000))}),
    'shufflenet_v1_imagenet': (
        'ShuffleNet paper §4; megvii-model/ShuffleNet-Series ShuffleNetV1/train.py', '67.4%',
        {'model.name': 'shufflenet_v1', 'model.groups': 3, 'batch_size': 1024, 'optimizer': 'sgd',
         'momentum': 0.9, 'nesterov': False, 'schedule': 'linear', 'weight_decay': 4e-5,
         'weight_decay_depthwise': True, 'label_smoothing': 0.1, 'ema_decay': 0.0, 'model.dropout_rate': 0.0,
         'model.bn_momentum': 0.9, 'model.bn_epsilon': 1e-5, 'half_precision': False},
        # 0.5 * (1 - step / 300000)
        {'total_steps': 300_000, 0: 0.5, 150_000: 0.25, 299_999: 0.5 / 300_000}),
    'shufflenet_v2_imagenet': (
        'megvii-model/ShuffleNet-Series ShuffleNetV2/train.py', '69.4%',
        {'model.name': 'shufflenet_v2', 'batch_size': 1024, 'optimizer': 'sgd', 'nesterov': False,
         'schedule': 'linear', 'weight_decay': 4e-5, 'weight_decay_depthwise': True, 'label_smoothing': 0.1,
         'ema_decay': 0.0, 'model.bn_momentum': 0.9, 'model.bn_epsilon': 1e-5},
        {'total_steps': 300_000, 0: 0.5, 299_999: 0.5 / 300_000}),
}

# MobileNetV4 (official/vision YAMLs): AdamW with decoupled decay on all but BatchNorm, cosine decay from the
# absolute step 0 with a linear warmup over 1560 steps to its value there (LinearWarmup + CosineDecayWithOffset).
_OV_ADAMW = dict(_OV_BASE, **{'optimizer': 'adamw', 'adam_epsilon': 1e-7, 'weight_decay': 0.0, 'schedule': 'cosine',
                              'ema_decay': 0.0})


def _keras_cosine(base, total, alpha=0.0):
    """tf.keras CosineDecay(base, total, alpha) at a step: base * ((1 - alpha) * 0.5 * (1 + cos(pi t / T)) + alpha)."""
    return lambda step: base * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * min(step, total) / total)) + alpha)


def _warmed_cosine(base, total, alpha=0.0, warmup=1560, steps=(1, 780, 1560, 20_000)):
    cosine = _keras_cosine(base, total, alpha)
    table = {'total_steps': total, 0: 0.0, total - 1: cosine(total - 1)}
    table.update({step: cosine(warmup) * step / warmup if step < warmup else cosine(step) for step in steps})
    return table


RECIPES.update({
    'mobilenet_v4_conv_small_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv4_conv_small_tpu.yaml', '73.8%',
        dict(_OV_ADAMW, **{'model.name': 'mobilenet_v4_conv_small', 'rho': 1.0, 'half_precision': False,
                           'model.bn_momentum': 0.95, 'model.bn_epsilon': 1e-6, 'model.dropout_rate': 0.3,
                           'adam_epsilon': 1e-6, 'decoupled_weight_decay': 0.01, 'weight_decay': 1e-5,
                           'ema_decay': 0.9999}),
        _warmed_cosine(0.002, 3_002_368)),
    'mobilenet_v4_conv_medium_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv4_conv_medium_tpu.yaml', '79.9%',
        dict(_OV_ADAMW, **{'model.name': 'mobilenet_v4_conv_medium', 'rho': 256 / 224,
                           'decoupled_weight_decay': 0.1}),
        _warmed_cosine(0.004, 156_000)),
    'mobilenet_v4_conv_large_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv4_conv_large_tpu.yaml', '82.92%',
        dict(_OV_ADAMW, **{'model.name': 'mobilenet_v4_conv_large', 'rho': 384 / 224, 'batch_size': 16384,
                           'decoupled_weight_decay': 0.2}),
        _warmed_cosine(0.004, 39_000)),
    'mobilenet_v4_hybrid_medium_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv4_hybrid_medium_tpu.yaml', '80.7%',
        dict(_OV_ADAMW, **{'model.name': 'mobilenet_v4_hybrid_medium', 'rho': 256 / 224, 'batch_size': 16384,
                           'decoupled_weight_decay': 0.1}),
        _warmed_cosine(0.016, 39_000)),
    'mobilenet_v4_hybrid_large_imagenet': (
        OFFICIAL_VISION + 'imagenet_mobilenetv4_hybrid_large_tpu.yaml', '83.7%',
        dict(_OV_ADAMW, **{'model.name': 'mobilenet_v4_hybrid_large', 'rho': 384 / 224, 'batch_size': 16384,
                           'decoupled_weight_decay': 0.2, 'cosine_end_factor': 0.001}),
        _warmed_cosine(0.01, 39_000, alpha=0.001)),
})


def _config(name):
    return importlib.import_module(f'configs.{name}').get_config()


def _field(config, dotted):
    node = config
    for part in dotted.split('.'):
        node = node[part]
    return node


def test_every_imagenet_config_has_a_recipe():
    from tests.test_train import CONFIG_NAMES
    imagenet = {n for n in CONFIG_NAMES if _config(n).dataset == 'imagenet2012' and n != 'default'}
    assert imagenet == set(RECIPES), f'ImageNet configs without a recipe row here: {imagenet - set(RECIPES)}'


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_config_matches_its_recipe(name):
    source, top1, fields, _ = RECIPES[name]
    config = _config(name)
    module = importlib.import_module(f'configs.{name}')
    assert source.split()[-1] in module.__doc__, f'{name} does not cite {source}'
    assert top1 in module.__doc__, f'{name} does not state the recipe\'s {top1}'
    for dotted, want in fields.items():
        assert _field(config, dotted) == want, f'{name}: config.{dotted}={_field(config, dotted)!r}, recipe {want!r}'


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_learning_rate_at_the_recipes_steps(name):
    *_, steps = RECIPES[name]
    config = _config(name)
    steps_per_epoch = IMAGENET_TRAIN // config.batch_size
    assert datasets.published_split_size('imagenet2012', 'train') == IMAGENET_TRAIN
    assert optim.run_length(config, steps_per_epoch) == steps['total_steps']
    learning_rate_fn, _ = optim.optimizer_for_run(config, steps_per_epoch)
    for step, want in steps.items():
        if step != 'total_steps':
            np.testing.assert_allclose(float(learning_rate_fn(step)), want, rtol=1e-5, atol=1e-8,  # float32 schedules
                                       err_msg=f'{name} at step {step}')


def test_v1_at_batch_1024_scales_the_recipe_linearly():
    config = _config('mobilenet_v1_imagenet')
    config.batch_size = 1024
    learning_rate_fn, _ = optim.optimizer_for_run(config, IMAGENET_TRAIN // 1024)
    # 0.256 × 1024/4096 = 0.064; the warmup (5 epochs = 6255 steps) ends at that rate's decayed value.
    np.testing.assert_allclose(float(learning_rate_fn(6255)), 0.064 * 0.94 ** 2, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Update rules against the reference implementations
# --------------------------------------------------------------------------------------------------

_X0 = np.array([[3.0, 1.0], [-1.0, 0.0]], np.float32)
_TARGET = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
_CURVATURE = np.array([[0.5, 2.0], [10.0, 50.0]], np.float32)
_RATES = [0.1, 0.05, 0.2, 0.01, 0.1, 0.03]   # a different rate each step: where the rate enters matters


def _grad(x):
    return _CURVATURE * (x - _TARGET)


def _optax_trajectory(tx, module='conv'):
    """The parameter's values after each step; `module` names the layer that holds it (for the masks)."""
    params = {module: {'kernel': jnp.asarray(_X0)}}
    state = tx.init(params)
    out = []
    for _ in _RATES:
        grads = {module: {'kernel': _grad(params[module]['kernel'])}}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(params[module]['kernel']))
    return np.stack(out)


def _tf1_trajectory(**kwargs):
    import tensorflow as tf
    variable, rate = tf.Variable(_X0), tf.Variable(_RATES[0])
    optimizer = tf.compat.v1.train.RMSPropOptimizer(rate, **kwargs)
    out = []
    for value in _RATES:
        rate.assign(value)
        optimizer.apply_gradients([(tf.constant(_grad(variable.numpy())), variable)])
        out.append(variable.numpy().copy())
    return np.stack(out)


def _keras_trajectory(optimizer):
    import keras
    variable = keras.Variable(_X0)
    out = []
    for value in _RATES:
        optimizer.learning_rate = value
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(_grad(np.asarray(variable))), variable)])
        out.append(np.asarray(variable).copy())
    return np.stack(out)


def _schedule(step):
    return jnp.asarray(_RATES)[step]


def _optimizer(config_overrides):
    from configs import default
    config = default.get_config()
    config.update(config_overrides)
    return optim.transform_from_config(config, _schedule)


def test_rmsprop_equals_tf1_rmspropoptimizer():
    """tensorflow/tpu and TF-slim's optimizer: tf.compat.v1.train.RMSPropOptimizer (ms starts at 1)."""
    want = _tf1_trajectory(decay=0.9, momentum=0.9, epsilon=1.0)
    got = _optax_trajectory(_optimizer({'optimizer': 'rmsprop', 'epsilon': 1.0, 'rmsprop_initial_scale': 1.0,
                                        'weight_decay': 0.0}))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def test_rmsprop_equals_keras_rmsprop():
    """official/vision's optimizer: Keras RMSprop (accumulator starts at 0, epsilon inside the square root)."""
    import keras
    want = _keras_trajectory(keras.optimizers.RMSprop(learning_rate=0.1, rho=0.9, momentum=0.9, epsilon=0.002))
    got = _optax_trajectory(_optimizer({'optimizer': 'rmsprop', 'epsilon': 0.002, 'rmsprop_initial_scale': 0.0,
                                        'weight_decay': 0.0}))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    # The two forms differ, so the comparison can tell them apart.
    tf1_form = _optax_trajectory(_optimizer({'optimizer': 'rmsprop', 'epsilon': 0.002, 'weight_decay': 0.0,
                                             'rmsprop_initial_scale': 1.0}))
    assert np.max(np.abs(tf1_form - want)) > 1e-2


def test_adamw_equals_keras_adamw():
    """The V3-Large recipe's AdamW: decoupled decay w -= lr·wd·w, then Adam (Keras' epsilon form aside)."""
    import keras
    want = _keras_trajectory(keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.1, beta_1=0.9, beta_2=0.999,
                                                    epsilon=1e-7))
    adamw = {'optimizer': 'adamw', 'adam_epsilon': 1e-7, 'decoupled_weight_decay': 0.1, 'weight_decay': 0.0}
    np.testing.assert_allclose(_optax_trajectory(_optimizer(adamw)), want, atol=1e-6, rtol=1e-6)
    # BatchNorm's parameters are not decayed (official/vision skips 'batch_normalization' variables): under a
    # '*_bn' module AdamW moves exactly as Adam.
    adam = {'optimizer': 'adam', 'adam_epsilon': 1e-7, 'weight_decay': 0.0}
    plain = _optax_trajectory(_optimizer(adam), module='stem_bn')
    np.testing.assert_array_equal(_optax_trajectory(_optimizer(adamw), module='stem_bn'), plain)
    assert np.max(np.abs(plain - want)) > 1e-3   # the decay is large enough to be seen


def test_sgd_momentum_is_the_pytorch_form():
    """megvii's torch.optim.SGD(momentum=0.9): buf = 0.9·buf + g; w -= lr·buf (written out, torch is not in CI)."""
    x, buf, want = _X0.astype(np.float64), np.zeros_like(_X0, np.float64), []
    for rate in _RATES:
        buf = 0.9 * buf + _grad(x)
        x = x - rate * buf
        want.append(x.copy())
    got = _optax_trajectory(_optimizer({'optimizer': 'sgd', 'momentum': 0.9, 'nesterov': False,
                                        'weight_decay': 0.0}))
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6, rtol=1e-6)
