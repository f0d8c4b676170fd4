"""MobileNetV3-Small 1.0-224 on ImageNet: the Large recipe (configs/mobilenet_v3_large_imagenet.py)
with the Small network.

    python train.py --config=configs/mobilenet_v3_small_imagenet.py --workdir=gs://bucket/mnv3s

Expected: 67.4% top-1 (paper, Table 3); 0.75: 65.4%.
"""
from configs import mobilenet_v3_large_imagenet


def get_config():
    config = mobilenet_v3_large_imagenet.get_config()
    config.model.name = 'mobilenet_v3_small'
    return config
