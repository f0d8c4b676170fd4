"""The configurations a cost report covers: one model, α, groups, input size and class count each."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from mobilenets_jax import config_lib, steps
from mobilenets_jax.data import datasets
from mobilenets_jax.models import registry


@dataclasses.dataclass(frozen=True)
class Config:
    """One point of the report: a model name, its width multiplier, groups, input size and classes."""
    model: str
    alpha: float
    groups: Optional[int]
    resolution: int
    num_classes: int

    @property
    def group_key(self) -> tuple:
        """Configurations that share their parameter shapes (everything but the resolution)."""
        return (self.model, self.alpha, self.groups, self.num_classes)


def make_config(name: str, alpha: float = 1.0, groups: Optional[int] = None, resolution: Optional[int] = None,
                num_classes: Optional[int] = None) -> Config:
    """Checks a configuration with the registry (nothing is traced or compiled); ValueError names the value."""
    spec = registry.get_spec(name)
    alpha = registry.check_alpha(spec, alpha)
    groups = registry.check_groups(spec, groups)
    if resolution is None:
        resolution = spec.base_resolution
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f'resolution={resolution!r}: the input size must be a positive integer')
    resolution = int(resolution)
    if resolution < spec.min_input_size:
        raise ValueError(f'resolution={resolution} is too small for {name}: the input size must be >= '
                         f'{spec.min_input_size} (the product of its strides)')
    if num_classes is None:
        num_classes = spec.default_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f'num_classes={num_classes!r}: must be an integer >= 1')
    return Config(name, alpha, groups, resolution, int(num_classes))


def grid(name: str, alphas: Optional[Sequence[float]] = None, resolutions: Optional[Sequence[int]] = None,
         groups: Optional[Sequence[Optional[int]]] = None, num_classes: Optional[int] = None) -> list[Config]:
    """The configurations alphas × groups × resolutions of one model (defaults: its published grid)."""
    spec = registry.get_spec(name)
    alphas = list(alphas) if alphas else list(spec.published_alphas)
    resolutions = list(resolutions) if resolutions else list(spec.published_resolutions)
    groups = list(groups) if groups else [None]
    return [make_config(name, a, g, r, num_classes) for a in alphas for g in groups for r in resolutions]


def all_configs(num_classes: Optional[int] = None, *, include_cifar: bool = False) -> list[Config]:
    """Every ImageNet model over its published α × resolution grid, ShuffleNet V1 over its group counts.

    MobileNetV1 4 α × 4 resolutions, its conv and shallow baselines, MobileNetV2 6 multipliers × 5
    resolutions, MobileNetV3 Large/Small at 1.0 and 0.75, ShuffleNet V1 g = 1, 2, 3, 4, 8 at 1× and
    g = 3 at 0.5× and 0.25×, ShuffleNet V2 0.5×-2×, MobileNetV4 (timm's α variants at each recipe's
    resolution): 72 configurations, a superset of every point of
    `published.PUBLISHED_MACS`. ``include_cifar`` adds the CIFAR study's 6 α × 6 resolution grids.
    """
    configs = []
    for name in registry.list_models():
        spec = registry.get_spec(name)
        if spec.base_resolution != 224 and not include_cifar:
            continue
        for alpha in spec.published_alphas:
            if spec.allowed_groups is None:
                group_values = [None]
            elif float(alpha) == 1.0:
                group_values = list(spec.allowed_groups)
            else:
                group_values = [spec.default_groups]
            for groups in group_values:
                for resolution in spec.published_resolutions:
                    configs.append(make_config(name, alpha, groups, resolution, num_classes))
    return configs


def from_training_config(config, num_classes: Optional[int] = None) -> tuple[Config, dict]:
    """The configuration a training config describes, and the `analyze` options that reproduce its step.

    Model name, α, groups and the other model fields, the image size round(ρ × the dataset's base size),
    the dataset's class count (unless `num_classes` is given); the options carry the model's other
    arguments and the training config itself (its optimizer, label smoothing and EMA decay make the
    counted step). Checks every field first.
    """
    try:
        info = datasets.get_dataset_info(config.dataset)
    except (KeyError, ValueError) as error:
        raise ValueError(f'config.dataset={config.dataset!r}: {error}') from None
    num_classes = num_classes or info.num_classes
    config_lib.create_model(config, num_classes=num_classes)   # checks the model fields and the image size
    kwargs = config_lib.model_kwargs(config, num_classes)
    alpha, groups = kwargs.pop('alpha'), kwargs.pop('groups')
    kwargs.pop('num_classes')
    if config.get('sync_batch_stats'):
        kwargs['bn_axis_name'] = steps.BATCH_AXIS   # as train_lib.create_setup builds the model
    result = make_config(config.model.name, alpha, groups, config_lib.image_size(config), num_classes)
    options = dict(model_kwargs={k: v for k, v in kwargs.items() if v is not None}, training_config=config)
    return result, options
