"""MobileNetV3-Small 1.0-224 on ImageNet: the tensorflow/models official/vision recipe, 67.5% top-1.

    python train.py --config=configs/mobilenet_v3_small_imagenet.py --workdir=gs://bucket/mnv3s

Recipe: tensorflow/models `official/vision/configs/experiments/image_classification/imagenet_mobilenetv3small_tpu.yaml`
("67.5% top-1 and 87.7% top-5"; the version with `initial_learning_rate: 0.426`): global batch 4096; learning rate
0.426 at 4096 ("0.02 * (batch_size / 192)"), linear warmup from 0 over 1560 steps to the schedule's value there;
staircase ×0.99 every 936 steps (3 epochs), counted from step 0; 312,000 steps (1000 epochs); Keras RMSprop rho 0.9,
momentum 0.9, epsilon 0.002; L2 1e-5 coupled on conv/dense kernels (not depthwise); label smoothing 0.1; dropout
0.2; BatchNorm momentum 0.997, epsilon 1e-3; EMA 0.9999 with the dynamic decay min(0.9999, (1+t)/(10+t)), BatchNorm
statistics included, evaluated; bfloat16; Inception crop, flip, mean/std; eval central crop 0.875.

What still differs: 1000 classes instead of 1001; official/vision counts the EMA's t after the update and starts the
average at 0 (ours: t before the update, starting from the initial weights), which matters only in the first steps.
The paper's 67.4% (Table 3) recipe (§6.1) gives no epoch count.
Expected: 67.5% top-1 (the recipe's).
"""
from configs import mobilenet_v1_imagenet


def get_config():
    config = mobilenet_v1_imagenet.get_config()   # the same official/vision experiment
    config.model.name = 'mobilenet_v3_small'
    config.learning_rate = 0.426 / 16    # per 256 images: 0.426 at 4096
    config.lr_decay_rate = 0.99
    config.lr_decay_epochs = 3.0         # 936 steps at 4096
    config.num_epochs = 1000.0           # 312,000 steps at 4096
    config.ema_decay = 0.9999
    return config
