"""Turning an ml-collections config into the things the library needs, with checks that name the field.

Every check here runs before anything is compiled.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from mobilenets_jax import optim
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
    config.model.bn_epsilon = placeholder(float)   # None: the family's default (1e-3, TensorFlow's)
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

    config.optimizer = 'rmsprop'         # 'rmsprop' | 'adam' | 'adamw' | 'sgd'
    config.rmsprop_decay = 0.9           # RMSprop: ms = decay * ms + (1 - decay) * g², eps inside the sqrt
    config.rmsprop_initial_scale = 1.0   # ms starts here: 1.0 TF1 RMSPropOptimizer, 0.0 Keras RMSprop
    config.momentum = 0.9                # RMSprop and SGD momentum
    config.nesterov = True               # SGD only: Nesterov momentum
    config.epsilon = 1.0                 # RMSprop epsilon
    config.adam_epsilon = 1e-8           # Adam/AdamW epsilon (outside the sqrt, optax form)
    config.learning_rate = 0.04125       # base rate at batch 256 (0.165 at 1024) ...
    config.scale_learning_rate = True    # ... scaled by batch_size / 256
    config.warmup_epochs = 5.0           # linear warmup from 0
    config.warmup_style = 'offset'       # 'offset': the decay starts when the warmup ends; 'absolute': the
    #                                      schedule counts from step 0 and the warmup ramps to its value there
    config.schedule = 'exponential'      # 'exponential' (staircase) | 'cosine' | 'linear' (to 0) | 'constant'
    config.lr_decay_rate = 0.94
    config.lr_decay_epochs = 2.5
    config.lr_floor_factor = 0.0         # the rate never falls below this fraction of the base rate
    config.cosine_end_factor = 0.0       # 'cosine' ends at this fraction of the base rate (Keras CosineDecay's alpha)
    config.weight_decay = 4e-5           # coupled L2 (wd·w added to the gradient) on conv/dense kernels ...
    config.weight_decay_depthwise = False  # ... and on depthwise kernels too when True (never BN, biases)
    config.decoupled_weight_decay = 0.0  # 'adamw' only: w -= lr·decay·w on every parameter but BatchNorm's
    config.grad_clip_norm = 0.0          # 0: off
    config.label_smoothing = 0.1
    config.ema_decay = 0.9999            # 0: no EMA (evaluation uses the raw weights)

    config.divergence_factor = 1000.0    # stop (exit 3) when the loss exceeds this × its running minimum; 0: off
    config.half_precision = False        # bfloat16 compute, float32 master weights
    config.sync_batch_stats = False      # BatchNorm statistics per device (the reference TPU recipe)
    config.seed = 0
    config.init_from = placeholder(str)  # a Keras .h5 file or a workdir to start from (new classifier if needed)
    config.reinit_classifier = False     # init_from: a fresh classifier even when the class count is the same
    config.freeze_backbone = False       # train the classifier only (every other parameter keeps its value)

    config.log_every_steps = 100
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.early_stopping_patience = 0   # > 0: stop after that many evaluations without improvement
    return config


def check_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """config.batch_size: a positive integer that splits evenly over the devices."""
    batch_size = config.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'config.batch_size={batch_size!r}: must be a positive integer')
    if batch_size % num_devices:
        raise ValueError(f'config.batch_size={batch_size} is not divisible by the {num_devices} devices; '
                         f'use a multiple of {num_devices} (e.g. --config.batch_size='
                         f'{max(num_devices, batch_size // num_devices * num_devices)})')


def _check_choice(config: ml_collections.ConfigDict, field: str, allowed: tuple) -> None:
    if config[field] not in allowed:
        raise ValueError(f'config.{field}={config[field]!r}; allowed: {", ".join(allowed)}')


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Every check of a training config, raising ValueError naming the field; runs before anything compiles."""
    try:
        datasets.get_dataset_info(config.dataset)
    except ValueError as error:
        raise ValueError(f'config.dataset: {error}') from None
    create_model(config)                   # unknown model, bad alpha/groups/BatchNorm fields, too small rho
    check_batch_size(config, num_devices)
    if config.num_train_steps <= 0 and not config.num_epochs > 0:
        raise ValueError(f'config.num_epochs={config.num_epochs!r}: must be > 0 (or set config.num_train_steps)')
    _check_choice(config, 'optimizer', optim.OPTIMIZERS)
    _check_choice(config, 'schedule', optim.SCHEDULES)
    _check_choice(config, 'warmup_style', optim.WARMUP_STYLES)
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f'config.ema_decay={config.ema_decay!r}: must be in [0, 1) (0 disables EMA)')
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f'config.label_smoothing={config.label_smoothing!r}: must be in [0, 1)')
    if config.learning_rate <= 0:
        raise ValueError(f'config.learning_rate={config.learning_rate!r}: must be > 0')
    if config.divergence_factor != 0 and not config.divergence_factor > 1:
        raise ValueError(f'config.divergence_factor={config.divergence_factor!r}: must be > 1 (0 turns it off)')
    for field in ('lr_floor_factor', 'cosine_end_factor'):
        if not 0.0 <= config[field] < 1.0:
            raise ValueError(f'config.{field}={config[field]!r}: must be in [0, 1)')
    if config.cosine_end_factor and config.schedule != 'cosine':
        raise ValueError(f'config.cosine_end_factor={config.cosine_end_factor!r} needs config.schedule=cosine '
                         f'(it is {config.schedule!r})')
    for field in ('weight_decay', 'decoupled_weight_decay', 'rmsprop_initial_scale', 'warmup_epochs'):
        if config[field] < 0:
            raise ValueError(f'config.{field}={config[field]!r}: must be >= 0')
    if config.decoupled_weight_decay and config.optimizer != 'adamw':
        raise ValueError(f'config.decoupled_weight_decay={config.decoupled_weight_decay!r} needs '
                         f'config.optimizer=adamw (it is {config.optimizer!r}); use config.weight_decay for L2')
    for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
        if config[field] < 1:
            raise ValueError(f'config.{field}={config[field]!r}: must be >= 1')
    if not config.eval_every_epochs > 0:
        raise ValueError(f'config.eval_every_epochs={config.eval_every_epochs!r}: must be > 0')
    for field in ('reinit_classifier', 'freeze_backbone'):
        if config.get(field) and not config.get('init_from'):
            raise ValueError(f'config.{field}=True needs config.init_from (a workdir or a weight file to start '
                             'from): without it the backbone is random')


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
        depthwise_impl=model.get('depthwise_impl', 'auto'), bn_momentum=model.get('bn_momentum'),
        bn_epsilon=model.get('bn_epsilon'), dtype=dtype,
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
