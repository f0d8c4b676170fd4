"""Exact evaluation of a training checkpoint, on whatever devices this host (or these hosts) has.

    record = evaluate_checkpoint(config, workdir)            # latest step, EMA weights when present
    record = evaluate_checkpoint(config, workdir, step=2000, weights='raw', split='train')

Only what inference needs is read (`checkpoints.load_variables`): `params` and `batch_stats` (or their EMA
twins) are restored as a *partial* tree from the 'state' item that training saved, straight into replicated
arrays on the current mesh, so neither the optimizer state nor the device count that wrote the checkpoint
matters. Every example
of the split counts exactly once (the input pipeline pads and masks the last batch), so the result does
not depend on the batch size or the number of devices.

Checks that fail with a `ValueError` (eval.py turns them into one line and exit status 2): no checkpoint,
a missing step (listing the existing ones), a checkpoint that does not fit the config (naming the first
parameter whose shape differs and the config field that probably differs), EMA weights requested from a
checkpoint trained without EMA, and a batch size that the devices do not divide.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

from absl import logging
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenets_jax import checkpoints, compilation_cache, config_lib, steps, train_lib
from mobilenets_jax.data import datasets

RESULTS_FILE = 'eval_results.jsonl'
# Seconds between progress lines (batches done, throughput, ETA); short evaluations print none.
PROGRESS_EVERY_SECS = 20.0

_COMPILED: dict = {}


def _compiled_eval_step(model, num_classes: int, mesh: Mesh, variables: dict, element_spec: dict):
    """The shard_map'd eval step, compiled ahead of time (so throughput excludes compilation), cached."""
    batch_sharding = NamedSharding(mesh, P(steps.BATCH_AXIS))
    process_count = jax.process_count()
    batch = {key: jax.ShapeDtypeStruct((spec.shape[0] * process_count, *spec.shape[1:]),
                                       spec.dtype.as_numpy_dtype, sharding=batch_sharding)
             for key, spec in element_spec.items()}
    abstract_variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                      variables)
    key = (model, num_classes, mesh, jax.tree.structure(batch),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch)),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract_variables)))
    if key not in _COMPILED:
        if len(_COMPILED) >= 8:
            _COMPILED.clear()
        step = steps.make_eval_step(model, num_classes, mesh)
        _COMPILED[key] = step.lower(abstract_variables, batch).compile()
    return _COMPILED[key]


class _Progress:
    """Logs 'batches done, images/s, ETA' every PROGRESS_EVERY_SECS seconds."""

    def __init__(self, total_batches: int, global_batch_size: int):
        self.total = total_batches
        self.batch = global_batch_size
        self.start = self.last = time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if now - self.last < PROGRESS_EVERY_SECS or done >= self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        logging.info('eval: %d/%d batches (%.0f%%), %.1f images/s, ETA %s', done, self.total,
                     100.0 * done / self.total, rate * self.batch,
                     train_lib.format_seconds((self.total - done) / max(rate, 1e-9)))


def _one_in_flight(step_fn):
    """Waits for batch i-1 before dispatching batch i+1: progress then counts finished batches."""
    pending = []

    def run(variables, batch):
        if pending:
            jax.block_until_ready(pending.pop())
        sums = step_fn(variables, batch)
        pending.append(sums)
        return sums

    return run


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
    from mobilenets_jax.data import input_pipeline
    try:
        return input_pipeline.num_examples(config.dataset, split, data_dir=config.data_dir)
    except (KeyError, ValueError) as error:
        if isinstance(error, datasets.DatasetNotPreparedError):
            raise
        raise ValueError(f'--split={split!r} is not a split of {config.dataset!r}: {error}') from None


def append_result(workdir: str, record: dict) -> None:
    """Appends one JSON line to `<workdir>/eval_results.jsonl` (process 0 only)."""
    if jax.process_index() != 0:
        return
    import tensorflow as tf  # gfile: local paths and gs:// alike
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(os.path.join(workdir, RESULTS_FILE), 'a') as f:
        f.write(json.dumps(record) + '\n')


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *, step: Optional[int] = None,
                        weights: Optional[str] = None, split: Optional[str] = None,
                        mesh: Optional[Mesh] = None) -> dict:
    """Evaluates a checkpoint of `workdir` exactly on `split` and returns (and appends) its record.

    Args:
      config: the training config (or one with evaluation overrides: rho, batch_size, data_dir, ...).
      workdir: the training run's directory (checkpoints in `<workdir>/checkpoints`).
      step: the checkpoint step; None: the latest.
      weights: 'ema' or 'raw'; None: EMA when the checkpoint has EMA weights, else raw.
      split: dataset split (TFDS slicing works, e.g. 'train[:10%]'); None: config.eval_split or the
        dataset's evaluation split.
      mesh: the 1-D ('batch') mesh to run on; None: every device of every process.

    The whole split is evaluated (config.steps_per_eval, a shortcut for evaluations during training, is
    ignored), with config.batch_size as the global batch (a multiple of the mesh's device count).

    Returns:
      {'top1', 'top5', 'loss', 'num_examples', 'step', 'weights', 'split', 'resolution', 'model', 'alpha',
       'images_per_sec', ...}, also appended as one JSON line to `<workdir>/eval_results.jsonl`.
    """
    mesh = steps.create_mesh() if mesh is None else mesh
    num_devices = mesh.devices.size
    checkpoints.check_weights(weights)
    config_lib.check_batch_size(config, num_devices)

    # The checkpoint first: a wrong --workdir or --step is the likeliest mistake, and costs nothing to find.
    info = datasets.get_dataset_info(config.dataset)
    model = config_lib.create_model(config)
    size = config_lib.image_size(config)
    restore_start = time.time()
    variables, step, weights = checkpoints.restore_inference_variables(workdir, mesh, config=config, step=step,
                                                                       weights=weights)
    restore_secs = time.time() - restore_start

    from mobilenets_jax.data import input_pipeline  # TensorFlow: imported once past the cheap checks
    input_pipeline.ensure_dataset(config.dataset, data_dir=config.data_dir)
    split = split or config.eval_split or info.eval_split
    split_size = _split_size(config, split)
    dataset = input_pipeline.create_eval_dataset(
        config.dataset, global_batch_size=config.batch_size, image_size=size, split=split,
        data_dir=config.data_dir, normalization=config.normalization)
    per_process_batch = config.batch_size // jax.process_count()
    total_batches = math.ceil(math.ceil(split_size / jax.process_count()) / per_process_batch)

    compile_start = time.time()
    with compilation_cache.CompileEvents() as events:
        eval_step = _compiled_eval_step(model, info.num_classes, mesh, variables, dataset.element_spec)
    compile_secs = time.time() - compile_start
    logging.info('Evaluating %s alpha=%s at %dx%d, step %d (%s weights) on %d %s examples: %d batches of %d '
                 'on %d devices (restore %.1fs; eval step %s in %.1fs)', config.model.name, config.model.alpha,
                 size, size, step, weights, split_size, split, total_batches, config.batch_size, num_devices,
                 restore_secs, compilation_cache.describe(events), compile_secs)

    started = time.time()
    result = train_lib.evaluate(_one_in_flight(eval_step), variables, dataset.as_numpy_iterator(), mesh,
                                progress=_Progress(total_batches, config.batch_size))
    seconds = time.time() - started
    if result['num_examples'] != split_size:  # the pipeline's contract; never silently report a wrong count
        raise RuntimeError(f'evaluated {result["num_examples"]} examples, but split {split!r} has {split_size}')

    record = {
        'top1': result['top1'], 'top5': result['top5'], 'loss': result['loss'],
        'num_examples': result['num_examples'], 'step': int(step), 'weights': weights, 'split': split,
        'resolution': size, 'model': config.model.name, 'alpha': float(config.model.alpha),
        'images_per_sec': result['num_examples'] / max(seconds, 1e-9),
        'dataset': config.dataset, 'rho': float(config.rho), 'batch_size': int(config.batch_size),
        'num_devices': int(num_devices),
    }
    append_result(workdir, record)
    return record


def summary(record: dict) -> str:
    """Two human lines for a record of `evaluate_checkpoint`."""
    return (f'{record["model"]} (alpha {record["alpha"]:g}) at {record["resolution"]}x{record["resolution"]}, '
            f'step {record["step"]}, {record["weights"]} weights, {record["dataset"]} {record["split"]}\n'
            f'  top-1 {100 * record["top1"]:.2f}%  top-5 {100 * record["top5"]:.2f}%  loss {record["loss"]:.4f}  '
            f'on {record["num_examples"]} examples  ({record["images_per_sec"]:.1f} images/s on '
            f'{record["num_devices"]} device{"s" if record["num_devices"] != 1 else ""})')
