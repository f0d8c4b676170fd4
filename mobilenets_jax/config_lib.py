"""Turning an ml-collections config into the things the library needs, with checks that name the field.

Every check here runs before anything is compiled.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mobilenets_jax.models import registry


def image_size(config: ml_collections.ConfigDict) -> int:
    """round(rho × base size): base 224 for ImageNet, 32 for CIFAR and digits."""
    from mobilenets_jax.data import input_pipeline  # TensorFlow is imported lazily
    base = input_pipeline.get_dataset_info(config.dataset).base_image_size
    if not config.rho > 0:
        raise ValueError(f'config.rho={config.rho!r}: the resolution multiplier must be > 0')
    return int(round(config.rho * base))


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """Keyword arguments of `create_model` from `config.model`."""
    model = config.model
    options = dict(model.options) if 'options' in model else {}
    # bfloat16 compute (float32 master weights) when the config asks for half precision.
    dtype = jnp.bfloat16 if config.get('half_precision', False) else jnp.float32
    return dict(
        num_classes=num_classes, alpha=model.alpha, groups=model.get('groups'),
        dropout_rate=model.get('dropout_rate'), padding_style=model.get('padding_style', 'same'),
        depthwise_impl=model.get('depthwise_impl', 'auto'), bn_momentum=model.get('bn_momentum'), dtype=dtype,
        **options)


def create_model(config: ml_collections.ConfigDict, *, num_classes: int | None = None, **overrides):
    """Builds `config.model` for `config.dataset` (its class count) and checks the image size."""
    from mobilenets_jax.data import input_pipeline
    if num_classes is None:
        num_classes = input_pipeline.get_dataset_info(config.dataset).num_classes
    kwargs = model_kwargs(config, num_classes)
    kwargs.update(overrides)
    try:
        model = registry.create_model(config.model.name, **kwargs)
    except ValueError as error:
        raise ValueError(f'config.model: {error}') from None
    size = image_size(config)
    try:
        registry.check_image_size(config.model.name, size)
    except ValueError as error:
        raise ValueError(f'config.rho={config.rho}: {error}') from None
    return model
