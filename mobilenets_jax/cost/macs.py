"""Mult-adds from layer shapes: the papers' "mult-adds", recorded while the network is traced.

Every convolution and dense layer (and MobileNetV4's attention products) is recorded by Flax method interception while `jax.eval_shape`
traces the model on an abstract input (nothing is compiled): ``out_h · out_w · k · k · (c_in / groups)
· c_out`` per convolution, ``in · out`` per dense layer. BatchNorm, activations, pooling, residual
additions and biases are not counted, as in the papers' tables.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_jax import ops
from mobilenets_jax.cost import xla
from mobilenets_jax.models import layers, mobilenet_v4


def _module_attributes(module: nn.Module) -> dict:
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ('parent', 'name')}


class LayerRecorder:
    """A Flax method interceptor that records the input/output shapes of every conv and dense layer."""

    def __init__(self):
        self.records: list[dict] = []

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == '__call__' and isinstance(module, mobilenet_v4.MultiQueryAttention):
            outputs = next_fun(*args, **kwargs)   # its projections are recorded as the convs they are
            self.records.append(dict(module_type=type(module), path='/'.join(str(p) for p in module.path),
                                     attributes=_module_attributes(module), input_shape=tuple(args[0].shape),
                                     input_dtype=jnp.dtype(args[0].dtype), output_shape=tuple(outputs.shape)))
            return outputs
        if context.method_name != '__call__' or not isinstance(
                module, (layers.Conv2D, layers.DepthwiseConv2D, nn.Conv, nn.Dense)):
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv) and isinstance(module.parent, layers.Conv2D):
            return next_fun(*args, **kwargs)   # `Conv2D` wraps an nn.Conv named 'conv': count the wrapper once
        inputs = args[0]
        outputs = next_fun(*args, **kwargs)
        self.records.append(dict(module_type=type(module), path='/'.join(str(p) for p in module.path),
                                 attributes=_module_attributes(module), input_shape=tuple(inputs.shape),
                                 input_dtype=jnp.dtype(inputs.dtype), output_shape=tuple(outputs.shape)))
        return outputs


def layer_row(record: dict) -> dict:
    """The `layer_costs` row of one `LayerRecorder` record."""
    module_type, attrs = record['module_type'], record['attributes']
    in_shape, out_shape = record['input_shape'], record['output_shape']
    if issubclass(module_type, mobilenet_v4.MultiQueryAttention):
        # The two attention products (queries·keys, weights·values): activations times activations.
        macs = mobilenet_v4.attention_mult_adds(in_shape[1], in_shape[2], attrs['num_heads'], attrs['key_dim'],
                                                attrs['value_dim'], attrs['kv_strides'], batch=in_shape[0])
        return dict(name=record['path'] + '/attention', kind='attention', kernel=None, groups=None, strides=None,
                    pads=None, input_shape=in_shape, output_shape=out_shape, params=0, macs=int(macs))
    batch, cin, cout = in_shape[0], in_shape[-1], out_shape[-1]
    positions = int(np.prod(out_shape[1:-1], dtype=np.int64))   # output pixels (1 for a dense layer on (N, C))
    strides = pads = None
    if issubclass(module_type, nn.Dense):
        kind, kernel, groups = 'dense', None, 1
        taps = 1
    else:
        if issubclass(module_type, layers.DepthwiseConv2D):
            groups, kernel = cin, (attrs['kernel_size'],) * 2
        elif issubclass(module_type, layers.Conv2D):
            groups, kernel = attrs['groups'], (attrs['kernel_size'],) * 2
        else:  # a bare nn.Conv
            groups = attrs.get('feature_group_count', 1)
            size = attrs['kernel_size']
            kernel = tuple(size) if isinstance(size, Sequence) else (size, size)
        taps = int(np.prod(kernel))
        if issubclass(module_type, (layers.Conv2D, layers.DepthwiseConv2D)):
            strides = attrs['strides']
            pads = ops.explicit_padding(in_shape[1], in_shape[2], kernel, strides,
                                        layers.conv_padding(attrs['kernel_size'], attrs['padding_style']))
        if groups == 1:
            kind = 'conv'
        elif groups == cin and cout % cin == 0:
            kind = 'depthwise'
        else:
            kind = 'group_conv'
    use_bias = attrs.get('use_bias', issubclass(module_type, nn.Dense))
    params = taps * (cin // groups) * cout + (cout if use_bias else 0)
    macs = batch * positions * taps * (cin // groups) * cout
    return dict(name=record['path'], kind=kind, kernel=kernel, groups=groups, strides=strides, pads=pads,
                input_shape=in_shape, output_shape=out_shape, params=int(params), macs=int(macs))


def _attention_cost(record: dict, fast_compile: bool = True) -> dict:
    """XLA's cost analysis of the attention products alone (the projections are rows of their own)."""
    attrs, (batch, height, width, _) = record['attributes'], record['input_shape']
    keys = -(-height // attrs['kv_strides']) * -(-width // attrs['kv_strides'])
    dtype = record['input_dtype']
    query = jax.ShapeDtypeStruct((batch, height * width, attrs['num_heads'], attrs['key_dim']), dtype)
    key = jax.ShapeDtypeStruct((batch, keys, attrs['key_dim']), dtype)
    value = jax.ShapeDtypeStruct((batch, keys, attrs['value_dim']), dtype)

    def attention(q, k, v):
        weights = jax.nn.softmax(jnp.einsum('blhk,bpk->blhp', q, k), axis=-1)
        return jnp.einsum('blhp,bpv->blhv', weights, v)

    cost = xla.compiled_cost(attention, query, key, value,
                             compiler_options=xla.counting_options('inference', fast_compile))
    return {'flops': cost['flops'], 'bytes': cost['bytes accessed']}


def _standalone_layer_cost(record: dict, fast_compile: bool = True) -> dict:
    """XLA's cost analysis of one layer compiled on its own (abstract variables and input)."""
    if issubclass(record['module_type'], mobilenet_v4.MultiQueryAttention):
        return _attention_cost(record, fast_compile)
    module = record['module_type'](**record['attributes'])
    x = jax.ShapeDtypeStruct(record['input_shape'], record['input_dtype'])
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    cost = xla.compiled_cost(lambda v, inputs: module.apply(v, inputs), variables, x,
                             compiler_options=xla.counting_options('inference', fast_compile))
    return {'flops': cost['flops'], 'bytes': cost['bytes accessed']}


def add_layer_xla_costs(records: list[dict], rows: list[dict], fast_compile: bool = True) -> None:
    """Adds XLA's ``flops`` and ``bytes`` of each layer compiled on its own to its row; identical layers once."""
    cache: dict = {}
    for record, row in zip(records, rows):
        key = (record['module_type'], repr(sorted(record['attributes'].items())), record['input_shape'],
               str(record['input_dtype']))
        if key not in cache:
            cache[key] = _standalone_layer_cost(record, fast_compile)
        row.update(cache[key])


def image_shape(image_size, batch: int) -> tuple:
    """(batch, height, width, 3) of an image size given as one int or (height, width)."""
    height, width = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    return (batch, int(height), int(width), 3)


def layer_costs(model: nn.Module, image_size, batch: int = 1, *, xla: bool = False) -> list[dict]:
    """One row per convolution and dense layer of `model`, in execution order.

    Each row holds ``name`` (the Flax module path), ``kind`` ('conv', 'depthwise', 'group_conv',
    'dense', or 'attention': Mobile MQA's two attention products, activations times activations), ``kernel`` (spatial kernel size; None for dense), ``groups``, ``strides`` and ``pads``
    (the explicit ((top, bottom), (left, right)) padding; both None for dense layers and bare
    `nn.Conv`s), ``input_shape``, ``output_shape``,
    ``params`` (kernel + bias) and ``macs``, derived from the layer SHAPES:
    ``out_h · out_w · k · k · (c_in / groups) · c_out`` for a convolution and ``in · out`` for a dense
    layer, times ``batch``. Nothing is compiled for these: the shapes are recorded while
    `jax.eval_shape` traces ``model.init`` on an abstract input.

    With ``xla=True`` each row also gets ``flops`` and ``bytes``: XLA's cost analysis of that layer
    compiled on its own at the same shapes (its convolution or matmul plus its bias add; bytes as XLA
    counts them: input, weights and output). Identical layers are compiled once.
    """
    recorder = LayerRecorder()

    def init():
        with nn.intercept_methods(recorder):
            return model.init(jax.random.key(0), jnp.zeros(image_shape(image_size, batch), jnp.float32),
                              train=False)

    jax.eval_shape(init)
    rows = [layer_row(record) for record in recorder.records]
    if xla:
        add_layer_xla_costs(recorder.records, rows)
    return rows


def count_macs(model: nn.Module, image_size) -> int:
    """The papers' mult-adds of `model` at batch 1: the sum of `layer_costs` macs, from layer SHAPES.

    Convolutions (dense, grouped and depthwise, squeeze-and-excite 1×1 convs included) and dense layers
    count; BatchNorm, activations, pooling, additions and biases do not. No compilation.
    """
    return int(sum(row['macs'] for row in layer_costs(model, image_size, batch=1)))


def macs_by_kind(rows: Iterable[dict]) -> dict:
    """Share of the mult-adds per layer kind, with 1×1 convolutions ('conv1x1') split out of 'conv'."""
    totals: dict = {}
    for row in rows:
        kind = row['kind']
        if kind in ('conv', 'group_conv') and row['kernel'] == (1, 1):
            kind = 'conv1x1' if kind == 'conv' else 'group_conv1x1'
        totals[kind] = totals.get(kind, 0) + row['macs']
    return totals


def count_variables(variables: Any) -> dict:
    """Number of scalars per collection, e.g. ``{'params': 4231976, 'batch_stats': 21888}``."""
    return {collection: int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))
            for collection, tree in variables.items()}
