"""Measured throughput: images/second of the inference program and of the training step."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobilenets_jax import steps
from mobilenets_jax.cost import machine, programs
from mobilenets_jax.cost.configs import Config
from mobilenets_jax.models import init as model_init


def median_seconds(fn: Callable, warmup: int, runs: int) -> float:
    """Median wall seconds of `runs` synchronized calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_throughput(model: nn.Module, config: Config, batch_size: int, training_config: ml_collections.ConfigDict,
                       *, warmup: int = 2, runs: int = 5) -> dict:
    """Images/second of inference and of the training step at `batch_size` on the default device.

    The training step is `programs.make_train_step` (the one `train_lib` trains with, on one device)
    with `training_config`'s optimizer, label smoothing and EMA. Both programs are compiled with the
    backend's default options, run `warmup` times, then timed `runs` times (each call synchronized with
    `block_until_ready`); the median is reported. ``steal`` is the share of CPU time the hypervisor
    took while they ran (`machine.record_steal`; None off Linux): above `machine.STEAL_WARNING` the
    rates say more about the host's other guests than the model.
    """
    res = config.resolution
    variables = model_init.init_variables(model, 0, (1, res, res, 3))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch_size, res, res, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, config.num_classes, size=(batch_size,), dtype=np.int32))
    batch = {'image': images, 'label': labels}

    # Compiled before the timed span, so that `steal` is the share of the calls' time alone.
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
    step, tx = programs.make_train_step(model, config.num_classes, training_config, programs.one_device_mesh())
    # jnp.array copies each leaf into its own buffer: the step donates the state, and `variables` (used
    # by inference) and the EMA's copies must not share a donated buffer.
    state = jax.tree.map(jnp.array, steps.state_from(variables, tx.init(variables['params']),
                                                      jax.random.key_data(jax.random.key(0))))
    train = step.lower(state, batch).compile()
    current = [state]

    def train_once():
        current[0], metrics = train(current[0], batch)
        return metrics

    record = {'batch_size': batch_size}
    with machine.record_steal(record):
        inference_seconds = median_seconds(lambda: infer(variables, images), warmup, runs)
        train_seconds = median_seconds(train_once, warmup, runs)
    record.update(inference_images_per_sec=batch_size / inference_seconds,
                  train_images_per_sec=batch_size / train_seconds)
    return record
