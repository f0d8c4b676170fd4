"""MobileNetV2 1.0-224 on ImageNet (paper recipe: RMSprop 0.9/0.9, staircase decay, wd 4e-5, EMA).

    python train.py --config=configs/mobilenet_v2_imagenet.py --workdir=gs://bucket/mnv2
    python train.py --config=configs/mobilenet_v2_imagenet.py --workdir=... --config.model.alpha=1.4

Expected: 72.0% top-1 (paper, Table 4); 1.4: 74.7%; 0.35-224: 60.3% (TF-slim README).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'mobilenet_v2'
    config.model.dropout_rate = 0.2
    config.batch_size = 1024
    config.learning_rate = 0.04125   # per 256 images (0.165 at 1024)
    config.lr_decay_rate = 0.94
    config.lr_decay_epochs = 2.5
    config.num_epochs = 300.0
    return config
