"""Starting a training run from pretrained weights (`config.init_from`): a workdir of ours, a converted one,
or a released file of a supported source.

Every variable of the new model is taken from the pretrained ones and must have the same shape, except the
classifier's when the class count differs (or `config.reinit_classifier` asks for a new one for a new task):
that one keeps its fresh initialisation, and the log says so.
A variable with no counterpart, or one left over, is an error naming it (nothing is dropped silently).
"""
from __future__ import annotations

from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from mobilenets_jax.optim import CLASSIFIER


def _flat(tree: dict) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def merge(fresh: dict, pretrained: dict, *, reinit_classifier: bool = False) -> tuple[dict, list]:
    """`fresh` ({'params', 'batch_stats'}) with every leaf taken from `pretrained`, the classifier excepted
    when its shape differs or `reinit_classifier`; returns (merged, names of the leaves kept fresh)."""
    fresh_flat, pretrained_flat = _flat(fresh), _flat(pretrained)
    missing = sorted(set(fresh_flat) - set(pretrained_flat))
    unused = sorted(set(pretrained_flat) - set(fresh_flat))
    if missing or unused:
        raise ValueError(f'config.init_from does not fit the model: missing {missing or "nothing"}; unused '
                         f'{unused or "nothing"} (another model or alpha?)')
    kept_fresh, values = [], []
    paths, treedef = jax.tree_util.tree_flatten_with_path(fresh)
    for path, leaf in paths:
        name = jax.tree_util.keystr(path, simple=True, separator='/')
        loaded = pretrained_flat[name]
        in_classifier = name.split('/')[1:2] == [CLASSIFIER]
        if tuple(loaded.shape) == tuple(leaf.shape) and not (reinit_classifier and in_classifier):
            values.append(np.asarray(loaded, dtype=leaf.dtype))
        elif in_classifier:
            kept_fresh.append(name)
            values.append(leaf)
        else:
            raise ValueError(f'config.init_from: {name} has shape {tuple(loaded.shape)} there, '
                             f'{tuple(leaf.shape)} in this model (another model or alpha?)')
    return jax.tree_util.tree_unflatten(treedef, values), kept_fresh


def _from_workdir(workdir: str) -> dict:
    """The inference weights (EMA when the run has them) of the newest readable step of a workdir."""
    from mobilenets_jax import checkpoints, steps
    variables, _, _ = checkpoints.restore_inference_variables(workdir, steps.create_mesh(jax.local_devices()[:1]))
    return jax.tree.map(np.asarray, variables)


# A released file's suffix -> its source; `.pth` is torchvision's, unless the name says `timm:` (timm `.pth`).
_SOURCE_BY_SUFFIX = {'.h5': 'keras', '.pth': 'torchvision', '.safetensors': 'timm'}


def _split_source(init_from: str) -> tuple[Optional[str], str]:
    """('timm', '/path/x.pth') for 'timm:/path/x.pth'; (None, init_from) without a known 'SOURCE:' prefix."""
    from mobilenets_jax import weights
    prefix, _, rest = init_from.partition(':')
    return (prefix, rest) if rest and prefix in weights.SOURCES else (None, init_from)


def source_of(init_from: str) -> tuple[str, str]:
    """(source, path) of a released file: 'keras' for .h5, 'torchvision' for .pth, 'timm' for .safetensors;
    a 'SOURCE:' prefix (e.g. 'timm:/path/pytorch_model.pth') names the source explicitly."""
    source, path = _split_source(init_from)
    if source is not None:
        return source, path
    for suffix, source in _SOURCE_BY_SUFFIX.items():
        if init_from.endswith(suffix):
            return source, init_from
    raise ValueError(f'config.init_from={init_from!r}: neither a workdir with checkpoints/ nor a released file '
                     f'({", ".join(f"{s} ({n})" for s, n in _SOURCE_BY_SUFFIX.items())}, or SOURCE:PATH)')


def check_exists(init_from: str) -> None:
    """ValueError, before anything trains, when `config.init_from` names nothing (local or gs:// paths,
    with or without a 'SOURCE:' prefix)."""
    import tensorflow as tf   # gfile: local paths and gs:// alike
    if not tf.io.gfile.exists(_split_source(init_from)[1]):
        raise ValueError(f'config.init_from={init_from!r}: no such file or directory (a workdir of ours, or a '
                         f'weight file: {", ".join(_SOURCE_BY_SUFFIX)}, or SOURCE:PATH)')


def pretrained_variables(init_from: str, config: ml_collections.ConfigDict) -> dict:
    """{'params', 'batch_stats'} of `init_from`: a workdir (has checkpoints/) or a released weight file."""
    import tensorflow as tf
    from mobilenets_jax import checkpoints, weights
    if tf.io.gfile.isdir(checkpoints.checkpoint_dir(init_from)):
        return _from_workdir(init_from)
    source, path = source_of(init_from)
    _warn_about_other_options(weights.build_options(source, config.model.name), config)
    converted = weights.load(path, source=source, model=config.model.name, alpha=config.model.alpha)
    return jax.tree.map(np.asarray, converted.variables)


def _warn_about_other_options(source_options: dict, config: ml_collections.ConfigDict) -> None:
    """Fine-tuning with other options than the weights were trained with works, but starts off worse."""
    ours = {'activation': config.model.options.get('activation', 'relu'), 'bn_epsilon': config.model.bn_epsilon,
            'padding_style': config.model.padding_style}
    differ = [f'{key}={value!r} (config: {ours[key]!r})' for key, value in sorted(source_options.items())
              if key in ours and ours[key] is not None and ours[key] != value]
    if differ:
        logging.warning('config.init_from: the weights were trained with %s; set those config.model fields to '
                        'start from the same function', ', '.join(differ))


def initial_variables(fresh: dict, config: ml_collections.ConfigDict) -> dict:
    """`fresh` overwritten by `config.init_from`'s weights (see `merge`); logs what was kept fresh."""
    reinit = bool(config.get('reinit_classifier'))
    merged, kept_fresh = merge(fresh, pretrained_variables(config.init_from, config), reinit_classifier=reinit)
    why = 'config.reinit_classifier' if reinit else 'class count differs'
    logging.info('Initialised from %s; %s', config.init_from,
                 f're-initialised ({why}): {", ".join(kept_fresh)}' if kept_fresh else 'every variable loaded')
    return merged
