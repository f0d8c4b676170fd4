"""MobileNetV1 1.0-224 on ImageNet, the paper's recipe (RMSprop, staircase decay, EMA).

    python train.py --config=configs/mobilenet_v1_imagenet.py --workdir=gs://bucket/mnv1
    python train.py --config=configs/mobilenet_v1_imagenet.py --workdir=... --config.model.alpha=0.5 --config.rho=0.714

Expected: 70.6% top-1 (paper, Table 8); 0.75: 68.4, 0.5: 63.7, 0.25: 50.6 (Table 6);
at 192/160/128: 69.1 / 67.2 / 64.4 (Table 7).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'mobilenet_v1'
    config.model.dropout_rate = 1e-3
    config.batch_size = 1024
    config.learning_rate = 0.04125  # per 256 images: 0.165 at batch 1024 (the TPU reference recipe)
    config.lr_decay_epochs = 3.0
    config.num_epochs = 200.0
    config.weight_decay = 4e-5
    return config
