"""Published reference figures: parameter counts and mult-adds, each with its source.

Keys are (model name, alpha, groups) for parameters and (model name, alpha, groups, resolution) for
mult-adds (in millions). Tests and the cost report compare what the zoo builds against these.

Sources:
  keras:  keras.applications 3.x (MobileNet, MobileNetV2, MobileNetV3Large/Small, weights=None,
          1000 classes, include_top): (trainable, non-trainable). At alpha 1.0 these are the counts
          printed by `model.summary()` in the Keras docs and equal torchvision's `num_params`.
  torchvision: `num_params` of torchvision.models weight metadata (shufflenet_v2_x0_5 ... x2_0).
  paper:  MobileNets (arXiv:1704.04861) Tables 4-7; MobileNetV2 and V3 papers; ShuffleNet V1 Tables 1-2,
          ShuffleNet V2 Table 5; TF-slim mobilenet_v1.md / mobilenet README tables (MACs).
  megvii: megvii-model/ShuffleNet-Series README, ShuffleNetV1 params (millions, one decimal).
  cifar_study: the CIFAR-10 reproduction study's plotted parameter counts of its v2 model (thousands,
          one decimal).
  timm:   MobileNetV4 in timm 1.0.31 (`timm/models/mobilenetv3.py::_gen_mobilenet_v4`, the reference whose
          blocks equal tensorflow/models' `official/vision/modeling/backbones/mobilenet.py` tables): exact
          counts from `timm.create_model(name)` (1000 classes), trainable = sum of `parameters()`,
          non-trainable = the BatchNorm running means and variances; its results/*.csv print them as 3.77M,
          2.24M, 1.91M, 9.72M, 32.59M, 11.07M, 7.31M, 37.76M, 22.75M. MACs: `infer_gmacs` of timm's
          results/benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv (GMACs with two decimals, fvcore with
          the unfused attention: they also count one per BatchNorm element, which our mult-adds do not).
"""
from __future__ import annotations

from typing import Optional

# (model, alpha, groups) -> (trainable params, non-trainable params), exact.
EXACT_PARAMS = {
    ('mobilenet_v1', 1.0, None): (4_231_976, 21_888),
    ('mobilenet_v1', 0.75, None): (2_585_560, 16_416),
    ('mobilenet_v1', 0.5, None): (1_331_592, 10_944),
    ('mobilenet_v1', 0.25, None): (470_072, 5_472),
    ('mobilenet_v2', 0.35, None): (1_677_128, 14_080),
    ('mobilenet_v2', 0.5, None): (1_968_680, 18_544),
    ('mobilenet_v2', 0.75, None): (2_636_424, 26_640),
    ('mobilenet_v2', 1.0, None): (3_504_872, 34_112),
    ('mobilenet_v2', 1.3, None): (5_386_792, 44_256),
    ('mobilenet_v2', 1.4, None): (6_108_776, 47_936),
    ('mobilenet_v3_large', 1.0, None): (5_483_032, 24_400),
    ('mobilenet_v3_large', 0.75, None): (3_993_528, 19_088),
    ('mobilenet_v3_small', 1.0, None): (2_542_856, 12_112),
    ('mobilenet_v3_small', 0.75, None): (2_041_872, 9_680),
    # timm (see Sources); the α < 1 models are timm's mobilenetv4_*_035/_050/_075 variants.
    ('mobilenet_v4_conv_small', 1.0, None): (3_774_024, 25_088),
    ('mobilenet_v4_conv_small', 0.5, None): (2_238_952, 13_856),
    ('mobilenet_v4_conv_small', 0.35, None): (1_905_384, 10_688),
    ('mobilenet_v4_conv_medium', 1.0, None): (9_715_512, 67_904),
    ('mobilenet_v4_conv_large', 1.0, None): (32_590_864, 149_552),
    ('mobilenet_v4_hybrid_medium', 1.0, None): (11_074_648, 75_840),
    ('mobilenet_v4_hybrid_medium', 0.75, None): (7_313_528, 57_840),
    ('mobilenet_v4_hybrid_large', 1.0, None): (37_764_624, 164_400),
    ('mobilenet_v4_hybrid_large', 0.75, None): (22_754_984, 124_080),
}
# torchvision publishes the total of trainable parameters only.
EXACT_TRAINABLE_PARAMS = {
    ('shufflenet_v2', 0.5, None): 1_366_792,
    ('shufflenet_v2', 1.0, None): 2_278_604,
    ('shufflenet_v2', 1.5, None): 3_503_624,
    ('shufflenet_v2', 2.0, None): 7_393_996,
}
# Figures printed with limited precision: (model, alpha, groups) -> (value, unit, decimals printed).
ROUNDED_PARAMS = {
    ('mobilenet_v1_conv', 1.0, None): (29.3, 1e6, 1),      # Table 4
    ('mobilenet_v1_shallow', 1.0, None): (2.9, 1e6, 1),    # Table 5
    ('shufflenet_v1', 0.5, 3): (0.7, 1e6, 1),
    ('shufflenet_v1', 1.0, 3): (1.9, 1e6, 1),
    ('shufflenet_v1', 1.5, 3): (3.4, 1e6, 1),
    ('shufflenet_v1', 2.0, 3): (5.4, 1e6, 1),
    ('shufflenet_v1', 0.5, 8): (1.0, 1e6, 1),
    ('shufflenet_v1', 1.0, 8): (2.4, 1e6, 1),
    ('shufflenet_v1', 1.5, 8): (4.3, 1e6, 1),
    ('shufflenet_v1', 2.0, 8): (6.5, 1e6, 1),
    ('cifar_mobilenet_v2', 0.5, None): (15.5, 1e3, 1),
    ('cifar_mobilenet_v2', 0.75, None): (31.7, 1e3, 1),
    ('cifar_mobilenet_v2', 0.8, None): (35.2, 1e3, 1),
    ('cifar_mobilenet_v2', 0.9, None): (43.7, 1e3, 1),
    ('cifar_mobilenet_v2', 1.0, None): (53.5, 1e3, 1),
    ('cifar_mobilenet_v2', 2.0, None): (197, 1e3, 0),
}

# (model, alpha, groups, resolution) -> published mult-adds in millions.
PUBLISHED_MACS = {}
# TF-slim mobilenet_v1.md, the 16-model grid.
for _alpha, _row in {1.0: (569, 418, 291, 186), 0.75: (317, 233, 162, 104),
                     0.5: (150, 110, 77, 49), 0.25: (41, 34, 21, 14)}.items():
    for _res, _macs in zip((224, 192, 160, 128), _row):
        PUBLISHED_MACS[('mobilenet_v1', _alpha, None, _res)] = _macs
PUBLISHED_MACS[('mobilenet_v1_conv', 1.0, None, 224)] = 4866      # Table 4
PUBLISHED_MACS[('mobilenet_v1_shallow', 1.0, None, 224)] = 307    # Table 5
# TF-slim MobileNetV2 README, multiplier x resolution grid.
for _alpha, _row in {1.0: (300, 221, 154, 99, 56), 0.75: (209, 153, 107, 69, 39),
                     0.5: (97, 71, 50, 32, 18), 0.35: (59, 43, 30, 20, 11)}.items():
    for _res, _macs in zip((224, 192, 160, 128, 96), _row):
        PUBLISHED_MACS[('mobilenet_v2', _alpha, None, _res)] = _macs
PUBLISHED_MACS[('mobilenet_v2', 1.4, None, 224)] = 582
PUBLISHED_MACS[('mobilenet_v2', 1.3, None, 224)] = 509
# MobileNetV3 paper, Table 3.
PUBLISHED_MACS[('mobilenet_v3_large', 1.0, None, 224)] = 219
PUBLISHED_MACS[('mobilenet_v3_large', 0.75, None, 224)] = 155
PUBLISHED_MACS[('mobilenet_v3_small', 1.0, None, 224)] = 56
PUBLISHED_MACS[('mobilenet_v3_small', 0.75, None, 224)] = 44
# ShuffleNet V1, Table 1 (1x for each group count) and Table 2 (0.5x, 0.25x; g=3 row).
for _groups, _macs in {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}.items():
    PUBLISHED_MACS[('shufflenet_v1', 1.0, _groups, 224)] = _macs
PUBLISHED_MACS[('shufflenet_v1', 0.5, 3, 224)] = 38
PUBLISHED_MACS[('shufflenet_v1', 0.25, 3, 224)] = 13
# ShuffleNet V2, Table 5.
for _alpha, _macs in {0.5: 41, 1.0: 146, 1.5: 299, 2.0: 591}.items():
    PUBLISHED_MACS[('shufflenet_v2', _alpha, None, 224)] = _macs
# MobileNetV4, timm's benchmark CSV (see Sources) at the tensorflow/models recipes' training resolutions.
# Not listed: conv_small 0.5x and 0.35x at 224 (0.07 and 0.05 GMACs: two decimals are too coarse for 3%).
PUBLISHED_MACS[('mobilenet_v4_conv_small', 1.0, None, 224)] = 190
PUBLISHED_MACS[('mobilenet_v4_conv_medium', 1.0, None, 256)] = 1100
PUBLISHED_MACS[('mobilenet_v4_conv_large', 1.0, None, 384)] = 6430
PUBLISHED_MACS[('mobilenet_v4_hybrid_medium', 1.0, None, 256)] = 1290
PUBLISHED_MACS[('mobilenet_v4_hybrid_large', 1.0, None, 384)] = 7770


def published_params(model: str, alpha: float, groups: Optional[int]) -> Optional[float]:
    """The published trainable-parameter figure (exact or rounded) for a configuration, or None."""
    key = (model, float(alpha), groups)
    if key in EXACT_PARAMS:
        return EXACT_PARAMS[key][0]
    if key in EXACT_TRAINABLE_PARAMS:
        return EXACT_TRAINABLE_PARAMS[key]
    if key in ROUNDED_PARAMS:
        value, unit, _ = ROUNDED_PARAMS[key]
        return value * unit
    return None


def published_macs(model: str, alpha: float, groups: Optional[int], resolution: int) -> Optional[float]:
    """The published mult-adds (a count, not millions) for a configuration, or None."""
    value = PUBLISHED_MACS.get((model, float(alpha), groups, int(resolution)))
    return None if value is None else value * 1e6
