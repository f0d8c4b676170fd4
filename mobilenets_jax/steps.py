"""The training and evaluation steps: what training runs is what the cost report counts and times.

Both steps are written per device with pmap semantics (a named batch axis, gradients and metrics
averaged with `lax.pmean`) and run by `jax.shard_map` inside `jax.jit` over a 1-D mesh
(`make_train_step`, `make_eval_step`). `train_lib` runs them over every device of every process;
`mobilenets_jax.cost` and `benchmarks/throughput.py` run the same `make_train_step` over a 1-device
mesh, so the program they count and time is the one that trains, compiled for one device.

    state = {'step', 'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng'}
"""
from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from mobilenets_jax import optim

BATCH_AXIS = 'batch'


def create_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'batch' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def state_from(variables: dict, opt_state: Any, rng: Any) -> dict:
    """The train state of a fresh run: step 0, the variables (also the EMA's starting point), the
    optimizer state and the dropout key's data. Leaves are shared, not copied: place each leaf in its
    own buffer before a step donates the state (a buffer may be donated only once)."""
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return {
        'step': np.zeros((), np.int32),
        'params': params,
        'batch_stats': batch_stats,
        'opt_state': opt_state,
        'ema_params': params,
        'ema_batch_stats': batch_stats,
        'rng': rng,
    }


def top_k_correct(logits, labels, k: int):
    """1.0 where the label is among the k largest logits."""
    k = min(k, logits.shape[-1])
    _, top = lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def loss_and_grads(model, params, batch_stats, batch: dict, dropout_key, *, num_classes: int,
                   label_smoothing: float):
    """Forward in train mode (dropout, BatchNorm on batch statistics), the label-smoothed cross-entropy
    and its gradient: ``(loss, (logits, new batch_stats)), grads`` on this device's examples."""
    def loss_fn(params):
        logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                                      train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key})
        loss = jnp.mean(optim.cross_entropy(logits, batch['label'], num_classes, label_smoothing))
        return loss, (logits, updates['batch_stats'])

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def train_step(state: dict, batch: dict, *, model, tx: optax.GradientTransformation, num_classes: int,
               label_smoothing: float, ema_decay: float):
    """One optimizer step on this device's share of the batch (pmap semantics over BATCH_AXIS)."""
    key = jax.random.wrap_key_data(state['rng'])
    dropout_key = jax.random.fold_in(jax.random.fold_in(key, state['step']), lax.axis_index(BATCH_AXIS))
    (loss, (logits, batch_stats)), grads = loss_and_grads(
        model, state['params'], state['batch_stats'], batch, dropout_key, num_classes=num_classes,
        label_smoothing=label_smoothing)
    grads = lax.pmean(grads, BATCH_AXIS)
    # Running BatchNorm averages drift apart when statistics are per device; averaging them keeps the
    # replicated state identical everywhere (a no-op with sync_batch_stats).
    batch_stats = lax.pmean(batch_stats, BATCH_AXIS)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    if ema_decay > 0:
        decay = optim.ema_decay_with_warmup(state['step'], ema_decay)
        ema_params = optim.ema_update(state['ema_params'], params, decay)
        ema_batch_stats = optim.ema_update(state['ema_batch_stats'], batch_stats, decay)
    else:
        ema_params, ema_batch_stats = params, batch_stats
    metrics = {
        'loss': loss,
        'top1': jnp.mean(top_k_correct(logits, batch['label'], 1)),
        'top5': jnp.mean(top_k_correct(logits, batch['label'], 5)),
    }
    metrics = lax.pmean(metrics, BATCH_AXIS)
    new_state = dict(state, step=state['step'] + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                     ema_params=ema_params, ema_batch_stats=ema_batch_stats)
    return new_state, metrics


def eval_step(variables: dict, batch: dict, *, model, num_classes: int):
    """Sums (not means) over this device's examples, masked, then summed over devices."""
    logits = model.apply(variables, batch['image'], train=False)
    mask = batch['mask']
    sums = {
        'loss': jnp.sum(optim.cross_entropy(logits, batch['label'], num_classes) * mask),
        'top1': jnp.sum(top_k_correct(logits, batch['label'], 1) * mask),
        'top5': jnp.sum(top_k_correct(logits, batch['label'], 5) * mask),
        'count': jnp.sum(mask),
    }
    return lax.psum(sums, BATCH_AXIS)


def make_train_step(model, tx: optax.GradientTransformation, num_classes: int, mesh: Mesh, *,
                    label_smoothing: float, ema_decay: float):
    """`train_step` over `mesh`: ``(state, batch) -> (state, metrics)``, jitted, the state donated.

    The state is replicated, the batch ({'image', 'label'}) split over the mesh's 'batch' axis.
    """
    step = functools.partial(train_step, model=model, tx=tx, num_classes=num_classes,
                             label_smoothing=label_smoothing, ema_decay=ema_decay)
    # check_vma=False: the state is replicated by construction (every output is pmean'd or computed from
    # replicated values), and custom-VJP layers (the fast depthwise conv) need not track mesh axes.
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=(P(), P()),
                            check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


def make_eval_step(model, num_classes: int, mesh: Mesh):
    """`eval_step` over `mesh`: ``(variables, batch) -> sums``, jitted; the batch has a 'mask'."""
    step = functools.partial(eval_step, model=model, num_classes=num_classes)
    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=P(), check_vma=False))
