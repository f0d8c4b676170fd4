"""Turning an ml-collections config into the things the library needs, with checks that name the field.

Every check here runs before anything is compiled.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from mobilenets_jax.data import datasets
from mobilenets_jax.models import registry


def default_config() -> ml_collections.ConfigDict:
    """Every field a training config has, at the MobileNet papers' ImageNet recipe on one host.

    `configs/default.py` returns this; every config in `configs/` starts from it and overrides a few fields.
    """
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.name = 'mobilenet_v1'
    config.model.alpha = 1.0             # width multiplier
    config.model.groups = placeholder(int)   # shufflenet_v1 only (None elsewhere)
    config.model.dropout_rate = 1e-3
    config.model.padding_style = 'same'  # TensorFlow SAME; 'symmetric' for PyTorch-trained weights
    config.model.bn_momentum = placeholder(float)  # None: the family's TensorFlow default (0.99; V3 0.999)
    config.model.depthwise_impl = 'auto'  # shifted taps on CPU, XLA's grouped conv on GPU/TPU
    config.model.options = ml_collections.ConfigDict()  # family options, e.g. activation='relu6' for V1

    config.dataset = 'imagenet2012'
    config.data_dir = placeholder(str)    # TFDS data_dir (None: TFDS default, ~/tensorflow_datasets)
    config.rho = 1.0                     # resolution multiplier: image size = round(rho * base size)
    config.augment = True                # random crops/flips (off to match the CIFAR study)
    config.normalization = 'inception'   # pixels to [-1, 1]; 'unit' for [0, 1]
    config.train_split = placeholder(str)  # None: the dataset's train split (e.g. 'train[:80%]' holds out 20%)
    config.eval_split = placeholder(str)  # None: the dataset's validation/test split

    config.batch_size = 1024             # global, over all devices of all hosts
    config.num_epochs = 300.0
    config.num_train_steps = -1          # > 0 overrides num_epochs
    config.steps_per_eval = -1           # -1: the whole split

    config.optimizer = 'rmsprop'         # TensorFlow-form RMSprop (decay 0.9, momentum 0.9, eps 1.0)
    config.rmsprop_decay = 0.9
    config.momentum = 0.9
    config.epsilon = 1.0
    config.learning_rate = 0.04125       # base rate at batch 256 (0.165 at 1024) ...
    config.scale_learning_rate = True    # ... scaled by batch_size / 256
    config.warmup_epochs = 5.0
    config.schedule = 'exponential'      # 'exponential' (staircase) | 'cosine' | 'constant'
    config.lr_decay_rate = 0.94
    config.lr_decay_epochs = 2.5
    config.weight_decay = 4e-5           # coupled L2 on conv/dense kernels (not depthwise, BN, biases)
    config.grad_clip_norm = 0.0          # 0: off
    config.label_smoothing = 0.1
    config.ema_decay = 0.9999            # 0: no EMA (evaluation uses the raw weights)

    config.half_precision = False        # bfloat16 compute, float32 master weights
    config.sync_batch_stats = False      # BatchNorm statistics per device (the reference TPU recipe)
    config.seed = 0

    config.log_every_steps = 100
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.early_stopping_patience = 0   # > 0: stop after that many evaluations without improvement
    return config


def image_size(config: ml_collections.ConfigDict) -> int:
    """round(rho × base size): base 224 for ImageNet, 32 for CIFAR and digits."""
    base = datasets.get_dataset_info(config.dataset).base_image_size
    if not config.rho > 0:
        raise ValueError(f'config.rho={config.rho!r}: the resolution multiplier must be > 0')
    return int(round(config.rho * base))


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """Keyword arguments of `create_model` from `config.model`."""
    model = config.model
    options = dict(model.options) if 'options' in model else {}
    # bfloat16 compute (float32 master weights) when the config asks for half precision.
    dtype = jnp.bfloat16 if config.get('half_precision', False) else jnp.float32
    return dict(
        num_classes=num_classes, alpha=model.alpha, groups=model.get('groups'),
        dropout_rate=model.get('dropout_rate'), padding_style=model.get('padding_style', 'same'),
        depthwise_impl=model.get('depthwise_impl', 'auto'), bn_momentum=model.get('bn_momentum'), dtype=dtype,
        **options)


def create_model(config: ml_collections.ConfigDict, *, num_classes: int | None = None, **overrides):
    """Builds `config.model` for `config.dataset` (its class count) and checks the image size."""
    if num_classes is None:
        num_classes = datasets.get_dataset_info(config.dataset).num_classes
    kwargs = model_kwargs(config, num_classes)
    kwargs.update(overrides)
    try:
        model = registry.create_model(config.model.name, **kwargs)
    except ValueError as error:
        raise ValueError(f'config.model: {error}') from None
    size = image_size(config)
    try:
        registry.check_image_size(config.model.name, size)
    except ValueError as error:
        raise ValueError(f'config.rho={config.rho}: {error}') from None
    return model
