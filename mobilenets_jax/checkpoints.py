"""Orbax checkpointing: an async `CheckpointManager` in `<workdir>/checkpoints` keeping the last N.

Checkpoints hold one item, 'state': a dict of step, params, batch_stats, opt_state, ema_params,
ema_batch_stats and rng. Everything in it is replicated, so restoring onto a mesh of any size only
needs an abstract target whose leaves carry the new mesh's sharding.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, 'checkpoints')


def create_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def abstract_like(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
    """ShapeDtypeStructs of `tree`, placed with `sharding` (the restore target)."""
    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else
                                    getattr(x, 'sharding', None))
    return jax.tree.map(leaf, tree)


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
    """Restores 'state' at `step` into the structure, dtypes and shardings of the abstract `target`."""
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored['state']
