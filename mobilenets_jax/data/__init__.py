"""Datasets: their metadata (`datasets`, no TensorFlow) and TFDS input pipelines (`input_pipeline`).

Importing this package imports no TensorFlow: the metadata names are here at once, while the pipeline
names (`create_train_dataset`, `ensure_dataset`, `num_examples`, `preprocessing`, `digits`, ...) import
TensorFlow on first use; that first use also registers the offline `digits` TFDS builder and keeps
TensorFlow off the GPU.
"""

import importlib

from mobilenets_jax.data.datasets import DATASETS
from mobilenets_jax.data.datasets import DatasetInfo
from mobilenets_jax.data.datasets import DatasetNotPreparedError
from mobilenets_jax.data.datasets import get_dataset_info
from mobilenets_jax.data.datasets import NORMALIZATIONS

# name -> the submodule that defines it (importing it imports TensorFlow).
_PIPELINE_NAMES = {
    'create_eval_dataset': 'input_pipeline',
    'create_train_dataset': 'input_pipeline',
    'ensure_dataset': 'input_pipeline',
    'num_examples': 'input_pipeline',
}
_PIPELINE_MODULES = ('digits', 'input_pipeline', 'preprocessing')


def __getattr__(name):
    if name in _PIPELINE_MODULES:
        return importlib.import_module(f'{__name__}.{name}')
    if name in _PIPELINE_NAMES:
        return getattr(importlib.import_module(f'{__name__}.{_PIPELINE_NAMES[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'DATASETS',
    'DatasetInfo',
    'DatasetNotPreparedError',
    'NORMALIZATIONS',
    'create_eval_dataset',
    'create_train_dataset',
    'digits',
    'ensure_dataset',
    'get_dataset_info',
    'num_examples',
    'preprocessing',
]
