"""Images/sec of the ImageNet input transform on this machine's CPU, to compare with the model's rate.

    python benchmarks/input_pipeline.py [--image_size=224] [--batch_size=32] [--batches=40]

No ImageNet here, so the input is `--num_images` synthetic JPEGs of ImageNet's typical size (500×375,
quality 90, smooth random content so that they compress like photographs). Each goes through the same
per-example functions as training (`preprocessing.imagenet_train`: decode only the random-resized crop,
resize, flip; then 'inception' normalization) or evaluation (`imagenet_eval`: central crop), in a
tf.data pipeline with AUTOTUNE parallelism, batching and prefetch, as `input_pipeline` builds it. Reading
TFRecords from disk is not included. Prints one line per mode and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mobilenets_jax.data import preprocessing  # noqa: E402


def synthetic_jpegs(count: int, height: int = 375, width: int = 500, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(height // 25 + 1, width // 25 + 1, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse[None], (height, width), method='bicubic')[0]
        noisy = tf.clip_by_value(smooth + rng.normal(0, 8, size=(height, width, 3)), 0, 255)
        images.append(tf.io.encode_jpeg(tf.cast(noisy, tf.uint8), quality=90).numpy())
    return images


def pipeline_rate(jpegs: list, *, train: bool, image_size: int, batch_size: int, batches: int) -> float:
    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
    if train:
        seeds = tf.data.Dataset.random(seed=0).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda image, seed: preprocessing.normalize(preprocessing.imagenet_train(image, seed, image_size),
                                                        'inception'),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda image: preprocessing.normalize(preprocessing.imagenet_eval(image, image_size),
                                                          'inception'),
                    num_parallel_calls=tf.data.AUTOTUNE)
    iterator = iter(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    for _ in range(3):                       # warm-up: tracing, thread pools, the first buffers
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=40)
    parser.add_argument('--num_images', type=int, default=64)
    args = parser.parse_args(argv)
    jpegs = synthetic_jpegs(args.num_images)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    result = dict(image_size=args.image_size, batch_size=args.batch_size, jpeg_kib=round(float(mean_kb), 1),
                  cpu_count=os.cpu_count())
    for mode in ('train', 'eval'):
        result[mode] = pipeline_rate(jpegs, train=mode == 'train', image_size=args.image_size,
                                     batch_size=args.batch_size, batches=args.batches)
        print(f'{mode:5s} transform: {result[mode]:8.1f} images/sec  ({args.image_size}px, JPEGs of '
              f'{mean_kb:.0f} KiB on average, {os.cpu_count()} CPUs)', flush=True)
    print('JSON ' + json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
