"""What the library knows about each supported dataset, importable without TensorFlow.

Configs, models, checkpoints and cost reports need a dataset's class count, its ρ = 1 image size or its
split names long before (or without) reading any data; keeping these facts here, apart from the tf.data
pipeline (`input_pipeline`), lets them be looked up without importing TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the models and the training loop need to know about a dataset."""

    name: str
    tfds_name: str
    num_classes: int
    base_image_size: int  # ρ = 1 resolution: 224 for ImageNet, 32 otherwise.
    train_split: str
    eval_split: str
    # Stored as large JPEGs that need Inception-style crops (decoded only where cropped); otherwise small
    # fixed-size images that are cached decoded and only resized.
    large_jpegs: bool = False
    # Random horizontal flips in training; off where mirroring can change the class (digits).
    flip: bool = True


DATASETS: Dict[str, DatasetInfo] = {
    'imagenet2012': DatasetInfo('imagenet2012', 'imagenet2012', 1000, 224, 'train', 'validation',
                                large_jpegs=True),
    'cifar10': DatasetInfo('cifar10', 'cifar10', 10, 32, 'train', 'test'),
    'cifar100': DatasetInfo('cifar100', 'cifar100', 100, 32, 'train', 'test'),
    'digits': DatasetInfo('digits', 'digits', 10, 32, 'train', 'test', flip=False),
}

# Published split sizes, used only where TFDS has no split metadata (a dataset not prepared yet, or
# `tfds.testing.mock_data`), e.g. to plan epochs.
PUBLISHED_SPLIT_SIZES: Dict[str, Dict[str, int]] = {
    'imagenet2012': {'train': 1_281_167, 'validation': 50_000},
    'cifar10': {'train': 50_000, 'test': 10_000},
    'cifar100': {'train': 50_000, 'test': 10_000},
    'digits': {'train': 1_437, 'test': 360},
}

# How pixels are mapped for the model (see `preprocessing.normalize`): 'inception' → [-1, 1],
# 'unit' → [0, 1], 'imagenet' → per-channel mean/std.
NORMALIZATIONS = ('inception', 'unit', 'imagenet')


class DatasetNotPreparedError(ValueError):
    """The dataset is not on disk and cannot be prepared automatically."""


def get_dataset_info(name: str) -> DatasetInfo:
    """Looks up a supported dataset by name."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f'Unknown dataset {name!r}; supported datasets: ' f'{sorted(DATASETS)}.') from None


def published_split_size(name: str, split: str) -> Optional[int]:
    """The published size of a whole split ('train', 'test', ...), or None where none is known."""
    return PUBLISHED_SPLIT_SIZES.get(name, {}).get(split)
