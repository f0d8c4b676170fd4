"""`digits`: scikit-learn's handwritten digits as a real TFDS dataset.

Why this exists: every other dataset we support needs a download (CIFAR) or a
manual one (ImageNet), yet tests, CI and quick experiments need a real, labelled
image-classification dataset that builds offline in seconds. scikit-learn ships
the UCI optical-digits images inside its wheel, so a TFDS builder over
`sklearn.datasets.load_digits()` gives exactly that, and goes through the very
same `tfds.builder(...).as_dataset(...)` path as ImageNet and CIFAR.

The 8x8 images (values 0..16) are scaled to 0..255, upsampled bilinearly to
32x32 (the CIFAR size, so the CIFAR models and configs apply unchanged) and
repeated to 3 channels. The split is fixed and deterministic: every 5th example
(index % 5 == 0) is `test` (360 examples), the rest is `train` (1,437).

Importing this module registers the builder, after which
`tfds.builder('digits', data_dir=...)` works.
"""

from typing import Iterator, Tuple

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_EVERY = 5  # index % TEST_EVERY == 0 -> test split.
_SOURCE_MAX_VALUE = 16.0  # load_digits() pixel values lie in 0..16.


def upsample_digit(image_8x8: np.ndarray) -> np.ndarray:
    """Turns one 8x8 sklearn digit (0..16) into the stored uint8 (32, 32, 3) image.

    Public so that tests (and users cross-checking against sklearn) can recompute
    exactly what the builder stores.
    """
    image_8x8 = np.asarray(image_8x8, dtype=np.float64).reshape(8, 8)
    gray = np.round(image_8x8 * (255.0 / _SOURCE_MAX_VALUE))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    resized = Image.fromarray(gray).resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BILINEAR)
    resized = np.asarray(resized, dtype=np.uint8)
    return np.repeat(resized[:, :, None], 3, axis=-1)


def is_test_index(index: int) -> bool:
    """The split rule, in one place: every 5th example is held out for test."""
    return index % TEST_EVERY == 0


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits, upsampled to 32x32 RGB."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    # TFDS derives this via `importlib_resources`, which tensorflow-datasets
    # 4.9.x imports but does not declare for Python >= 3.9 (tensorflow/datasets
    # #11212); stating it keeps building offline free of that extra package.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                'The UCI optical-recognition handwritten digits bundled with '
                'scikit-learn (sklearn.datasets.load_digits: 1,797 8x8 images, '
                'values 0..16), scaled to 0..255, bilinearly upsampled to 32x32 '
                'and repeated to RGB. test = every 5th example, train = the rest.'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'),
                    'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://archive.ics.uci.edu/dataset/80',
            # Keep the stored order equal to sklearn's order, so example i of
            # `test` is sklearn example 5*i; readers shuffle when they need to.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {
            'train': self._generate_examples(test=False),
            'test': self._generate_examples(test=True),
        }

    def _generate_examples(self, test: bool) -> Iterator[Tuple[int, dict]]:
        # Imported lazily: only building needs scikit-learn, reading does not.
        from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

        digits = sk_datasets.load_digits()
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            if is_test_index(index) != test:
                continue
            # The sklearn index is the key, so the content is fully deterministic.
            yield index, {'image': upsample_digit(image), 'label': int(label)}
