"""ShuffleNet V1 1x (g=3) on ImageNet (paper: SGD, lr 0.5 at batch 1024 decayed to 0 over 3e5
iterations, weight decay 4e-5, light augmentation).

    python train.py --config=configs/shufflenet_v1_imagenet.py --workdir=gs://bucket/shufflenet_v1
    python train.py --config=configs/shufflenet_v1_imagenet.py --workdir=... --config.model.groups=8

Expected: 67.4% top-1 for 1x g=3 (32.6% error, paper Table 2); g=8: 67.6%.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'shufflenet_v1'
    config.model.groups = 3
    config.model.dropout_rate = 0.0
    config.batch_size = 1024
    config.optimizer = 'sgd'
    config.learning_rate = 0.125       # per 256 images (0.5 at 1024)
    config.schedule = 'cosine'         # the paper decays linearly to 0; cosine is the closest schedule here
    config.warmup_epochs = 1.0
    config.num_epochs = 240.0          # 3e5 iterations at batch 1024
    config.label_smoothing = 0.0
    config.ema_decay = 0.0
    return config
