"""Everything orbax: an async `CheckpointManager` in `<workdir>/checkpoints` keeping the last N, and the
read-only side that evaluation uses (find a step, check it fits a model, restore only what inference needs).

Every checkpoint step holds two items:
  'state'     a dict of step, params, batch_stats, opt_state, ema_params, ema_batch_stats and rng. Everything
              in it is replicated, so restoring onto a mesh of any size only needs an abstract target whose
              leaves carry the new mesh's sharding.
  'metadata'  a small JSON record of the run that wrote it (`CheckpointMetadata`): whether the state holds EMA
              weights, and the model, dataset and preprocessing it was trained with.
Checkpoints written before 'metadata' existed hold 'state' only; readers then fall back to telling EMA
weights apart by comparing them with the raw ones (a run without EMA stores bitwise copies).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging as logging_std
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenets_jax import config_lib
from mobilenets_jax.data import datasets

STATE_ITEM = 'state'
METADATA_ITEM = 'metadata'
WEIGHTS = ('ema', 'raw')


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, 'checkpoints')


# ----------------------------------------------------------------------------------------------
# What a checkpoint says about the run that wrote it
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckpointMetadata:
    """Saved with every step, so that readers need not guess how the state was trained."""
    has_ema: bool          # ema_params/ema_batch_stats are a moving average, not copies of the raw weights
    ema_decay: float
    model: str
    alpha: float
    groups: Optional[int]  # shufflenet_v1 only
    dataset: str
    num_classes: int
    image_size: int
    normalization: str

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> 'CheckpointMetadata':
        return cls(
            has_ema=bool(config.ema_decay > 0), ema_decay=float(config.ema_decay),
            model=config.model.name, alpha=float(config.model.alpha), groups=config.model.get('groups'),
            dataset=config.dataset, num_classes=datasets.get_dataset_info(config.dataset).num_classes,
            image_size=config_lib.image_size(config), normalization=config.normalization)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> 'CheckpointMetadata':
        """Ignores fields it does not know, so that a later version's checkpoints stay readable."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


# ----------------------------------------------------------------------------------------------
# Training: save and resume
# ----------------------------------------------------------------------------------------------

def create_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, metadata: CheckpointMetadata, *,
         force: bool = False) -> bool:
    """Saves `state` and its `metadata` as one step (asynchronously if the manager is)."""
    return manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        METADATA_ITEM: ocp.args.JsonSave(metadata.to_json())}), force=force)


def abstract_like(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
    """ShapeDtypeStructs of `tree`, placed with `sharding` (the restore target)."""
    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else
                                    getattr(x, 'sharding', None))
    return jax.tree.map(leaf, tree)


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
    """Restores 'state' at `step` into the structure, dtypes and shardings of the abstract `target`."""
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))
    return restored[STATE_ITEM]


# ----------------------------------------------------------------------------------------------
# Reading someone's run: find the step, check it fits, restore only the inference weights
# ----------------------------------------------------------------------------------------------

class _DropReadOnlyNotice(logging_std.Filter):
    """Orbax warns that a read-only manager is read-only; for a reader that is the point."""

    def filter(self, record):
        return not str(record.msg).startswith('Given directory is read only')


@contextlib.contextmanager
def _quiet_read_only_notice():
    logger = logging.get_absl_logger()
    notice = _DropReadOnlyNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def has_steps(workdir: str) -> bool:
    """Whether `<workdir>/checkpoints` holds any step directory (complete or not), without opening orbax."""
    import tensorflow as tf   # gfile: local paths and gs:// alike
    directory = checkpoint_dir(workdir)
    return tf.io.gfile.isdir(directory) and any(name.rstrip('/').isdigit() for name in tf.io.gfile.listdir(directory))


def open_checkpoints(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager over `<workdir>/checkpoints` that can read both items' metadata.

    Read-only: evaluating someone else's run never creates, deletes or cleans anything in it.
    """
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           max_to_keep=None)
    with _quiet_read_only_notice():
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers={
            STATE_ITEM: ocp.PyTreeCheckpointHandler(), METADATA_ITEM: ocp.JsonCheckpointHandler()})


def resolve_step(manager: ocp.CheckpointManager, workdir: str, step: Optional[int] = None) -> int:
    """The requested step, or the latest one; ValueError naming the directory or the existing steps."""
    steps = sorted(manager.all_steps())
    directory = checkpoint_dir(workdir)
    if not steps:
        raise ValueError(f'no checkpoint in {directory} (looked for orbax step directories there; '
                         f'is --workdir the directory that training wrote?)')
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f'no checkpoint for step {step} in {directory}; existing steps: '
                         f'{", ".join(str(s) for s in steps)}')
    return int(step)


def saved_tree(manager: ocp.CheckpointManager, step: int) -> dict:
    """The saved 'state' tree with array metadata (shape, dtype) at its leaves; reads no arrays."""
    metadata = manager.item_metadata(step)
    state = metadata[STATE_ITEM] if metadata is not None and STATE_ITEM in metadata else None
    state = getattr(state, 'tree', state)
    if not isinstance(state, dict) or 'params' not in state:
        raise ValueError(f'the checkpoint at step {step} in {manager.directory} has no training state '
                         "('state' item with params); was it written by train.py?")
    return state


def read_metadata(manager: ocp.CheckpointManager, step: int) -> Optional[CheckpointMetadata]:
    """The step's `CheckpointMetadata`; None for checkpoints written before it was saved."""
    items = manager.item_metadata(step)
    if items is None or METADATA_ITEM not in items:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
    return CheckpointMetadata.from_json(restored[METADATA_ITEM])


def _flat_shapes(tree: Any) -> dict:
    """{'params/block_1_depthwise/kernel': shape, ...} over the leaves of `tree`."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = '/'.join(str(getattr(key, 'key', getattr(key, 'idx', getattr(key, 'name', key)))) for key in path)
        flat[name] = tuple(leaf.shape)
    return flat


def _params_first(name: str):
    """Report trainable parameters before BatchNorm statistics: they are what a user recognises."""
    return (not name.startswith('params/'), name)


def check_shapes(saved: dict, expected: dict, config: ml_collections.ConfigDict, num_classes: int) -> None:
    """ValueError naming the first parameter that differs and the config field that probably differs.

    `saved` and `expected` are {'params': ..., 'batch_stats': ...} trees of array metadata / shapes.
    """
    saved_flat, expected_flat = _flat_shapes(saved), _flat_shapes(expected)
    described = (f'config.model.name={config.model.name!r}, config.model.alpha={config.model.alpha}, '
                 f'config.dataset={config.dataset!r}')
    missing = sorted(set(expected_flat) - set(saved_flat), key=_params_first)
    extra = sorted(set(saved_flat) - set(expected_flat), key=_params_first)
    if missing or extra:
        if missing:
            what = f'the model ({described}) has {missing[0]!r}, which the checkpoint lacks'
        else:
            what = f'the checkpoint has {extra[0]!r}, which the model ({described}) lacks'
        more = len(missing) + len(extra) - 1
        raise ValueError(
            f'the checkpoint does not fit the config: {what}'
            f'{f" ({more} more parameters differ)" if more else ""}; config.model.name probably differs '
            f'from the one trained (checkpoint: {len(saved_flat)} arrays, model: {len(expected_flat)})')
    differing = [name for name in sorted(expected_flat, key=_params_first)
                 if saved_flat[name] != expected_flat[name]]
    if not differing:
        return

    def classifier_only(name):
        saved_shape, expected_shape = saved_flat[name], expected_flat[name]
        return (len(saved_shape) == len(expected_shape) and expected_shape[-1] == num_classes
                and saved_shape[:-1] == expected_shape[:-1])

    if all(classifier_only(name) for name in differing):
        name = differing[0]
        field = (f'config.dataset probably differs: the checkpoint classifies {saved_flat[name][-1]} classes, '
                 f'{config.dataset!r} has {num_classes}')
    else:
        name = next(n for n in differing if not classifier_only(n))
        field = 'config.model.alpha probably differs'
        if config.model.name == 'shufflenet_v1':
            field += ' (or config.model.groups)'
        field += ' (or config.model.name, if another architecture wrote it)'
    more = len(differing) - 1
    raise ValueError(
        f'the checkpoint does not fit the config: {name} has shape {saved_flat[name]} in the checkpoint but '
        f'{expected_flat[name]} in the model ({described})'
        f'{f"; {more} more parameters differ" if more else ""}; {field}')


# ----------------------------------------------------------------------------------------------
# Resuming: the newest complete and readable step; damaged ones are set aside, never deleted
# ----------------------------------------------------------------------------------------------

DAMAGED_SUFFIX = '.damaged'


def is_damage(error: BaseException) -> bool:
    """A read failure of the files themselves, as opposed to our own "does not fit" ValueErrors."""
    return not isinstance(error, ValueError) or 'has no training state' in str(error)


def describe_damage(error: BaseException) -> str:
    """The first line of an exception's message: orbax's and tensorstore's run to dozens of lines."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    text = text.split(' See full TensorStore details')[0]
    return f'{type(error).__name__}: {text[:160]}'


def set_aside(workdir: str, step: int, why: str) -> str:
    """Renames the step's directory to `<step>.damaged` (`.damaged.2`, ... if taken), warns in one line."""
    import tensorflow as tf   # gfile: local paths and gs:// alike
    source = os.path.join(checkpoint_dir(workdir), str(step))
    target, n = source + DAMAGED_SUFFIX, 1
    while tf.io.gfile.exists(target):
        n += 1
        target = f'{source}{DAMAGED_SUFFIX}.{n}'
    tf.io.gfile.rename(source, target)
    logging.warning('The checkpoint at step %d is damaged (%s); moved it to %s and resuming from the one before.',
                    step, why, target)
    return target


def _check_state_fits(saved: dict, target: Any, config: ml_collections.ConfigDict, num_classes: int) -> None:
    """ValueError (a user error, not damage) when the saved state is another model's or optimizer's."""
    check_shapes({k: saved[k] for k in ('params', 'batch_stats') if k in saved},
                 {k: target[k] for k in ('params', 'batch_stats') if k in target}, config, num_classes)
    saved_flat, target_flat = _flat_shapes(saved), _flat_shapes(target)
    if saved_flat != target_flat:
        name = next(iter(sorted(set(saved_flat) ^ set(target_flat)) or
                         [n for n in sorted(target_flat) if saved_flat.get(n) != target_flat[n]]))
        raise ValueError(f'the checkpoint does not fit the config: its training state differs at {name!r} '
                         f'(checkpoint: {saved_flat.get(name)}, config: {target_flat.get(name)}); '
                         f'config.optimizer (or config.ema_decay) probably differs from the one trained with '
                         f'{config.optimizer!r}')


class Unreadable(Exception):
    """A step's files do not read back (truncated, missing metadata): damage, not a user error."""


def read_or_damaged(what: str, read: Callable[..., Any], *args,
                    damage: Optional[Callable[[BaseException], bool]] = None):
    """`read(*args)`, with a failure of the files turned into `Unreadable('<what> is unreadable: ...')`.

    `damage` says which failures are the files' (default: any, e.g. a truncated `_METADATA` raises
    json's ValueError); the others propagate (e.g. our own "does not fit" or "no EMA" ValueErrors).
    """
    try:
        return read(*args)
    except Exception as error:   # noqa: BLE001 — damage shows up as whatever orbax/tensorstore/json raise
        if damage is not None and not damage(error):
            raise
        raise Unreadable(f'{what} is unreadable: {describe_damage(error)}') from error


def newest_readable(steps: list, read: Callable[[int], Any], on_damage: Callable[[int, str], None]):
    """(step, read(step)) for the first of `steps` whose files read back, else (None, None).

    `read` marks damage by raising `Unreadable` (see `read_or_damaged`); such a step goes to
    `on_damage(step, why)`, which may raise to stop. Any other error (a checkpoint that does not fit the
    config) propagates at once.
    """
    for step in steps:
        try:
            return step, read(step)
        except Unreadable as damaged:
            on_damage(step, str(damaged))
    return None, None


def restore_newest_readable(workdir: str, manager: ocp.CheckpointManager, target: Any,
                            config: ml_collections.ConfigDict, num_classes: int, *, keep: int,
                            move_damaged: bool = True):
    """(manager, state, step) from the newest step that reads back whole; (manager, None, None) if none.

    A step whose metadata or arrays cannot be read is moved aside (`set_aside`, by the process that
    `move_damaged`: process 0 of a multi-host run) and the next older one is tried; a step that reads
    but does not fit the config raises ValueError (that is not damage). The returned manager is a fresh
    one when steps were set aside (the old one still lists them).
    """
    damaged = []
    reader = open_checkpoints(workdir)   # the training manager has no item handlers to read metadata with

    def read(step):
        saved = read_or_damaged('its metadata', saved_tree, reader, step)
        _check_state_fits(saved, target, config, num_classes)
        return read_or_damaged('its arrays', restore, manager, step, target)

    def on_damage(step, why):
        damaged.append(step)
        if move_damaged:
            set_aside(workdir, step, why)
        else:
            logging.warning('The checkpoint at step %d is damaged (%s); trying the one before.', step, why)

    try:
        step, state = newest_readable(sorted(manager.all_steps(), reverse=True), read, on_damage)
    finally:
        reader.close()
    return _fresh(manager, workdir, keep, damaged), state, step


def _fresh(manager: ocp.CheckpointManager, workdir: str, keep: int, damaged: list) -> ocp.CheckpointManager:
    """The manager to train with: a new one when steps were set aside under the old one's feet."""
    if not damaged:
        return manager
    manager.close()
    return create_manager(workdir, keep=keep)


def _restore_target(tree: Any, sharding: NamedSharding):
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype), tree)
    return item, restore_args


def restore_subset(manager: ocp.CheckpointManager, step: int, target: dict, mesh: Mesh) -> dict:
    """Restores only the top-level entries of 'state' named in `target`, replicated over `mesh`.

    `target` maps entry names ('params', 'ema_batch_stats', ...) to trees of shapes/dtypes. The rest of the
    checkpoint (optimizer state, rng, ...) is skipped by orbax's partial restore, never read or allocated.
    """
    empty = {name: tree for name, tree in target.items() if not jax.tree.leaves(tree)}
    target = {name: tree for name, tree in target.items() if name not in empty}
    item, restore_args = _restore_target(target, NamedSharding(mesh, P()))
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)}))
    return {**dict(restored[STATE_ITEM]), **empty}


def _local_copy(x: jax.Array) -> np.ndarray:
    return np.asarray(x.addressable_shards[0].data)


def _replicas_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of two replicated trees (each process compares its own replica)."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(_local_copy(x), _local_copy(y)) for x, y in zip(leaves_a, leaves_b))


def check_weights(weights: Optional[str]) -> None:
    if weights not in (None, *WEIGHTS):
        raise ValueError(f'--weights={weights!r}; allowed: {", ".join(WEIGHTS)}')


def _inference_pair(manager: ocp.CheckpointManager, step: int, expected: dict, mesh: Mesh,
                    ema: bool) -> dict:
    """{'params', 'batch_stats'} restored from the raw entries of 'state', or from their EMA twins."""
    prefix = 'ema_' if ema else ''
    restored = restore_subset(manager, step, {f'{prefix}params': expected['params'],
                                              f'{prefix}batch_stats': expected['batch_stats']}, mesh)
    return {'params': restored[f'{prefix}params'], 'batch_stats': restored[f'{prefix}batch_stats']}


def _no_ema_error(manager: ocp.CheckpointManager, step: int, why: str) -> ValueError:
    return ValueError(f'--weights=ema, but the checkpoint at step {step} in {manager.directory} has no '
                      f'EMA weights ({why}); use --weights=raw or leave --weights out')


def _load_by_comparison(manager: ocp.CheckpointManager, step: int, expected: dict, mesh: Mesh,
                        weights: Optional[str]) -> tuple[dict, str]:
    """For checkpoints without metadata: a run without EMA saved ema_params as bitwise copies of params."""
    restored = restore_subset(manager, step, {
        'params': expected['params'], 'batch_stats': expected['batch_stats'],
        'ema_params': expected['params'], 'ema_batch_stats': expected['batch_stats']}, mesh)
    has_ema = not _replicas_equal(restored['params'], restored['ema_params'])
    if weights == 'ema' and not has_ema:
        raise _no_ema_error(manager, step, 'it was trained with config.ema_decay=0: its EMA copy equals the '
                                           'raw weights')
    if has_ema:
        return {'params': restored['ema_params'], 'batch_stats': restored['ema_batch_stats']}, 'ema'
    return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, 'raw'


def load_variables(manager: ocp.CheckpointManager, step: int, expected: dict, mesh: Mesh,
                   weights: Optional[str] = None, saved: Optional[dict] = None) -> tuple[dict, str]:
    """({'params', 'batch_stats'} on `mesh`, 'ema' | 'raw') for `weights` (None: EMA when present).

    `saved` is the checkpoint's `saved_tree` when the caller has read it already (else it is read here).
    Whether EMA weights are present is what the checkpoint's metadata says; checkpoints older than the
    metadata are told apart by comparing their EMA copy with the raw weights.
    """
    check_weights(weights)
    saved = saved_tree(manager, step) if saved is None else saved
    if weights == 'raw' or 'ema_params' not in saved:
        if weights == 'ema':
            raise ValueError(f'--weights=ema, but the checkpoint at step {step} in {manager.directory} '
                             'holds no EMA weights; use --weights=raw')
        return _inference_pair(manager, step, expected, mesh, ema=False), 'raw'
    metadata = read_metadata(manager, step)
    if metadata is None:
        return _load_by_comparison(manager, step, expected, mesh, weights)
    if metadata.has_ema:
        return _inference_pair(manager, step, expected, mesh, ema=True), 'ema'
    if weights == 'ema':
        raise _no_ema_error(manager, step, 'it was trained with config.ema_decay=0')
    return _inference_pair(manager, step, expected, mesh, ema=False), 'raw'


def restore_inference_variables(workdir: str, mesh: Mesh, *, config: Optional[ml_collections.ConfigDict] = None,
                                step: Optional[int] = None, weights: Optional[str] = None) -> tuple[dict, int, str]:
    """(variables on `mesh`, step, 'ema' | 'raw'): how eval.py, export.py and `config.init_from` read a run.

    `step` None: the newest step that reads back; a damaged newer one is skipped with a warning (reading
    only: nothing is moved). A damaged requested step, or no readable step at all, is a one-line UserError.
    `config`: the variables are restored into its model's shapes, and a checkpoint that does not fit it is a
    ValueError naming the parameter (`check_shapes`); None: the checkpoint's own shapes.
    """
    from mobilenets_jax import errors, models
    expected = None
    if config is not None:
        size = config_lib.image_size(config)
        abstract = models.abstract_variables(config_lib.create_model(config), (1, size, size, 3))
        expected = {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}
        num_classes = datasets.get_dataset_info(config.dataset).num_classes
    manager = open_checkpoints(workdir)
    try:
        newest = resolve_step(manager, workdir, step)
        candidates = [newest] if step is not None else sorted(manager.all_steps(), reverse=True)

        def read(candidate):
            saved = read_or_damaged('its metadata', saved_tree, manager, candidate)
            if expected is not None:
                check_shapes({'params': saved['params'], 'batch_stats': saved.get('batch_stats', {})}, expected,
                             config, num_classes)
            target = expected or {'params': saved['params'], 'batch_stats': saved.get('batch_stats', {})}
            return read_or_damaged('its arrays', load_variables, manager, candidate, target, mesh, weights, saved,
                                   damage=is_damage)

        def on_damage(candidate, why):
            if candidate == candidates[-1]:   # the requested step, or the oldest one
                older = '' if step is not None else '; no older step reads back'
                raise errors.UserError(f'the checkpoint at step {candidate} in {checkpoint_dir(workdir)} is '
                                       f'damaged ({why}){older}')
            logging.warning('The checkpoint at step %d is damaged (%s); reading the one before.', candidate, why)

        found, (variables, chosen) = newest_readable(candidates, read, on_damage)
    finally:
        manager.close()
    return variables, found, chosen


# ----------------------------------------------------------------------------------------------
# Converted (pretrained) weights: one step that eval.py reads like a training run's
# ----------------------------------------------------------------------------------------------

def save_converted(workdir: str, variables: dict, metadata: CheckpointMetadata, step: int = 0) -> str:
    """Writes converted `{'params', 'batch_stats'}` as `step` of `<workdir>/checkpoints`; returns that directory.

    Only the inference weights are written (no optimizer state, no EMA: `metadata.has_ema` must be False),
    which is all `evaluation.evaluate_checkpoint` restores. An existing step is refused, not overwritten.
    """
    if metadata.has_ema:
        raise ValueError('converted weights have no EMA twin: save them with has_ema=False')
    manager = create_manager(workdir, keep=1, async_save=False)
    try:
        if step in manager.all_steps():
            raise ValueError(f'{checkpoint_dir(workdir)} already holds step {step}; choose an empty --workdir')
        state = {'step': np.asarray(step, np.int32), 'params': variables['params'],
                 'batch_stats': variables.get('batch_stats', {})}
        save(manager, step, state, metadata, force=True)
        manager.wait_until_finished()
    finally:
        manager.close()
    return checkpoint_dir(workdir)
