"""MobileNetV4-Hybrid-L 1.0 at 384x384 on ImageNet: the tensorflow/models official/vision recipe, 83.7% top-1.

    python train.py --config=configs/mobilenet_v4_hybrid_large_imagenet.py --workdir=gs://bucket/mnv4hl

Recipe: tensorflow/models `official/vision/configs/experiments/image_classification/imagenet_mobilenetv4_hybrid_large_tpu.yaml`
("Top-1 Acc: 83.7% @ 500 epochs"): 384x384; global batch 16384; 39,000 steps (500 epochs); AdamW (beta 0.9 /
0.999, epsilon 1e-7) with decoupled weight decay 0.2, no L2 in the loss; cosine decay from 0.01 (no batch scaling)
to 0.001 × 0.01 over 39,000 steps (`alpha: 0.001`) after a linear warmup of 1560 steps; label smoothing 0.1 on soft
labels; dropout 0.2; BatchNorm momentum 0.997, epsilon 1e-3; stochastic depth 0.35 (rising with block depth); no
EMA; bfloat16; RandAugment (magnitude 15, Cutout excluded) and Mixup 0.8 / CutMix 1.0 (on 30% of the batches);
mean/std normalization; eval central crop 0.875.

What our trainer cannot express yet: RandAugment, Mixup and CutMix (training sees only the crop and flip);
stochastic depth; 1001 classes (TFDS has 1000). The cosine's `alpha` 0.001 (official/modeling/optimization
`lr_schedule.CosineDecayWithOffset` wraps Keras `CosineDecay`: (1 − alpha)·cosine + alpha) is
`config.cosine_end_factor`. The rest is the conv-medium config's mapping.
Expected: 83.7% top-1 with the recipe's augmentation and stochastic depth; expect less without them.
"""
from configs import mobilenet_v4_conv_medium_imagenet


def get_config():
    config = mobilenet_v4_conv_medium_imagenet.get_config()   # the same AdamW + cosine recipe family
    config.model.name = 'mobilenet_v4_hybrid_large'
    config.rho = 384 / 224               # 384x384
    config.batch_size = 16384
    config.decoupled_weight_decay = 0.2
    config.learning_rate = 0.01          # at 16384, no scaling rule
    config.cosine_end_factor = 0.001     # the cosine's alpha
    config.warmup_epochs = 20.0          # 1560 steps at 16384
    config.num_epochs = 500.0            # 39,000 steps at 16384 ...
    config.num_train_steps = 39_000      # ... which sets the run's length
    return config
