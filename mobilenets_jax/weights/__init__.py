"""Converters from released weight files to the zoo's `{'params', 'batch_stats'}` (one module per source).

Each source builds the model with the options its weights were trained with, so the user only names the
file, the architecture and α. Supported today: Keras applications `.h5` (`weights.keras`).
"""
from __future__ import annotations

from typing import Any

from mobilenets_jax.weights import keras
from mobilenets_jax.weights.keras import Converted

SOURCES = {'keras': keras.load}
# Named in the issue, not implemented yet: they are refused with this reason rather than guessed at.
PLANNED_SOURCES = {'torchvision': 'torchvision .pth state dicts', 'timm': 'timm model.safetensors files'}


def build_options(source: str, model: str) -> dict:
    """The `create_model` options the source's weights were trained with (what `load` builds with)."""
    if source != 'keras':
        raise ValueError(f'unknown source {source!r}; supported sources: {", ".join(SOURCES)}')
    return dict(keras.BUILD_OPTIONS[model])


def load(path: str, *, source: str = 'keras', model: str, alpha: float = 1.0, **options: Any) -> Converted:
    """Reads a released weight file of `source`; see `mobilenets_jax.load_pretrained`."""
    if source in PLANNED_SOURCES:
        raise ValueError(f'source={source!r} ({PLANNED_SOURCES[source]}) is not supported yet; '
                         f'supported sources: {", ".join(SOURCES)}')
    if source not in SOURCES:
        raise ValueError(f'unknown source {source!r}; supported sources: {", ".join(SOURCES)}')
    return SOURCES[source](path, model=model, alpha=alpha, **options)


__all__ = ['Converted', 'SOURCES', 'build_options', 'load']
