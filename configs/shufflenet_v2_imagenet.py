"""ShuffleNet V2 1x on ImageNet: the authors' released recipe (the ShuffleNet V1 one), 69.4% top-1.

    python train.py --config=configs/shufflenet_v2_imagenet.py --workdir=gs://bucket/shufflenet_v2
    python train.py --config=configs/shufflenet_v2_imagenet.py --workdir=... --config.model.alpha=2.0

Recipe: ShuffleNet V2 paper (Ma et al. 2018) §4: "Other hyper-parameters and protocols are exactly the same as
ShuffleNet v1"; megvii-model/ShuffleNet-Series `ShuffleNetV2/train.py` is `ShuffleNetV1/train.py` with the V2 network,
so every field is configs/shufflenet_v1_imagenet.py's (SGD 0.9, 0.5 at 1024 linear to 0 over 300,000 iterations,
weight decay 4e-5 including depthwise kernels, label smoothing 0.1, no EMA, BatchNorm 0.9 / 1e-5). The 2.0x model
adds dropout 0.2 before the classifier (`ShuffleNetV2/network.py`): pass --config.model.dropout_rate=0.2 with alpha 2.

What still differs: as configs/shufflenet_v1_imagenet.py says (LR stepped one update earlier, ColorJitter, BGR 0-255
input, the BatchNorm re-estimation pass).
Expected: 69.4% top-1 for 1x (30.6% error, megvii-model/ShuffleNet-Series `ShuffleNetV2/README.md`).
"""
from configs import shufflenet_v1_imagenet


def get_config():
    config = shufflenet_v1_imagenet.get_config()
    config.model.name = 'shufflenet_v2'
    config.model.groups = None
    return config
