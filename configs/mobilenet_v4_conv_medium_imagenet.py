"""MobileNetV4-Conv-M 1.0 at 256x256 on ImageNet: the tensorflow/models official/vision recipe, 79.9% top-1.

    python train.py --config=configs/mobilenet_v4_conv_medium_imagenet.py --workdir=gs://bucket/mnv4m

Recipe: tensorflow/models `official/vision/configs/experiments/image_classification/imagenet_mobilenetv4_conv_medium_tpu.yaml`
("Top-1 Acc: 79.9% @ 500 epochs"): 256x256; global batch 4096; 156,000 steps (500 epochs); AdamW (`AdamWeightDecay`:
beta 0.9 / 0.999, epsilon 1e-7) with decoupled weight decay 0.1 (every variable but BatchNorm's), no L2 in the loss;
cosine decay from 0.004 (no batch scaling) to 0 over 156,000 steps, linear warmup from 0 over 1560 steps to the
cosine's value there; label smoothing 0.1; dropout 0.2; BatchNorm momentum 0.997, epsilon 1e-3; stochastic depth
0.075 (rising linearly with block depth); no EMA; bfloat16; RandAugment (magnitude 15, probability 0.7, Cutout
excluded) on the Inception crop and flip; mean/std normalization; eval central crop 0.875.

What our trainer cannot express yet: RandAugment (training sees only the crop and flip); stochastic depth (the zoo's
models have no drop-path); 1001 classes (TFDS has 1000). Keras Adam applies epsilon to the uncorrected second moment
(optax: the corrected one), a difference of order 1e-7.
Expected: 79.9% top-1 with RandAugment and stochastic depth (the recipe's); expect less without them.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'mobilenet_v4_conv_medium'
    config.model.dropout_rate = 0.2
    config.model.bn_momentum = 0.997
    config.model.bn_epsilon = 1e-3
    config.normalization = 'imagenet'
    config.rho = 256 / 224               # 256x256
    config.batch_size = 4096
    config.half_precision = True
    config.optimizer = 'adamw'
    config.adam_epsilon = 1e-7
    config.decoupled_weight_decay = 0.1
    config.weight_decay = 0.0
    config.learning_rate = 0.004
    config.scale_learning_rate = False   # the recipe gives 0.004 at 4096 and no scaling rule
    config.warmup_epochs = 5.0           # 1560 steps at 4096
    config.warmup_style = 'absolute'
    config.schedule = 'cosine'
    config.num_epochs = 500.0            # 156,000 steps at 4096 ...
    config.num_train_steps = 156_000     # ... which is what sets the run (and the cosine's) length
    config.label_smoothing = 0.1
    config.ema_decay = 0.0
    return config
