"""MobileNetV2 1.0-224 on ImageNet: the tensorflow/models official/vision recipe, 72.72% top-1.

    python train.py --config=configs/mobilenet_v2_imagenet.py --workdir=gs://bucket/mnv2
    python train.py --config=configs/mobilenet_v2_imagenet.py --workdir=... --config.model.alpha=1.4

Recipe: tensorflow/models `official/vision/configs/experiments/image_classification/imagenet_mobilenetv2_tpu.yaml`
("72.72% top-1 and 91.05% top-5"): the MobileNetV1 recipe of configs/mobilenet_v1_imagenet.py (same experiment,
batch 4096, 0.256, warmup 1560 steps, Keras RMSprop 0.9/0.9/0.002, L2 1e-5, label smoothing 0.1, dropout 0.2,
BatchNorm 0.997/1e-3, no EMA, bfloat16, mean/std) with the staircase decay rate 0.96 every 780 steps.

What still differs: 1000 classes instead of the recipe's 1001 (see configs/mobilenet_v1_imagenet.py).
The paper's 72.0% (Table 4) came from TF-slim's recipe (`research/slim/nets/mobilenet/README.md`: batch 768 on 8 GPUs,
RMSprop eps 1.0, lr 0.36 ×0.98 every 2.5 epochs, EMA 0.9999, ~700K steps).
Expected: 72.72% top-1 (the recipe's).
"""
from configs import mobilenet_v1_imagenet


def get_config():
    config = mobilenet_v1_imagenet.get_config()
    config.model.name = 'mobilenet_v2'
    config.lr_decay_rate = 0.96
    return config
