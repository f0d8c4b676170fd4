"""ShuffleNet V1 1x (g=3) on ImageNet: the paper's recipe (§4) as the authors' released train.py runs it, 67.4% top-1.

    python train.py --config=configs/shufflenet_v1_imagenet.py --workdir=gs://bucket/shufflenet_v1
    python train.py --config=configs/shufflenet_v1_imagenet.py --workdir=... --config.model.groups=8

Recipe: ShuffleNet paper (Zhang et al. 2018) §4: batch 1024, weight decay 4e-5, learning rate decreased linearly from
0.5 to 0 over 3×10^5 iterations; megvii-model/ShuffleNet-Series `ShuffleNetV1/train.py` fills in the rest: SGD momentum
0.9 (PyTorch form, not Nesterov), coupled weight decay 4e-5 on every weight of two or more dimensions (conv, depthwise
and group conv, FC kernels; not BatchNorm or biases), label smoothing 0.1, no dropout, no EMA, BatchNorm PyTorch
defaults (momentum 0.9 in our convention, epsilon 1e-5), float32, RandomResizedCrop (area 0.08-1) and flip; eval
resize 256, centre crop 224 (= 0.875).

What still differs: megvii's train.py steps its LambdaLR before each update, so update k uses 0.5·(1-(k+1)/300000)
(ours 0.5·(1-k/300000): one step earlier); it adds ColorJitter(0.4, 0.4, 0.4), feeds BGR pixels in 0-255 without
normalization (ours: RGB in [-1, 1]) and re-estimates BatchNorm statistics over 1250 batches after training; none
of these is implemented here. SAME padding (ours) vs the release's symmetric padding matters only for its weights.
Expected: 67.4% top-1 for 1x g=3 (32.6% error, paper Table 3; the release's README: 67.8%).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'shufflenet_v1'
    config.model.groups = 3
    config.model.dropout_rate = 0.0
    config.model.bn_momentum = 0.9
    config.model.bn_epsilon = 1e-5
    config.batch_size = 1024
    config.optimizer = 'sgd'
    config.momentum = 0.9
    config.nesterov = False
    config.learning_rate = 0.125         # per 256 images: 0.5 at 1024
    config.scale_learning_rate = True
    config.warmup_epochs = 0.0
    config.schedule = 'linear'
    config.num_train_steps = 300_000     # 3×10^5 iterations (about 240 epochs at 1024)
    config.num_epochs = 240.0
    config.weight_decay = 4e-5
    config.weight_decay_depthwise = True
    config.label_smoothing = 0.1
    config.ema_decay = 0.0
    return config
