"""Defaults every config starts from (the MobileNet papers' ImageNet recipe on one host).

Configs override a few fields: `config = default.get_config(); config.model.name = ...`. Any field can
be changed from the command line: `--config.model.alpha=0.5 --config.rho=0.714`.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
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
