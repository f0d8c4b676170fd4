"""MobileNetV4-Conv-S 1.0-224 on ImageNet: the tensorflow/models official/vision recipe, 73.8% top-1.

    python train.py --config=configs/mobilenet_v4_conv_small_imagenet.py --workdir=gs://bucket/mnv4s

Recipe: tensorflow/models `official/vision/configs/experiments/image_classification/imagenet_mobilenetv4_conv_small_tpu.yaml`
("Top-1 Acc: 73.8% @ ~9623 epochs"): 224x224; global batch 4096; 3,002,368 steps (~9623 epochs of 312); AdamW
(`AdamWeightDecay`: beta_1 0.6, epsilon 1e-6) with decoupled weight decay 0.01 (every variable but BatchNorm's) plus
L2 1e-5 in the loss on conv and dense kernels (not depthwise); cosine decay from 0.002 (no batch scaling) to 0 over
all 3,002,368 steps, linear warmup from 0 over 1560 steps to the cosine's value there; label smoothing 0.1; dropout
0.3; BatchNorm momentum 0.95, epsilon 1e-6; EMA 0.9999 from step 1560 (no dynamic decay); float32; RandAugment
(2 layers, magnitude 9, applied with probability 0.5, Cutout excluded) on the Inception crop and flip; mean/std
normalization; eval central crop 0.875.

What our trainer cannot express yet: RandAugment (training sees only the crop and flip); AdamW's beta_1 (optax's 0.9
is used, not 0.6); the EMA's start at step 1560 without dynamic decay (ours averages from step 0 with the warmup
decay min(0.9999, (1+t)/(10+t))); 1001 classes (TFDS has 1000). Keras Adam applies epsilon to the uncorrected
second moment (optax: the corrected one), a difference of order epsilon.
Expected: 73.8% top-1 with RandAugment (the recipe's); expect less without it.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'mobilenet_v4_conv_small'
    config.model.dropout_rate = 0.3
    config.model.bn_momentum = 0.95
    config.model.bn_epsilon = 1e-6
    config.normalization = 'imagenet'
    config.rho = 1.0                     # 224x224
    config.batch_size = 4096
    config.half_precision = False        # the recipe trains in float32
    config.optimizer = 'adamw'
    config.adam_epsilon = 1e-6
    config.decoupled_weight_decay = 0.01
    config.weight_decay = 1e-5           # the recipe's l2_weight_decay, coupled, kernels but not depthwise
    config.learning_rate = 0.002
    config.scale_learning_rate = False   # 0.002 at 4096, no scaling rule
    config.warmup_epochs = 5.0           # 1560 steps at 4096
    config.warmup_style = 'absolute'
    config.schedule = 'cosine'
    config.num_epochs = 9623.0           # the YAML's label for its 3,002,368 steps (312 per epoch) ...
    config.num_train_steps = 3_002_368   # ... and in steps, which is what sets it (and the cosine's)
    config.label_smoothing = 0.1
    config.ema_decay = 0.9999
    return config
