"""tf.data input pipelines over TFDS, sharded per JAX process.

Training streams are infinite, shuffled and augmented; each process reads its
own even share of the split (`tfds.split_for_jax_process`) and yields its share
of the global batch. Evaluation makes one pass in which every example counts
exactly once: the last partial batch is padded and carries `mask` = 0 for the
padding, and every process yields the same number of batches (padding with
all-masked batches where its share is smaller), because a multi-host
evaluation step is a collective that all processes must enter equally often.

tf.data only ever produces host NumPy arrays; TensorFlow is kept off the GPU
so that it never competes with JAX for accelerator memory.
"""

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenets_jax.data import digits as _digits  # Registers 'digits'.
from mobilenets_jax.data import preprocessing
from mobilenets_jax.data.datasets import DatasetInfo
from mobilenets_jax.data.datasets import DatasetNotPreparedError
from mobilenets_jax.data.datasets import get_dataset_info
from mobilenets_jax.data.datasets import published_split_size

del _digits  # Imported for its registration side effect only.


def _hide_gpus_from_tensorflow() -> None:
    """TF must not reserve GPU memory: JAX owns the accelerators."""
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError as e:  # TF devices were already initialized.
        logging.warning('Could not hide GPUs from TensorFlow: %s', e)


_hide_gpus_from_tensorflow()

AUTOTUNE = tf.data.AUTOTUNE
Example = Dict[str, tf.Tensor]


_DEFAULT_SHUFFLE_BUFFER = 10_000
_IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def _builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    return tfds.builder(get_dataset_info(name).tfds_name, data_dir=data_dir)


def num_examples(name: str, split: str, data_dir: Optional[str] = None) -> int:
    """Number of examples in `split` (slices like 'train[:90%]' work too)."""
    builder = _builder(name, data_dir)
    if builder.info.splits:
        return builder.info.splits[split].num_examples
    published = published_split_size(name, split)
    if published is not None:
        logging.warning(
            'No split metadata for %s in %s; using the published size ' 'of %r.',
            name,
            builder.data_dir_root,
            split,
        )
        return published
    raise DatasetNotPreparedError(_not_prepared_message(builder))


# ----------------------------------------------------------------- preparing


def _imagenet_message(builder: tfds.core.DatasetBuilder) -> str:
    root = builder.data_dir_root
    return (
        f'imagenet2012 is not prepared in {root}. ImageNet cannot be downloaded '
        'automatically: register at https://image-net.org/download-images, '
        f'download {" and ".join(_IMAGENET_MANUAL_FILES)} into the TFDS '
        f'manual_dir {root}/downloads/manual/, then run '
        f'`tfds build imagenet2012 --data_dir={root}` (or call '
        'mobilenets_jax.data.ensure_dataset("imagenet2012", data_dir=...)).'
    )


def _not_prepared_message(builder: tfds.core.DatasetBuilder, error: Optional[BaseException] = None) -> str:
    if builder.name == 'imagenet2012':
        return _imagenet_message(builder)
    root = builder.data_dir_root
    cause = f' ({type(error).__name__}: {error})' if error else ''
    return (
        f'{builder.name} is not prepared in {root} and could not be prepared '
        f'here{cause}. On a machine with internet access run '
        f'`tfds build {builder.name} --data_dir=<dir>` and copy '
        f'<dir>/{builder.name} to {root}/, or pass the data_dir of a prepared '
        'copy.'
    )


def _prepare_imagenet(builder: tfds.core.DatasetBuilder) -> None:
    """Builds ImageNet from the manually downloaded tars, if they are there."""
    manual_dir = builder.data_dir_root / 'downloads' / 'manual'
    if not all((manual_dir / f).exists() for f in _IMAGENET_MANUAL_FILES):
        raise DatasetNotPreparedError(_imagenet_message(builder))
    logging.info('Preparing imagenet2012 from %s (this takes hours).', manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def ensure_dataset(name: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """Makes sure `name` is prepared in `data_dir`, preparing it if it can.

    digits builds offline in seconds; CIFAR downloads (needs internet);
    ImageNet only builds from manually downloaded tars. Anything that cannot be
    prepared raises `DatasetNotPreparedError` saying what to do.
    """
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if builder.name == 'imagenet2012':
        _prepare_imagenet(builder)
        return builder
    logging.info('Preparing %s in %s.', builder.name, builder.data_dir_root)
    try:
        builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetNotPreparedError(_not_prepared_message(builder, e)) from e
    return builder


# ------------------------------------------------------------------ reading


def _process_layout(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
    """(index, count) of this process, defaulting to JAX's view."""
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index={process_index} is not in ' f'[0, process_count={process_count}).')
    return process_index, process_count


def _per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f'global_batch_size={global_batch_size} must be a '
            f'positive multiple of process_count={process_count}.'
        )
    return global_batch_size // process_count


def _process_seeds(seed: int, process_index: int, num: int) -> Sequence[int]:
    """Independent, reproducible seeds for this process from one user seed."""
    state = np.random.SeedSequence([seed, process_index]).generate_state(num)
    return [int(s) for s in state]


def _decoders(info: DatasetInfo) -> Optional[Dict[str, Any]]:
    """ImageNet stays encoded so crops can decode only what they keep."""
    if info.large_jpegs:
        return {'image': tfds.decode.SkipDecoding()}
    return None


def _read(
    info: DatasetInfo, builder: tfds.core.DatasetBuilder, split, *, shuffle_files: bool, seed: Optional[int]
) -> tf.data.Dataset:
    """builder.as_dataset, with "not prepared" turned into a how-to error."""
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    # Ordered datasets (digits) refuse file shuffling; the buffer shuffles them.
    shuffle_files = shuffle_files and not builder.info.disable_shuffling
    try:
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, decoders=_decoders(info), read_config=read_config
        )
    except AssertionError as e:  # TFDS' way of saying "no data in data_dir".
        message = (
            _imagenet_message(builder) if info.large_jpegs else _not_prepared_message(builder)
        )
        raise DatasetNotPreparedError(message) from e
    if not info.large_jpegs:
        ds = ds.cache()  # Small, fixed-size images: keep them decoded in memory.
    return ds


def _train_preprocess_fn(
    info: DatasetInfo, image_size: int, augment: bool, normalization: str
) -> Callable[[Example, tf.Tensor], Example]:
    """Per-example training transform: (example, seed[2]) -> image, label."""

    def preprocess(example: Example, seed: tf.Tensor) -> Example:
        image = example['image']
        if info.large_jpegs:
            if augment:
                image = preprocessing.imagenet_train(image, seed, image_size)
            else:
                image = preprocessing.imagenet_eval(image, image_size)
        else:
            image = preprocessing.small_image_train(
                image, seed, image_size, augment=augment, flip=info.flip
            )
        return {
            'image': preprocessing.normalize(image, normalization),
            'label': tf.cast(example['label'], tf.int32),
        }

    return preprocess


def _eval_preprocess_fn(
    info: DatasetInfo, image_size: int, normalization: str
) -> Callable[[Example], Example]:
    """Per-example deterministic transform; marks the example as real."""

    def preprocess(example: Example) -> Example:
        if info.large_jpegs:
            image = preprocessing.imagenet_eval(example['image'], image_size)
        else:
            image = preprocessing.small_image_eval(example['image'], image_size)
        return {
            'image': preprocessing.normalize(image, normalization),
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32),
        }

    return preprocess


def _check_image_args(image_size: int, normalization: str) -> None:
    if image_size <= 0:
        raise ValueError(f'image_size must be positive, got {image_size}.')
    if normalization not in preprocessing.NORMALIZATIONS:
        raise ValueError(
            f'Unknown normalization {normalization!r}; expected one ' f'of {preprocessing.NORMALIZATIONS}.'
        )


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """A distinct int64 seed per (seed, epoch): `seed` is a 32-bit value from `_process_seeds`."""
    return tf.constant(seed, tf.int64) + tf.cast(epoch, tf.int64) * (2 ** 32)


def _examples_in_epoch(ds: tf.data.Dataset, builder: tfds.core.DatasetBuilder, split) -> int:
    """How many examples one pass over this process's share holds: TFDS' cardinality, else a count."""
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    logging.warning('%s: no cardinality for %r; counting its examples once.', builder.name, split)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def create_train_dataset(
    name: str,
    *,
    global_batch_size: int,
    image_size: int,
    data_dir: Optional[str] = None,
    augment: bool = True,
    normalization: str = 'inception',
    seed: int = 0,
    start_step: int = 0,
    shuffle_buffer: Optional[int] = None,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    split: Optional[str] = None,
) -> tf.data.Dataset:
    """Infinite, shuffled, augmented batches of this process's training share, from batch `start_step` on.

    `split` defaults to the dataset's train split; a slice such as 'train[:80%]' holds out the rest.

    Yields {'image': float32 [B, image_size, image_size, 3], 'label': int32 [B]}
    with B = global_batch_size // process_count.

    The stream is a function of `seed` alone, so a resumed run sees exactly the batches an uninterrupted
    one would: epoch e is the share shuffled with a seed drawn from (seed, e), each example's stateless
    augmentation seed is (seed, e, its position in the epoch), and batches run on across epoch
    boundaries; `start_step` skips the first `start_step` batches by jumping to their epoch and skipping
    the rest of the way on undecoded records. Files are read in order (a per-epoch file order could not
    be replayed); TFDS writes its records shuffled, and the buffer reshuffles them every epoch.
    """
    info = get_dataset_info(name)
    _check_image_args(image_size, normalization)
    if start_step < 0:
        raise ValueError(f'start_step must be >= 0, got {start_step}.')
    process_index, process_count = _process_layout(process_index, process_count)
    batch_size = _per_process_batch_size(global_batch_size, process_count)
    _, shuffle_seed, augment_seed = _process_seeds(seed, process_index, 3)

    builder = _builder(name, data_dir)
    split = tfds.split_for_jax_process(
        split or info.train_split, process_index=process_index, process_count=process_count
    )
    examples = _read(info, builder, split, shuffle_files=False, seed=None)
    epoch_size = _examples_in_epoch(examples, builder, split)
    if epoch_size < 1:
        raise DatasetNotPreparedError(f'{name}: the training split {split!r} of this process is empty.')
    buffer = shuffle_buffer or max(_DEFAULT_SHUFFLE_BUFFER, 16 * batch_size)

    def epoch(index):
        shuffled = examples.shuffle(buffer, seed=_epoch_seed(shuffle_seed, index), reshuffle_each_iteration=False)
        augment_seeds = _epoch_seed(augment_seed, index)
        return shuffled.enumerate().map(lambda position, example: (example, tf.stack([augment_seeds, position])))

    first_epoch, offset = divmod(start_step * batch_size, epoch_size)
    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(offset)
    ds = ds.map(_train_preprocess_fn(info, image_size, augment, normalization), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)


def _examples_per_process(
    builder: tfds.core.DatasetBuilder, split: str, process_count: int, local_ds: tf.data.Dataset
) -> Sequence[int]:
    """How many examples each process's share of `split` holds.

    Taken from the split metadata, so no process has to read the others' data.
    Without metadata (`tfds.testing.mock_data`) every process's share is taken
    to have this process's (known) cardinality.
    """
    if builder.info.splits:
        subsplits = tfds.even_splits(split, n=process_count)
        return [builder.info.splits[s].num_examples for s in subsplits]
    cardinality = int(local_ds.cardinality())
    if cardinality < 0:
        raise ValueError(
            f'Cannot size the eval split {split!r} of '
            f'{builder.name}: no split metadata and unknown '
            'cardinality.'
        )
    logging.warning(
        'No split metadata for %s; assuming %d examples per ' 'process.', builder.name, cardinality
    )
    return [cardinality] * process_count


def _padding(element_spec: Dict[str, tf.TensorSpec], count: int) -> tf.data.Dataset:
    """`count` all-zero examples, so also mask = 0: they count for nothing."""
    zeros = {k: tf.zeros(spec.shape, spec.dtype) for k, spec in element_spec.items()}
    return tf.data.Dataset.from_tensors(zeros).repeat(count)


def create_eval_dataset(
    name: str,
    *,
    global_batch_size: int,
    image_size: int,
    split: Optional[str] = None,
    data_dir: Optional[str] = None,
    normalization: str = 'inception',
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> tf.data.Dataset:
    """One deterministic pass over this process's share of `split`.

    Yields full batches {'image', 'label', 'mask'}: mask is 1.0 for real
    examples and 0.0 for padding. Every example of the split appears exactly
    once across processes, and every process yields the same number of
    batches: ceil(largest share / per-process batch size).
    """
    info = get_dataset_info(name)
    _check_image_args(image_size, normalization)
    process_index, process_count = _process_layout(process_index, process_count)
    batch_size = _per_process_batch_size(global_batch_size, process_count)
    split = split or info.eval_split

    builder = _builder(name, data_dir)
    local_split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    ds = _read(info, builder, local_split, shuffle_files=False, seed=None)
    shares = _examples_per_process(builder, split, process_count, ds)
    num_batches = math.ceil(max(shares) / batch_size)
    num_padding = num_batches * batch_size - shares[process_index]

    ds = ds.map(_eval_preprocess_fn(info, image_size, normalization), num_parallel_calls=AUTOTUNE)
    ds = ds.concatenate(_padding(ds.element_spec, num_padding))
    ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)
