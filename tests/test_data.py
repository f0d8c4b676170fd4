"""Tests of the input pipeline: the offline digits builder, exact (padded and
masked) evaluation across processes, training batches, and end-to-end runs on
`tfds.testing.mock_data` for ImageNet and CIFAR. Nothing here downloads."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenets_jax import data
from mobilenets_jax.data import datasets
from mobilenets_jax.data import digits
from mobilenets_jax.data import preprocessing


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    """Builds digits once for the module (about a second, fully offline)."""
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    data.ensure_dataset('digits', data_dir=data_dir)
    return data_dir


@pytest.fixture(scope='module')
def sklearn_digits():
    return sk_datasets.load_digits()


def _as_numpy_list(ds):
    return list(tfds.as_numpy(ds))


def _take(ds, n):
    return list(tfds.as_numpy(ds.take(n)))


# ------------------------------------------------------------------- digits


def test_digits_split_sizes(digits_dir):
    assert data.num_examples('digits', 'train', digits_dir) == 1437
    assert data.num_examples('digits', 'test', digits_dir) == 360
    features = tfds.builder('digits', data_dir=digits_dir).info.features
    assert features['image'].shape == (32, 32, 3)
    assert features['label'].num_classes == 10


def test_digits_test_split_is_every_fifth_sklearn_example(digits_dir, sklearn_digits):
    builder = tfds.builder('digits', data_dir=digits_dir)
    test = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
    assert test['image'].shape == (360, 32, 32, 3)
    assert test['image'].dtype == np.uint8
    np.testing.assert_array_equal(test['label'], sklearn_digits.target[::5])
    for k in (0, 1, 71):  # Example k of test is sklearn example 5k.
        np.testing.assert_array_equal(test['image'][k], digits.upsample_digit(sklearn_digits.images[5 * k]))


def test_digits_train_split_is_the_rest(digits_dir, sklearn_digits):
    builder = tfds.builder('digits', data_dir=digits_dir)
    train = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1))
    rest = np.arange(len(sklearn_digits.target)) % 5 != 0
    assert train['image'].shape == (1437, 32, 32, 3)
    assert train['image'].dtype == np.uint8
    assert train['image'].max() == 255  # Scaled from 0..16 to 0..255.
    np.testing.assert_array_equal(train['label'], sklearn_digits.target[rest])
    assert set(np.unique(train['label'])) == set(range(10))


# --------------------------------------------------------------- evaluation


def test_eval_single_process_counts_every_example_once(digits_dir, sklearn_digits):
    batches = _as_numpy_list(
        data.create_eval_dataset(
            'digits',
            global_batch_size=48,
            image_size=32,
            data_dir=digits_dir,
            process_index=0,
            process_count=1,
        )
    )
    assert len(batches) == 8  # ceil(360 / 48)
    for batch in batches:
        assert batch['image'].shape == (48, 32, 32, 3)
        assert batch['image'].dtype == np.float32
        assert batch['label'].dtype == np.int32
        assert batch['mask'].dtype == np.float32
    mask = np.concatenate([b['mask'] for b in batches])
    labels = np.concatenate([b['label'] for b in batches])
    assert mask.sum() == 360
    np.testing.assert_array_equal(labels[mask == 1], sklearn_digits.target[::5])


@pytest.mark.parametrize('split,total', [('test', 360), ('test[:97]', 97)])
def test_eval_multi_process_pads_to_equal_batch_counts(digits_dir, sklearn_digits, split, total):
    per_process = [
        _as_numpy_list(
            data.create_eval_dataset(
                'digits',
                global_batch_size=48,
                image_size=32,
                split=split,
                data_dir=digits_dir,
                process_index=i,
                process_count=3,
            )
        )
        for i in range(3)
    ]
    assert len({len(batches) for batches in per_process}) == 1
    masked_labels, mask_sum = [], 0.0
    for batches in per_process:
        for batch in batches:
            assert batch['image'].shape == (16, 32, 32, 3)
            mask_sum += batch['mask'].sum()
            masked_labels.append(batch['label'][batch['mask'] == 1])
    assert mask_sum == total
    # Processes hold consecutive shares: together, every example exactly once.
    np.testing.assert_array_equal(np.concatenate(masked_labels), sklearn_digits.target[::5][:total])


def test_eval_uneven_shares_add_all_masked_batches(digits_dir):
    # 97 examples over 3 processes: shares 33/32/32, per-process batch 16, so
    # process 0 needs 3 batches and the others get an extra all-masked one.
    batches = _as_numpy_list(
        data.create_eval_dataset(
            'digits',
            global_batch_size=48,
            image_size=32,
            split='test[:97]',
            data_dir=digits_dir,
            process_index=2,
            process_count=3,
        )
    )
    assert [b['mask'].sum() for b in batches] == [16, 16, 0]
    assert np.all(batches[-1]['image'] == 0)


# ----------------------------------------------------------------- training


@pytest.mark.parametrize('normalization,low,high', [('inception', -1.0, 1.0), ('unit', 0.0, 1.0)])
@pytest.mark.parametrize('image_size', [32, 24])
def test_train_batches(digits_dir, normalization, low, high, image_size):
    ds = data.create_train_dataset(
        'digits',
        global_batch_size=64,
        image_size=image_size,
        data_dir=digits_dir,
        normalization=normalization,
        process_index=0,
        process_count=2,
    )
    for batch in _take(ds, 3):
        assert set(batch) == {'image', 'label'}
        assert batch['image'].shape == (32, image_size, image_size, 3)
        assert batch['image'].dtype == np.float32
        assert batch['label'].dtype == np.int32
        assert low <= batch['image'].min() < batch['image'].max() <= high
        assert np.all((batch['label'] >= 0) & (batch['label'] < 10))


def test_train_is_infinite_and_reproducible(digits_dir):
    def first_batches(seed):
        ds = data.create_train_dataset(
            'digits',
            global_batch_size=512,
            image_size=32,
            data_dir=digits_dir,
            seed=seed,
            process_index=0,
            process_count=1,
        )
        return _take(ds, 4)  # 2048 examples: more than one epoch of 1437.

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert len(a) == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
    assert not np.array_equal(a[0]['label'], c[0]['label'])


@pytest.mark.parametrize('start_step', [1, 3, 5])
def test_train_from_start_step_is_the_rest_of_the_stream(digits_dir, start_step):
    """A resumed run sees exactly the batches an uninterrupted one would (epoch boundaries included)."""
    def batches(start, count):
        return _take(data.create_train_dataset('digits', global_batch_size=512, image_size=16, data_dir=digits_dir,
                                               seed=3, start_step=start, process_index=0, process_count=1), count)

    whole = batches(0, max(start_step + 2, 4))
    resumed = batches(start_step, 2)
    for x, y in zip(whole[start_step:start_step + 2], resumed):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    # Epochs differ in order (1437 examples per epoch: batch 3 is the second epoch's).
    assert not np.array_equal(whole[0]['label'], whole[3]['label'])


def test_train_without_augmentation_keeps_pixels(digits_dir):
    ds = data.create_train_dataset(
        'digits',
        global_batch_size=8,
        image_size=32,
        data_dir=digits_dir,
        augment=False,
        normalization='unit',
        process_index=0,
        process_count=1,
    )
    images = _take(ds, 1)[0]['image']
    # Unaugmented digits are upsampled 8x8 glyphs: values are k/255 exactly.
    np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-3)


def test_batch_must_split_over_processes(digits_dir):
    with pytest.raises(ValueError, match='multiple of process_count'):
        data.create_train_dataset(
            'digits',
            global_batch_size=10,
            image_size=32,
            data_dir=digits_dir,
            process_index=0,
            process_count=3,
        )


# -------------------------------------------------------- mock_data end-to-end


@pytest.mark.parametrize(
    'name,image_size,num_classes', [('imagenet2012', 64, 1000), ('cifar10', 32, 10), ('cifar10', 24, 10)]
)
def test_mock_end_to_end(name, image_size, num_classes):
    with tfds.testing.mock_data(num_examples=10):
        train = _take(
            data.create_train_dataset(
                name,
                global_batch_size=8,
                image_size=image_size,
                shuffle_buffer=16,
                process_index=0,
                process_count=1,
            ),
            2,
        )
        evals = _as_numpy_list(
            data.create_eval_dataset(
                name, global_batch_size=8, image_size=image_size, process_index=0, process_count=1
            )
        )
    for batch in train:
        assert batch['image'].shape == (8, image_size, image_size, 3)
        assert batch['image'].dtype == np.float32
        assert -1.0 <= batch['image'].min() <= batch['image'].max() <= 1.0
        assert np.all((batch['label'] >= 0) & (batch['label'] < num_classes))
    assert [b['image'].shape for b in evals] == [(8, image_size, image_size, 3)] * 2
    assert sum(b['mask'].sum() for b in evals) == 10


# ------------------------------------------------------------------- errors


def test_unknown_dataset_names_itself():
    with pytest.raises(ValueError, match='nope') as error:
        data.get_dataset_info('nope')
    assert 'imagenet2012' in str(error.value)


def test_imagenet_missing_says_how_to_prepare(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.ensure_dataset('imagenet2012', data_dir=str(tmp_path))
    message = str(error.value)
    assert 'manual_dir' in message
    assert f'{tmp_path}/downloads/manual' in message
    assert 'ILSVRC2012_img_train.tar' in message
    assert isinstance(error.value, ValueError)
    with pytest.raises(data.DatasetNotPreparedError, match='downloads/manual'):
        data.create_eval_dataset(
            'imagenet2012',
            global_batch_size=8,
            image_size=64,
            data_dir=str(tmp_path),
            process_index=0,
            process_count=1,
        )


def test_dataset_info():
    info = data.get_dataset_info('imagenet2012')
    assert (info.base_image_size, info.num_classes) == (224, 1000)
    assert (info.train_split, info.eval_split) == ('train', 'validation')
    for name in ('cifar10', 'cifar100', 'digits'):
        info = data.get_dataset_info(name)
        assert (info.base_image_size, info.eval_split) == (32, 'test')
    assert data.get_dataset_info('cifar100').num_classes == 100
    # ImageNet is cropped from its JPEGs; digits are never mirrored (a mirrored digit is another class or none).
    assert [name for name, info in datasets.DATASETS.items() if info.large_jpegs] == ['imagenet2012']
    assert [name for name, info in datasets.DATASETS.items() if not info.flip] == ['digits']
    assert datasets.published_split_size('digits', 'test') == 360
    assert datasets.published_split_size('digits', 'train[:10%]') is None


def test_dataset_metadata_and_config_lib_import_no_tensorflow():
    """Configs, checkpoints and cost reports look datasets up without paying for a TensorFlow import."""
    code = ('import sys\n'
            'from mobilenets_jax import config_lib, data\n'
            'from mobilenets_jax.data import datasets\n'
            'assert data.get_dataset_info("cifar10").num_classes == datasets.DATASETS["cifar10"].num_classes\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")))\n')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == '[]'


# ------------------------------------------------------------ preprocessing


def _image(height=60, width=90):
    rng = np.random.default_rng(0)
    return tf.constant(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_imagenet_preprocessing_on_decoded_and_encoded_images():
    image = _image()
    seed = tf.constant([1, 2], tf.int64)
    for source in (image, tf.io.encode_jpeg(image)):
        crop = preprocessing.imagenet_train(source, seed, 48)
        center = preprocessing.imagenet_eval(source, 48)
        for out in (crop, center):
            assert out.shape == (48, 48, 3) and out.dtype == tf.float32
            assert 0.0 <= float(tf.reduce_min(out)) <= float(tf.reduce_max(out)) <= 255
    # The same seed gives the same crop: augmentation is stateless.
    np.testing.assert_array_equal(
        preprocessing.imagenet_train(image, seed, 48), preprocessing.imagenet_train(image, seed, 48)
    )


def test_central_crop_takes_the_middle():
    image = np.zeros((64, 64, 3), np.uint8)
    image[4:60, 4:60] = 255  # 56 = 0.875 * 64: exactly the kept window.
    out = preprocessing.central_crop(tf.constant(image), 56)
    np.testing.assert_array_equal(out, np.full((56, 56, 3), 255.0))


def test_pad_and_random_crop_translates():
    image = _image(32, 32)
    out = preprocessing.pad_and_random_crop(image, tf.constant([3, 4]))
    assert out.shape == (32, 32, 3) and out.dtype == tf.uint8


def test_normalizations():
    pixels = tf.constant([[[0.0, 127.5, 255.0]]])
    np.testing.assert_allclose(preprocessing.normalize(pixels, 'inception'), [[[-1.0, 0.0, 1.0]]])
    np.testing.assert_allclose(preprocessing.normalize(pixels, 'unit'), [[[0.0, 0.5, 1.0]]])
    mean = np.array(preprocessing.IMAGENET_MEAN_RGB) * 255
    np.testing.assert_allclose(
        preprocessing.normalize(tf.constant(mean, tf.float32), 'imagenet'), np.zeros(3), atol=1e-5
    )
    with pytest.raises(ValueError, match='bogus'):
        preprocessing.normalize(pixels, 'bogus')
