"""The CIFAR-10 reproduction study: cifar_mobilenet_v1 (or v2) at width alpha and resolution rho.

The study's settings: Adam (lr 1e-3; 1e-4 for v2), no data augmentation, pixels in [0, 1], up to 100
epochs, images bilinearly resized to rho x 32. It reached ~84% (v1) and ~72% (v2) test accuracy at
alpha = rho = 1.

    python train.py --config=configs/cifar10.py --workdir=/tmp/cifar10_v1
    python train.py --config=configs/cifar10.py --workdir=/tmp/cifar10_v2 \
        --config.model.name=cifar_mobilenet_v2 --config.learning_rate=1e-4
    python train.py --config=configs/cifar10.py --workdir=/tmp/c10 --config.model.alpha=0.5 --config.rho=0.75

The study held out 20% of train for early stopping: --config.train_split='train[:80%]'.
(Needs `tfds build cifar10` once, i.e. internet access.)
Expected: ~84% top-1 (v1), ~72% (v2), as reported by the study.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'cifar_mobilenet_v1'
    config.model.dropout_rate = 0.2
    config.dataset = 'cifar10'
    config.rho = 1.0
    config.augment = False            # the study used no augmentation
    config.normalization = 'unit'     # pixels scaled to [0, 1]
    config.batch_size = 128
    config.num_epochs = 100.0
    config.optimizer = 'adam'
    config.learning_rate = 1e-3
    config.scale_learning_rate = False
    config.warmup_epochs = 0.0
    config.schedule = 'constant'
    config.weight_decay = 0.0
    config.label_smoothing = 0.0
    config.ema_decay = 0.0
    config.log_every_steps = 100
    config.eval_every_epochs = 5.0
    return config
