"""Per-example image preprocessing, as pure TensorFlow functions for tf.data.

Everything random here is *stateless*: each function takes a `seed` (an int
tensor of shape [2]) instead of drawing from TF's global RNG, so a pipeline
that hands every example its own seed (see `input_pipeline`) is reproducible
from one integer, independent of thread scheduling and of other TF code.

Images come in as uint8 [H, W, 3] tensors or, for ImageNet, as the still
encoded JPEG string (TFDS `SkipDecoding`), which lets the crops decode only
the pixels they keep (`tf.image.decode_and_crop_jpeg`): that is what keeps the
ImageNet input pipeline from being CPU-bound. Functions return float32 images
in [0, 255]; `normalize` maps them to the range a model expects.
"""

from typing import Sequence, Tuple

import tensorflow as tf

from mobilenets_jax.data.datasets import NORMALIZATIONS

# Inception-style crop statistics (Szegedy et al. 2015; TF-slim
# inception_preprocessing), used by the MobileNet papers' training.
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# ImageNet evaluation keeps the central 87.5% (224 of 256) of the shorter side.
CENTRAL_CROP_FRACTION = 0.875
CIFAR_PAD = 4

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def is_encoded(image: tf.Tensor) -> bool:
    """Whether `image` is still an encoded (JPEG) string rather than pixels."""
    return image.dtype == tf.string


def split_seed(seed: tf.Tensor, num: int) -> Sequence[tf.Tensor]:
    """Derives `num` independent stateless seeds from one, one per random op."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def image_shape(image: tf.Tensor) -> tf.Tensor:
    """[height, width, channels] of a decoded image or of an encoded JPEG."""
    if is_encoded(image):
        return tf.image.extract_jpeg_shape(image)
    return tf.shape(image)


def decode(image: tf.Tensor) -> tf.Tensor:
    """Decodes an encoded image to uint8 RGB; passes decoded images through."""
    if is_encoded(image):
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return image


def crop(image: tf.Tensor, offset_y, offset_x, height, width) -> tf.Tensor:
    """Crops (and, for a JPEG string, decodes only the kept window)."""
    if is_encoded(image):
        window = tf.stack([offset_y, offset_x, height, width])
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)
    return tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to [image_size, image_size, 3], as float32 in [0, 255].

    Bilinear without antialiasing is what the CIFAR α×ρ study used to make its
    ρ < 1 inputs (and what TF-slim used for ImageNet); an image already at the
    target size is passed through untouched so ρ = 1 sees the exact pixels.
    """
    if tuple(image.shape[:2].as_list()) != (image_size, image_size):
        image = tf.image.resize(image, [image_size, image_size], method=tf.image.ResizeMethod.BILINEAR)
    image = tf.cast(image, tf.float32)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    area_range: Tuple[float, float] = AREA_RANGE,
    aspect_ratio_range: Tuple[float, float] = ASPECT_RATIO_RANGE,
    max_attempts: int = 10,
) -> tf.Tensor:
    """Inception crop: a random window of 8%-100% area, aspect 3/4-4/3, resized.

    `min_object_covered=0` with the whole image as the "object" makes the
    sampler draw purely by area and aspect ratio; when no window fits within
    `max_attempts` it falls back to the whole image (TF-slim's behaviour).
    """
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape(image),
        bounding_boxes=whole_image,
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    return resize(crop(image, offset_y, offset_x, height, width), image_size)


def central_crop(
    image: tf.Tensor,
    image_size: int,
    crop_fraction: float = CENTRAL_CROP_FRACTION,
) -> tf.Tensor:
    """ImageNet evaluation: the central square of `crop_fraction` of the
    shorter side, resized to image_size (224/256 at the standard setting)."""
    shape = image_shape(image)
    height, width = shape[0], shape[1]
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    crop_size = tf.maximum(tf.cast(crop_fraction * shorter, tf.int32), 1)
    offset_y = (height - crop_size + 1) // 2
    offset_x = (width - crop_size + 1) // 2
    return resize(crop(image, offset_y, offset_x, crop_size, crop_size), image_size)


def pad_and_random_crop(image: tf.Tensor, seed: tf.Tensor, pad: int = CIFAR_PAD) -> tf.Tensor:
    """The standard CIFAR augmentation: zero-pad `pad` pixels, crop back."""
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, size=tf.shape(image), seed=seed)


def imagenet_train(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """Random-resized crop then flip; float32 [image_size, image_size, 3]."""
    crop_seed, flip_seed = split_seed(seed, 2)
    image = random_resized_crop(image, crop_seed, image_size)
    return random_flip(image, flip_seed)


def imagenet_eval(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Central crop and resize; float32 [image_size, image_size, 3]."""
    return central_crop(image, image_size)


def small_image_train(
    image: tf.Tensor, seed: tf.Tensor, image_size: int, *, augment: bool = True, flip: bool = True
) -> tf.Tensor:
    """CIFAR-style training: pad-and-crop (+ flip) at native size, then resize.

    Augmenting at the native size keeps the 4-pixel translation the same for
    every ρ; `augment=False` reproduces the α×ρ study (no augmentation), and
    `flip=False` is for data where mirroring changes the class (digits).
    """
    image = decode(image)
    if augment:
        crop_seed, flip_seed = split_seed(seed, 2)
        image = pad_and_random_crop(image, crop_seed)
        if flip:
            image = random_flip(image, flip_seed)
    return resize(image, image_size)


def small_image_eval(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """CIFAR/digits evaluation: just the (bilinear) resize to image_size."""
    return resize(decode(image), image_size)


def normalize(image: tf.Tensor, normalization: str) -> tf.Tensor:
    """Maps float32 pixels in [0, 255] to what the model was trained on.

    'inception' → [-1, 1] (the MobileNet/TF-slim convention, and Keras'
    `mobilenet.preprocess_input`); 'unit' → [0, 1] (the CIFAR α×ρ study);
    'imagenet' → per-channel mean/std (torchvision-trained weights).
    """
    image = tf.cast(image, tf.float32)
    if normalization == 'inception':
        return image / 127.5 - 1.0
    if normalization == 'unit':
        return image / 255.0
    if normalization == 'imagenet':
        mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32) * 255.0
        stddev = tf.constant(IMAGENET_STDDEV_RGB, tf.float32) * 255.0
        return (image - mean) / stddev
    raise ValueError(f'Unknown normalization {normalization!r}; ' f'expected one of {NORMALIZATIONS}.')
