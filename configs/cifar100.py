"""CIFAR-100 with the CIFAR MobileNet v1, the CIFAR-10 study's settings plus standard augmentation.

    python train.py --config=configs/cifar100.py --workdir=/tmp/cifar100

(Needs `tfds build cifar100` once.) Expected: not measured here (no CIFAR-100 on this machine).
"""
from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = 'cifar100'
    config.augment = True
    return config
