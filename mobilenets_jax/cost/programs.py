"""The programs the cost report counts and times.

* Inference: ``model.apply(variables, images, train=False)``, jitted, unsharded.
* Training: `steps.make_train_step`, the step `train_lib` trains with (forward in train mode,
  label-smoothed cross-entropy, backward, the gradients and BatchNorm statistics averaged over the
  batch axis, the optimizer update, the weight EMA, the top-1/top-5 metrics), over a mesh of one
  device, with the optimizer, label smoothing and EMA decay of a training config: by default
  `config_lib.default_config()`, the papers' recipe. For one device its lowered program is the one
  `train_lib` compiles (tests/test_cost.py compares the two).

Counted programs are lowered from abstract values (`jax.ShapeDtypeStruct`): no parameter is materialized.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenets_jax import config_lib, optim, steps
from mobilenets_jax.cost.configs import Config
from mobilenets_jax.cost.macs import image_shape
from mobilenets_jax.data import datasets
from mobilenets_jax.models import init as model_init, registry


@functools.lru_cache(maxsize=8)
def abstract_model(config_key: tuple, model_kwargs: tuple):
    """(model, abstract variables) of one configuration group (`Config.group_key`, sorted extra kwargs).

    Parameter shapes do not depend on the input size (every model ends in a global pool), so the
    variables are traced once at the base resolution and reused for every resolution of a grid; were a
    shape to differ, Flax's parameter shape check would fail loudly while the program is traced.
    """
    name, alpha, groups, num_classes = config_key
    model = registry.create_model(name, alpha=alpha, groups=groups, num_classes=num_classes, **dict(model_kwargs))
    return model, model_init.abstract_variables(model, image_shape(registry.get_spec(name).base_resolution, 1))


def one_device_mesh() -> Mesh:
    """The mesh counted and timed programs run on: the default device alone, whatever the device count
    (a sharded program would report per-device figures)."""
    return steps.create_mesh(jax.devices()[:1])


def steps_per_epoch(training_config: ml_collections.ConfigDict) -> int:
    """Steps per epoch of a run of `training_config` on its dataset's published train split size.

    Only the learning-rate schedule's constants depend on it, and they are scalars in the program:
    they change no count.
    """
    info = datasets.get_dataset_info(training_config.dataset)
    examples = (datasets.published_split_size(info.name, training_config.get('train_split') or info.train_split)
                or datasets.published_split_size(info.name, info.train_split))
    return max(1, examples // training_config.batch_size)


def make_train_step(model, num_classes: int, training_config: ml_collections.ConfigDict, mesh: Mesh):
    """(`steps.make_train_step` with the optimizer, label smoothing and EMA decay of `training_config`, its
    optimizer). The optimizer comes from `optim.optimizer_for_run`, as in `train_lib.create_setup`."""
    _, tx = optim.optimizer_for_run(training_config, steps_per_epoch(training_config))
    step = steps.make_train_step(model, tx, num_classes, mesh, label_smoothing=float(training_config.label_smoothing),
                                 ema_decay=float(training_config.ema_decay))
    return step, tx


def _with_sharding(tree, sharding):
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree)


def abstract_train_inputs(variables, tx, batch_size: int, resolution: int, mesh: Mesh) -> tuple:
    """(state, batch) of a training step as `jax.ShapeDtypeStruct`s placed as `train_lib` places them:
    the state replicated over `mesh`, the batch split over its batch axis."""
    state = jax.eval_shape(lambda v: steps.state_from(v, tx.init(v['params']), jax.random.key_data(jax.random.key(0))),
                           variables)
    batch = {'image': jax.ShapeDtypeStruct(image_shape(resolution, batch_size), jnp.float32),
             'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    return (_with_sharding(state, NamedSharding(mesh, P())),
            _with_sharding(batch, NamedSharding(mesh, P(steps.BATCH_AXIS))))


def train_program(config: Config, *, batch_size: int, training_config: Optional[ml_collections.ConfigDict] = None,
                  model_kwargs: Optional[dict] = None) -> jax.stages.Lowered:
    """The training step of `config` that `analyze` counts, lowered at `batch_size` on one device.

    `training_config` (default `config_lib.default_config()`) gives the optimizer, label smoothing and
    EMA decay; `model_kwargs` the extra `create_model` arguments (see `from_training_config`).
    """
    training_config = config_lib.default_config() if training_config is None else training_config
    model, variables = abstract_model(config.group_key, tuple(sorted((model_kwargs or {}).items())))
    mesh = one_device_mesh()
    step, tx = make_train_step(model, config.num_classes, training_config, mesh)
    return step.lower(*abstract_train_inputs(variables, tx, batch_size, config.resolution, mesh))
