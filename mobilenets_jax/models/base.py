"""The attributes every zoo model shares, and the layer factories built from them once per call."""
from __future__ import annotations

import functools
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp

from mobilenets_jax.models import layers

Dtype = Any


class ZooModel(nn.Module):
    """Base of every architecture: classes, width multiplier, dtypes, padding and BatchNorm settings.

    Attributes:
      num_classes: size of the classifier.
      alpha: width multiplier α (each family documents how it rounds channel counts).
      dropout_rate: dropout before the classifier (active only with `train=True`).
      padding_style: 'same' (TensorFlow, default) or 'symmetric' (PyTorch k//2).
      depthwise_impl: how depthwise convolutions are computed: 'auto' (shifted taps on CPU, XLA's grouped
        convolution elsewhere), 'xla', 'shifted' or 'shifted_autodiff'; all share the same parameters.
        ShuffleNet's max and average pools follow it ('xla': `lax.reduce_window`; otherwise shifted taps).
      bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon (TensorFlow defaults).
      bn_axis_name: mesh axis over which batch statistics are averaged in train mode
        (None: per-device statistics, as in the reference TPU recipe).
      dtype: computation dtype (e.g. bfloat16); param_dtype: storage dtype of the parameters.
    """
    num_classes: int = 1000
    alpha: float = 1.0
    dropout_rate: float = 0.2
    padding_style: str = 'same'
    depthwise_impl: str = 'auto'
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    # The product of all strides: the smallest input for which the last feature map is >= 1x1.
    min_input_size: ClassVar[int] = 32
    # How BatchNorm normalizes ('folded' or 'centered'; same numbers): a speed choice measured per
    # family on XLA:CPU, see `layers.BatchNorm`.
    batch_norm_form: ClassVar[str] = 'folded'

    def factories(self, train: bool):
        """Returns (conv, depthwise, norm) partials with this model's dtypes/padding/BN settings fixed."""
        conv = functools.partial(layers.Conv2D, padding_style=self.padding_style, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        depthwise = functools.partial(layers.DepthwiseConv2D, padding_style=self.padding_style,
                                      impl=self.depthwise_impl, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = layers.batch_norm(train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                                 param_dtype=self.param_dtype, axis_name=self.bn_axis_name,
                                 form=self.batch_norm_form)
        return conv, depthwise, norm

    def check_input(self, x):
        layers.check_images(x, model_name=type(self).__name__, min_size=self.min_input_size)
        return jnp.asarray(x, self.dtype)

    def head(self, x, train: bool, *, pool: bool = True, use_bias: bool = True):
        """Global average pool, dropout, classifier; logits are returned in float32."""
        if pool:
            x = layers.global_average_pool(x)
        x = layers.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
        x = layers.classifier(x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                              use_bias=use_bias)
        return jnp.asarray(x, jnp.float32)
