"""ShuffleNet V2 1x on ImageNet (SGD, lr 0.5 at batch 1024 decayed to 0, weight decay 4e-5,
label smoothing 0.1 as in the authors' release).

    python train.py --config=configs/shufflenet_v2_imagenet.py --workdir=gs://bucket/shufflenet_v2
    python train.py --config=configs/shufflenet_v2_imagenet.py --workdir=... --config.model.alpha=2.0

Expected: 69.4% top-1 for 1x (30.6% error, paper Table 8); 0.5x: 60.3%; 1.5x: 72.6%; 2x: 74.9%.
"""
from configs import shufflenet_v1_imagenet


def get_config():
    config = shufflenet_v1_imagenet.get_config()
    config.model.name = 'shufflenet_v2'
    config.model.groups = None
    config.label_smoothing = 0.1
    return config
