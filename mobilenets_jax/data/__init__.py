"""Input pipelines: TFDS datasets as per-process tf.data streams.

Importing this package registers the offline `digits` TFDS builder and keeps
TensorFlow off the GPU.
"""

from mobilenets_jax.data import digits
from mobilenets_jax.data import preprocessing
from mobilenets_jax.data.input_pipeline import create_eval_dataset
from mobilenets_jax.data.input_pipeline import create_train_dataset
from mobilenets_jax.data.input_pipeline import DATASETS
from mobilenets_jax.data.input_pipeline import DatasetInfo
from mobilenets_jax.data.input_pipeline import DatasetNotPreparedError
from mobilenets_jax.data.input_pipeline import ensure_dataset
from mobilenets_jax.data.input_pipeline import get_dataset_info
from mobilenets_jax.data.input_pipeline import num_examples

__all__ = [
    'DATASETS',
    'DatasetInfo',
    'DatasetNotPreparedError',
    'create_eval_dataset',
    'create_train_dataset',
    'digits',
    'ensure_dataset',
    'get_dataset_info',
    'num_examples',
    'preprocessing',
]
