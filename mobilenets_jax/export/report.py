"""export.py's library side: restore a training checkpoint, export it, and measure the exported file
against JAX (parity on a fixed batch of eval images, top-1 agreement and accuracy over the eval split,
size, latency per image).

The checkpoint is read as evaluation.py reads it (`checkpoints.restore_inference_variables`: only params
and batch_stats, EMA or raw, a damaged newest step skipped); int8 calibration images come
from the config's training split through `input_pipeline.create_train_dataset` without augmentation.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from mobilenets_jax import checkpoints, config_lib, steps
from mobilenets_jax.data import datasets
from mobilenets_jax.export import formats, runtime

PARITY_BATCH = 64          # the fixed batch of eval images whose logits are compared
DEFAULT_CALIBRATION_STEPS = 256


def restore_variables(config: ml_collections.ConfigDict, workdir: str, step: Optional[int],
                      weights: Optional[str]) -> tuple[dict, int, str]:
    """({'params', 'batch_stats'} as host arrays, step, 'ema' | 'raw'), read as eval.py reads them."""
    checkpoints.check_weights(weights)
    variables, step, weights = checkpoints.restore_inference_variables(workdir, steps.create_mesh(), config=config,
                                                                       step=step, weights=weights)
    return jax.device_get(variables), int(step), weights


def calibration_images(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
    """`count` preprocessed training images (no augmentation), as the model sees them."""
    from mobilenets_jax.data import input_pipeline
    batch = max(1, min(config.batch_size, count))
    dataset = input_pipeline.create_train_dataset(
        config.dataset, global_batch_size=batch, image_size=config_lib.image_size(config),
        data_dir=config.data_dir, augment=False, normalization=config.normalization,
        split=config.train_split)
    images = []
    for element in dataset.as_numpy_iterator():
        images.append(element['image'])
        if sum(len(x) for x in images) >= count:
            break
    return np.concatenate(images)[:count].astype(np.float32)


def _eval_batches(config: ml_collections.ConfigDict, split: str):
    """(images, labels) of every real example of `split`, batch by batch (padding dropped)."""
    from mobilenets_jax.data import input_pipeline
    dataset = input_pipeline.create_eval_dataset(
        config.dataset, global_batch_size=config.batch_size, image_size=config_lib.image_size(config),
        split=split, data_dir=config.data_dir, normalization=config.normalization)
    for element in dataset.as_numpy_iterator():
        real = element['mask'] > 0
        if real.any():
            yield element['image'][real], element['label'][real]


def compare(jax_logits_fn, exported_fn, batches) -> dict:
    """Parity on the first PARITY_BATCH images, then agreement and top-1 of both over every batch."""
    parity_images, count, agree, jax_correct, exported_correct = 0, 0, 0, 0, 0
    max_delta = max_logit = 0.0
    for images, labels in batches:
        reference, exported = np.asarray(jax_logits_fn(images)), np.asarray(exported_fn(images))
        if parity_images < PARITY_BATCH:
            take = PARITY_BATCH - parity_images
            parity_images += len(images[:take])
            max_delta = max(max_delta, float(np.abs(exported[:take] - reference[:take]).max()))
            max_logit = max(max_logit, float(np.abs(reference[:take]).max()))
        count += len(labels)
        agree += int((reference.argmax(-1) == exported.argmax(-1)).sum())
        jax_correct += int((reference.argmax(-1) == labels).sum())
        exported_correct += int((exported.argmax(-1) == labels).sum())
    if not count:
        raise ValueError('the eval split has no examples')
    return {'max_abs_logit_diff': max_delta, 'max_abs_logit': max_logit,
            'relative_logit_diff': max_delta / max(max_logit, 1e-30), 'parity_images': parity_images,
            'top1_agreement': agree / count, 'jax_top1': jax_correct / count,
            'exported_top1': exported_correct / count, 'num_examples': count}


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, *, format: str,   # noqa: A002
                      output: str, step: Optional[int] = None, weights: Optional[str] = None,
                      calibration_steps: int = DEFAULT_CALIBRATION_STEPS, int8_io: bool = False,
                      split: Optional[str] = None, measure_latency: bool = True) -> dict:
    """Exports a checkpoint of `workdir` to `output` and returns the report record (see `summary`)."""
    formats.check_format(format)
    formats.check_extras(format)
    formats.check_runtime(format)
    if int8_io and format != 'tflite_int8':
        raise ValueError(f'--int8_io needs --format=tflite_int8 (it is {format!r})')
    if isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int) or calibration_steps < 1:
        raise ValueError(f'--calibration_steps={calibration_steps!r}: must be an integer >= 1')
    variables, step, weights = restore_variables(config, workdir, step, weights)
    model = config_lib.create_model(config)
    size = config_lib.image_size(config)
    from mobilenets_jax.data import input_pipeline
    input_pipeline.ensure_dataset(config.dataset, data_dir=config.data_dir)
    calibration = calibration_images(config, calibration_steps) if format == 'tflite_int8' else None

    started = time.time()
    formats.export(model, variables, format, output, image_size=size, calibration_images=calibration,
                   int8_io=int8_io, normalization=config.normalization)
    export_secs = time.time() - started

    jax_logits = runtime.jax_logits_fn(model, variables)
    exported = runtime.load(output, format)
    split = split or config.eval_split or datasets.get_dataset_info(config.dataset).eval_split
    record = {'format': format, 'output': output, 'file_bytes': runtime.file_size(output), 'step': step,
              'weights': weights, 'model': config.model.name, 'alpha': float(config.model.alpha),
              'resolution': size, 'dataset': config.dataset, 'split': split,
              'normalization': config.normalization, 'export_secs': export_secs,
              'calibration_images': 0 if calibration is None else len(calibration), 'int8_io': bool(int8_io)}
    record.update(compare(jax_logits, exported, _eval_batches(config, split)))
    if measure_latency:
        image = np.zeros((size, size, 3), np.float32)
        cores = os.cpu_count() or 1
        try:
            one_core = runtime.jax_latency_ms_one_core(model, variables, size)
        except RuntimeError as error:   # the export is written and scored already: report the gap, go on
            logging.warning('JAX latency on one core not measured: %s', error)
            one_core = None
        record.update({'jax_latency_ms_all_cores': runtime.latency_ms(jax_logits, image), 'cores': cores,
                       'jax_backend': jax.default_backend(), 'jax_latency_ms_1_core': one_core})
        if format == 'saved_model':   # TensorFlow's thread pools are fixed once it has run (jax2tf, tf.data)
            record['latency_ms_tf_default_threads'] = runtime.latency_ms(runtime.load(output, format), image)
        else:
            record.update({
                'latency_ms_1_thread': runtime.latency_ms(runtime.load(output, format, num_threads=1), image),
                'latency_ms_all_cores': runtime.latency_ms(runtime.load(output, format, num_threads=cores), image)})
    return record


def summary(record: dict) -> str:
    """A small human table of a record of `export_checkpoint`."""
    cores = record.get('cores')
    rows = [
        ('file', f'{record["output"]} ({record["format"]}, {record["file_bytes"] / 1e6:.2f} MB)'),
        ('checkpoint', f'step {record["step"]}, {record["weights"]} weights, {record["model"]} alpha '
                       f'{record["alpha"]:g} at {record["resolution"]}x{record["resolution"]}'),
        ('max |Δlogits| vs JAX', f'{record["max_abs_logit_diff"]:.3g} (max |logit| {record["max_abs_logit"]:.3g}, '
                                 f'relative {record["relative_logit_diff"]:.2e}, {record["parity_images"]} images)'),
        ('top-1 agreement', f'{100 * record["top1_agreement"]:.2f}% of {record["num_examples"]} '
                            f'{record["dataset"]} {record["split"]} images'),
        ('top-1 exported / JAX', f'{100 * record["exported_top1"]:.2f}% / {100 * record["jax_top1"]:.2f}%'),
    ]
    if 'jax_latency_ms_all_cores' in record:
        one_core = record['jax_latency_ms_1_core']
        backend = record['jax_backend']
        jax_ms = (f'JAX {"n/a" if one_core is None else f"{one_core:.2f} ms"} on 1 CPU core, '
                  f'{record["jax_latency_ms_all_cores"]:.2f} ms on {f"{cores} cores" if backend == "cpu" else backend}')
        if 'latency_ms_1_thread' in record:
            rows.append(('latency per image', f'{record["latency_ms_1_thread"]:.2f} ms 1 thread, '
                                              f'{record["latency_ms_all_cores"]:.2f} ms {cores} threads ({jax_ms})'))
        else:
            rows.append(('latency per image', f'{record["latency_ms_tf_default_threads"]:.2f} ms (TensorFlow\'s '
                                              f'threads; {jax_ms})'))
    width = max(len(name) for name, _ in rows)
    return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)
