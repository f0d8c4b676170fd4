"""Optimisers, learning-rate schedules, weight-decay masks and weight EMA.

The MobileNet papers (V1, V2, V3) all train with TensorFlow's RMSprop (decay 0.9,
momentum 0.9, epsilon 1.0), an L2 penalty of 4e-5 that skips depthwise filters, a
warmed-up staircase exponential learning-rate decay and an exponential moving
average (EMA) of the weights. Each of those details differs from the "textbook"
defaults of optax, and each matters for reproducing the published accuracy, so
this module spells them out in one place:

* :func:`tf_rmsprop` -- the TF update (epsilon inside the square root, learning
  rate folded into the momentum buffer), with the accumulator starting at one
  (TF1 ``RMSPropOptimizer``) or zero (Keras ``RMSprop``).
* :func:`learning_rate_schedule` -- linear warmup, then staircase exponential,
  cosine, linear or constant, with durations given in epochs; the decay either
  starts when the warmup ends or counts from step 0 (official/vision), with an
  optional floor (tensorflow/tpu).
* :func:`weight_decay_mask` / :func:`create_optimizer` -- coupled L2 (TF-slim adds
  ``wd * w`` to the gradient, so it passes through RMSprop's scaling) applied to
  conv/dense kernels (depthwise ones optionally) but not to biases or BatchNorm
  parameters; or AdamW's decoupled decay on everything but BatchNorm.
* :func:`ema_update` / :func:`ema_decay_with_warmup` -- TF's
  ``ExponentialMovingAverage(decay, num_updates=step)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Union

from absl import logging
import jax
import jax.numpy as jnp
import optax

__all__ = [
    'SCHEDULES',
    'OPTIMIZERS',
    'WARMUP_STYLES',
    'tf_rmsprop',
    'learning_rate_schedule',
    'weight_decay_mask',
    'decoupled_decay_mask',
    'create_optimizer',
    'transform_from_config',
    'frozen_backbone',
    'ema_update',
    'ema_decay_with_warmup',
]

SCHEDULES = ('exponential', 'cosine', 'linear', 'constant')
OPTIMIZERS = ('rmsprop', 'adam', 'adamw', 'sgd')
WARMUP_STYLES = ('offset', 'absolute')


def tf_rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    momentum: float = 0.9,
    epsilon: float = 1.0,
    initial_scale: float = 1.0,
) -> optax.GradientTransformation:
    """RMSprop exactly as ``tf.compat.v1.train.RMSPropOptimizer`` computes it.

    Per step ``t`` (counting from 0), with gradient ``g``::

        ms  = decay * ms + (1 - decay) * g**2          # ms starts at initial_scale
        mom = momentum * mom + lr(t) * g / sqrt(ms + epsilon)
        update = -mom

    Why not plain ``optax.rmsprop``: its defaults start the mean square at zero and
    use a tiny epsilon, which with MobileNet's epsilon=1.0 and lr≈0.045 gives a
    very different effective step size early in training; TF1 (what the papers
    used) starts at one and puts epsilon inside the square root. The learning rate
    multiplies the gradient *before* the momentum accumulation, so a schedule
    change takes effect gradually, as in TF.

    Keras' ``RMSprop`` (with momentum) is the same update with ``ms`` starting at
    zero (``initial_scale=0``): both call TensorFlow's ``ApplyRMSProp`` kernel.

    Args:
      learning_rate: a float or an optax schedule ``step -> lr``.
      decay: discount of the running mean of squared gradients (TF's ``decay``).
      momentum: momentum coefficient; 0 disables the momentum buffer.
      epsilon: added to the mean square inside the square root.
      initial_scale: the mean square's initial value: 1 for TF1, 0 for Keras.

    Returns:
      An ``optax.GradientTransformation``.
    """
    return optax.rmsprop(
        learning_rate,
        decay=decay,
        eps=epsilon,
        initial_scale=initial_scale,
        eps_in_sqrt=True,
        centered=False,
        momentum=momentum if momentum else None,
        nesterov=False,
        bias_correction=False,
    )


def learning_rate_schedule(
    *,
    base_learning_rate: float,
    steps_per_epoch: int,
    num_epochs: float,
    warmup_epochs: float,
    schedule: str = 'exponential',
    decay_rate: float = 0.94,
    decay_epochs: float = 2.4,
    end_learning_rate_factor: float = 0.0,
    warmup_style: str = 'offset',
    floor_factor: float = 0.0,
) -> optax.Schedule:
    """Linear warmup followed by an exponential (staircase), cosine, linear or flat phase.

    Durations are in epochs because the papers state them that way (e.g. decay by
    0.94 every 2.4 epochs for MobileNetV3 / EfficientNet-style runs, 0.98 every
    epoch for V2) and the batch size, hence ``steps_per_epoch``, varies by setup.

    * warmup: ``base * step / warmup_steps`` for ``step < warmup_steps`` (0 at
      step 0), ``warmup_steps = round(warmup_epochs * steps_per_epoch)``.
    * ``'exponential'``: ``base * decay_rate ** floor((step - warmup_steps) /
      (decay_epochs * steps_per_epoch))`` -- TF's staircase ``exponential_decay``
      shifted by the warmup, so the first decay happens one full period after the
      warmup ends.
    * ``'cosine'``: from ``base`` at the end of warmup to
      ``base * end_learning_rate_factor`` at ``num_epochs * steps_per_epoch``,
      constant afterwards: ``base * ((1 - f) * 0.5 * (1 + cos(pi * t / T)) + f)``,
      Keras ``CosineDecay`` with ``alpha=f``.
    * ``'linear'``: from ``base`` at the end of warmup to 0 at
      ``num_epochs * steps_per_epoch`` (the ShuffleNet papers).
    * ``'constant'``: ``base`` after the warmup.

    ``warmup_style='absolute'`` instead evaluates the decay at the absolute step
    (counting the warmup's steps) and warms up linearly from 0 to the decay's
    value at ``warmup_steps``: official/vision's ``LinearWarmup``. A
    ``floor_factor`` keeps the rate after the warmup at or above
    ``floor_factor * base`` (tensorflow/tpu's MobileNet: 1e-4).

    Args:
      base_learning_rate: peak learning rate (already scaled for the batch size).
      steps_per_epoch: optimiser steps per epoch; must be positive.
      num_epochs: total training length in epochs (used by ``'cosine'``).
      warmup_epochs: length of the linear warmup in epochs (0 disables it).
      schedule: one of :data:`SCHEDULES`.
      decay_rate: multiplicative factor per decay period (``'exponential'``).
      decay_epochs: decay period in epochs (``'exponential'``).
      end_learning_rate_factor: final fraction of the base rate (``'cosine'``).
      warmup_style: one of :data:`WARMUP_STYLES`.
      floor_factor: lower bound of the rate after the warmup, as a fraction of
        ``base_learning_rate``.

    Returns:
      An optax schedule mapping an integer step to a float32 learning rate.

    Raises:
      ValueError: for an unknown ``schedule`` or inconsistent durations.
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f'Unknown learning-rate schedule {schedule!r}; expected one of '
            f'{", ".join(repr(s) for s in SCHEDULES)}.'
        )
    if steps_per_epoch <= 0:
        raise ValueError(f'steps_per_epoch must be positive, got {steps_per_epoch}.')
    if warmup_epochs < 0:
        raise ValueError(f'warmup_epochs must be >= 0, got {warmup_epochs}.')
    if warmup_style not in WARMUP_STYLES:
        raise ValueError(f'Unknown warmup style {warmup_style!r}; expected one of '
                         f'{", ".join(repr(s) for s in WARMUP_STYLES)}.')

    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    total_steps = int(round(num_epochs * steps_per_epoch))
    # Steps the decay phase spans: all of them when it counts from step 0.
    decay_start = warmup_steps if warmup_style == 'offset' else 0

    if schedule == 'exponential':
        decay_steps = decay_epochs * steps_per_epoch
        if decay_steps <= 0:
            raise ValueError(f'decay_epochs * steps_per_epoch must be positive, got {decay_steps}.')
        # transition_steps may be fractional (2.4 epochs); optax divides in float,
        # which is the formula we promise.
        main = optax.exponential_decay(
            init_value=base_learning_rate,
            transition_steps=decay_steps,
            decay_rate=decay_rate,
            staircase=True,
        )
    elif schedule in ('cosine', 'linear'):
        decay_steps = total_steps - decay_start
        if decay_steps <= 0:
            raise ValueError(
                f'{schedule} schedule needs num_epochs ({num_epochs}) > warmup_epochs ' f'({warmup_epochs}).'
            )
        if schedule == 'cosine':
            main = optax.cosine_decay_schedule(
                init_value=base_learning_rate,
                decay_steps=decay_steps,
                alpha=end_learning_rate_factor,
            )
        else:
            main = optax.linear_schedule(
                init_value=base_learning_rate, end_value=0.0, transition_steps=decay_steps
            )
    else:
        main = optax.constant_schedule(base_learning_rate)
    if floor_factor > 0:
        main = _with_floor(main, floor_factor * base_learning_rate)

    if warmup_steps > 0 and warmup_style == 'offset':
        warmup = optax.linear_schedule(init_value=0.0, end_value=base_learning_rate, transition_steps=warmup_steps)
        joined = optax.join_schedules([warmup, main], [warmup_steps])
    elif warmup_steps > 0:
        warmup = optax.linear_schedule(init_value=0.0, end_value=main(warmup_steps), transition_steps=warmup_steps)
        joined = _switch_at(warmup_steps, warmup, main)
    else:
        joined = main

    def lr_fn(step):
        # Always a float32 array, whatever branch is taken, so the value can be
        # logged as a metric and used inside jit without dtype surprises.
        return jnp.asarray(joined(step), dtype=jnp.float32)

    return lr_fn


def _with_floor(schedule: optax.Schedule, floor: float) -> optax.Schedule:
    return lambda step: jnp.maximum(schedule(step), floor)


def _switch_at(boundary: int, before: optax.Schedule, after: optax.Schedule) -> optax.Schedule:
    """`before` for steps < boundary, then `after` at the absolute step (unlike optax.join_schedules)."""
    return lambda step: jnp.where(step < boundary, before(step), after(step))


def _path_element_name(entry: Any) -> str:
    """Name of one element of a ``jax.tree_util`` key path, as a string."""
    for attr in ('key', 'name', 'idx'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def weight_decay_mask(params: Any, *, depthwise: bool = False) -> Any:
    """Which parameters get L2 weight decay: conv/dense kernels, depthwise ones only if `depthwise`.

    The MobileNet papers regularise only the "real" weights: biases and BatchNorm
    scale/offset are not decayed (standard practice), and MobileNetV1 (Sec. 4)
    notes that depthwise filters should get little or no decay because they hold
    so few parameters. A leaf is masked in iff its name is ``'kernel'`` and no
    module on its path has ``'depthwise'`` in its name (case-insensitive) -- the
    model zoo's convention for naming depthwise convolutions. The shape cannot be
    used instead: a 3x3 stem conv on 1-channel images has the same
    ``(3, 3, 1, C)`` kernel shape as a depthwise conv.

    Args:
      params: a Flax ``params`` pytree (``dict`` or ``FrozenDict``).

    Returns:
      A pytree of Python bools with the same structure as ``params``, usable as
      the ``mask`` of ``optax.add_decayed_weights``. The ShuffleNet and timm recipes
      decay depthwise kernels too (``depthwise=True``).
    """

    def is_decayed(path, _):
        names = [_path_element_name(p) for p in path]
        if not names or names[-1] != 'kernel':
            return False
        return depthwise or not any('depthwise' in n.lower() for n in names[:-1])

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def _is_batch_norm(names: list) -> bool:
    """The zoo names its BatchNorm layers 'bn' or '<something>_bn'."""
    return any(n == 'bn' or n.endswith('_bn') for n in names[:-1])


def decoupled_decay_mask(params: Any) -> Any:
    """Which parameters AdamW decays: all but BatchNorm's (official/vision's AdamWeightDecay skips
    'batch_normalization' variables; biases and depthwise kernels are decayed)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not _is_batch_norm([_path_element_name(p) for p in path]), params)


def create_optimizer(
    *,
    learning_rate_fn: optax.ScalarOrSchedule,
    weight_decay: float,
    params_for_mask: Optional[Any] = None,
    optimizer: str = 'rmsprop',
    rmsprop_decay: float = 0.9,
    rmsprop_initial_scale: float = 1.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    epsilon: float = 1.0,
    adam_epsilon: float = 1e-8,
    decay_depthwise: bool = False,
    decoupled_weight_decay: float = 0.0,
    grad_clip_norm: Optional[float] = None,
) -> optax.GradientTransformation:
    """The full optimiser: [clip] -> coupled L2 on masked kernels -> optimizer.

    The L2 term is *coupled* (added to the gradient, ``g + wd * w``) rather than
    decoupled (AdamW-style), because TF-slim's ``l2_regularizer(wd)`` adds
    ``wd * l2_loss(w) = wd * sum(w**2) / 2`` to the loss, whose gradient ``wd * w``
    then goes through RMSprop's normalisation like any other gradient. The
    published ``weight_decay=4e-5`` only means the same thing under this form.

    Gradient clipping (if any) sees only the data gradient, before the L2 term.

    The learning rate is not stored in the optimiser state; the training loop
    reports it as ``learning_rate_fn(step)``.

    Args:
      learning_rate_fn: a schedule (e.g. from :func:`learning_rate_schedule`) or
        a float.
      weight_decay: L2 coefficient; 0 disables the term entirely.
      params_for_mask: optional params pytree to precompute the decay mask from;
        by default the mask is computed from the params at each update (same
        result, works for any params tree the optimiser is applied to).
      optimizer: ``'rmsprop'`` (TF form, the papers), ``'adam'`` (the CIFAR-10
        reproduction study), ``'adamw'`` (official/vision's MobileNetV3-Large) or
        ``'sgd'`` (momentum SGD, PyTorch form; Nesterov if `nesterov`).
      rmsprop_decay: RMSprop mean-square decay.
      rmsprop_initial_scale: RMSprop mean square's initial value (1 TF1, 0 Keras).
      momentum: momentum for ``'rmsprop'`` and ``'sgd'``.
      nesterov: Nesterov momentum for ``'sgd'``.
      epsilon: RMSprop epsilon (inside the square root).
      adam_epsilon: Adam/AdamW epsilon.
      decay_depthwise: the L2 term covers depthwise kernels too.
      decoupled_weight_decay: ``'adamw'``'s ``w -= lr * decay * w`` on all but
        BatchNorm parameters (:func:`decoupled_decay_mask`).
      grad_clip_norm: if set and positive, clip gradients to this global norm.

    Returns:
      An ``optax.GradientTransformation``; its ``update`` needs ``params`` when
      ``weight_decay > 0``.

    Raises:
      ValueError: for an unknown ``optimizer`` or a negative ``weight_decay``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f'Unknown optimizer {optimizer!r}; expected one of ' f'{", ".join(repr(o) for o in OPTIMIZERS)}.'
        )
    if weight_decay < 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}.')

    parts = []
    if grad_clip_norm is not None and grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if decoupled_weight_decay and optimizer != 'adamw':
        raise ValueError(f'decoupled_weight_decay={decoupled_weight_decay} needs the adamw optimizer, '
                         f'not {optimizer!r}.')
    if weight_decay > 0:
        mask_fn = functools.partial(weight_decay_mask, depthwise=decay_depthwise)
        mask: Union[Any, Callable[[Any], Any]] = mask_fn if params_for_mask is None else mask_fn(params_for_mask)
        parts.append(optax.add_decayed_weights(weight_decay, mask=mask))

    if optimizer == 'rmsprop':
        parts.append(tf_rmsprop(learning_rate_fn, decay=rmsprop_decay, momentum=momentum, epsilon=epsilon,
                                initial_scale=rmsprop_initial_scale))
    elif optimizer == 'adam':
        parts.append(optax.adam(learning_rate_fn, eps=adam_epsilon))
    elif optimizer == 'adamw':
        parts.append(optax.adamw(learning_rate_fn, eps=adam_epsilon, weight_decay=decoupled_weight_decay,
                                 mask=decoupled_decay_mask))
    else:
        parts.append(optax.sgd(learning_rate_fn, momentum=momentum, nesterov=nesterov))
    return optax.chain(*parts)


def ema_update(ema_tree: Any, new_tree: Any, decay: Any) -> Any:
    """``ema = decay * ema + (1 - decay) * new``, leaf by leaf, dtype preserved.

    Used for both ``params`` and ``batch_stats`` so that evaluating the EMA model
    uses BatchNorm statistics consistent with the averaged weights. The blend is
    computed in at least float32 (bf16 EMAs would stall: 1 - 0.9999 underflows
    the bf16 mantissa) and cast back to the EMA leaf's dtype. Non-float leaves
    (e.g. integer counters) are copied from ``new_tree``.

    Args:
      ema_tree: the running average.
      new_tree: the current values; same structure as ``ema_tree``.
      decay: scalar in [0, 1] (float or traced array); 0 copies ``new_tree``.

    Returns:
      The updated average, same structure and dtypes as ``ema_tree``.
    """
    decay = jnp.asarray(decay, dtype=jnp.float32)

    def blend(ema, new):
        ema = jnp.asarray(ema)
        new = jnp.asarray(new)
        if not jnp.issubdtype(ema.dtype, jnp.floating):
            return new.astype(ema.dtype)
        compute_dtype = jnp.promote_types(ema.dtype, jnp.float32)
        out = decay.astype(compute_dtype) * ema.astype(compute_dtype) + (1 - decay).astype(
            compute_dtype
        ) * new.astype(compute_dtype)
        return out.astype(ema.dtype)

    return jax.tree.map(blend, ema_tree, new_tree)


def ema_decay_with_warmup(step: Any, decay: Any) -> jax.Array:
    """EMA decay at ``step`` with TF's ``num_updates`` warmup.

    ``tf.train.ExponentialMovingAverage(decay, num_updates=step)`` uses
    ``min(decay, (1 + step) / (10 + step))`` so the average tracks the fast-moving
    early weights instead of being dominated by the random initialisation. A
    ``decay <= 0`` means the EMA is disabled and returns 0 (the EMA then equals a
    copy of the weights under :func:`ema_update`).

    Args:
      step: number of optimiser updates so far (int or traced array).
      decay: the configured EMA decay, e.g. 0.9999.

    Returns:
      A float32 scalar.
    """
    step = jnp.asarray(step, dtype=jnp.float32)
    decay = jnp.asarray(decay, dtype=jnp.float32)
    warm = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jnp.where(decay <= 0, jnp.zeros_like(warm), warm)


def run_length(config, steps_per_epoch: int) -> int:
    """Optimizer steps of a training run: `config.num_train_steps` when > 0, else its epochs' worth."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def optimizer_for_run(config, steps_per_epoch: int):
    """(learning-rate schedule, optimizer) of a training run of `config` at `steps_per_epoch`.

    The base rate is scaled by ``batch_size / 256`` when `config.scale_learning_rate`; the schedule spans
    `run_length`, and a warmup that is not shorter than the run shrinks to half of it. The training loop
    trains with this optimizer and the cost report counts it.
    """
    base_lr = config.learning_rate * (config.batch_size / 256.0 if config.scale_learning_rate else 1.0)
    total_epochs = run_length(config, steps_per_epoch) / steps_per_epoch
    warmup_epochs = config.warmup_epochs
    if warmup_epochs >= total_epochs:
        warmup_epochs = total_epochs / 2
        logging.warning('config.warmup_epochs=%s is not shorter than the run (%.3g epochs); warming up over %.3g '
                        'epochs instead.', config.warmup_epochs, total_epochs, warmup_epochs)
    return optimizer_from_config(config, steps_per_epoch=steps_per_epoch, num_epochs=total_epochs,
                                 warmup_epochs=warmup_epochs, base_learning_rate=base_lr)


def optimizer_from_config(config, *, steps_per_epoch: int, num_epochs: float, warmup_epochs: float,
                          base_learning_rate: float):
    """(learning-rate schedule, optimizer) from a training config's fields; one place for train and cost."""
    learning_rate_fn = learning_rate_schedule(
        base_learning_rate=base_learning_rate, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
        warmup_epochs=warmup_epochs, schedule=config.schedule, decay_rate=config.lr_decay_rate,
        decay_epochs=config.lr_decay_epochs, warmup_style=config.warmup_style,
        floor_factor=config.lr_floor_factor, end_learning_rate_factor=config.get('cosine_end_factor', 0.0))
    return learning_rate_fn, transform_from_config(config, learning_rate_fn)


def transform_from_config(config, learning_rate_fn: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """The optimizer a training config names, with its every field, at the given learning rate(s);
    with `config.freeze_backbone`, it updates the classifier only."""
    transform = create_optimizer(
        learning_rate_fn=learning_rate_fn, weight_decay=config.weight_decay, optimizer=config.optimizer,
        rmsprop_decay=config.rmsprop_decay, rmsprop_initial_scale=config.rmsprop_initial_scale,
        momentum=config.momentum, nesterov=config.nesterov, epsilon=config.epsilon,
        adam_epsilon=config.adam_epsilon, decay_depthwise=config.weight_decay_depthwise,
        decoupled_weight_decay=config.decoupled_weight_decay, grad_clip_norm=config.grad_clip_norm or None)
    return frozen_backbone(transform) if config.get('freeze_backbone') else transform


CLASSIFIER = 'classifier'   # the top-level name of every model's last layer


def classifier_only_labels(params: Any) -> Any:
    """'train' for the leaves under the top-level classifier, 'frozen' for every other leaf."""
    def label(path, _):
        return 'train' if _path_element_name(path[0]) == CLASSIFIER else 'frozen'
    return jax.tree_util.tree_map_with_path(label, params)


def frozen_backbone(transform: optax.GradientTransformation) -> optax.GradientTransformation:
    """`transform` on the classifier, zero updates (no weight decay either) everywhere else. BatchNorm
    layers still normalise with batch statistics in training and update their moving averages."""
    return optax.multi_transform({'train': transform, 'frozen': optax.set_to_zero()}, classifier_only_labels)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy against one-hot labels, optionally label-smoothed."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
