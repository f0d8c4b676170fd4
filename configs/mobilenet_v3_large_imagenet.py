"""MobileNetV3-Large 1.0-224 on ImageNet (paper §6.1: RMSprop momentum 0.9, lr 0.1 at batch 4096,
×0.99 every 3 epochs, dropout 0.2, weight decay 1e-5, EMA 0.9999).

    python train.py --config=configs/mobilenet_v3_large_imagenet.py --workdir=gs://bucket/mnv3l

Expected: 75.2% top-1 (paper, Table 3); 0.75: 73.3%.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = 'mobilenet_v3_large'
    config.model.dropout_rate = 0.2
    config.batch_size = 4096
    config.learning_rate = 0.1 * 256 / 4096   # 0.1 at batch 4096
    config.lr_decay_rate = 0.99
    config.lr_decay_epochs = 3.0
    config.weight_decay = 1e-5
    config.num_epochs = 1000.0
    return config
