"""Converters from released weight files to the zoo's `{'params', 'batch_stats'}` (one module per source).

Each source builds the model with the options its weights were trained with, so the user only names the
file, the architecture and α. Supported: Keras applications `.h5` (`weights.keras`), torchvision `.pth`
state dicts (`weights.torchvision`, needs torch) and timm `model.safetensors` (`weights.timm`, needs safetensors).
"""
from __future__ import annotations

from typing import Any

from mobilenets_jax.weights import keras, timm, torchvision
from mobilenets_jax.weights.keras import Converted

SOURCES = {'keras': keras.load, 'torchvision': torchvision.load, 'timm': timm.load}
_BUILD_OPTIONS = {'keras': keras.BUILD_OPTIONS, 'torchvision': torchvision.BUILD_OPTIONS, 'timm': timm.BUILD_OPTIONS}


def build_options(source: str, model: str) -> dict:
    """The `create_model` options the source's weights were trained with (what `load` builds with)."""
    if source not in _BUILD_OPTIONS:
        raise ValueError(f'unknown source {source!r}; supported sources: {", ".join(SOURCES)}')
    if model not in _BUILD_OPTIONS[source]:
        raise ValueError(f'model={model!r}: source={source!r} has weights for {", ".join(_BUILD_OPTIONS[source])}')
    return dict(_BUILD_OPTIONS[source][model])


def load(path: str, *, source: str = 'keras', model: str, alpha: float = 1.0, **options: Any) -> Converted:
    """Reads a released weight file of `source`; see `mobilenets_jax.load_pretrained`."""
    if source not in SOURCES:
        raise ValueError(f'unknown source {source!r}; supported sources: {", ".join(SOURCES)}')
    return SOURCES[source](path, model=model, alpha=alpha, **options)


__all__ = ['Converted', 'SOURCES', 'build_options', 'load']
