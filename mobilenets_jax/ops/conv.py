"""Dense and grouped k×k convolutions (NHWC input, HWIO kernel) in the form that suits each shape.

`conv2d` picks the formulation, all giving the numbers of `lax.conv_general_dilated`:
1×1 as a matmul (`pointwise_conv`), float32 3×3 stride 1 on CPU by Winograd (`winograd_conv`),
other dense k×k with a GEMM kernel gradient and, over few input channels, an im2col + matmul forward
pass (`dense_conv`), grouped k×k as `lax.conv_general_dilated`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mobilenets_jax.ops.padding import explicit_padding, out_hw, pad_hw
from mobilenets_jax.ops.policy import DEFAULT_POLICY, KernelPolicy
from mobilenets_jax.ops.windows import accumulation_dtype
from mobilenets_jax.ops.winograd import winograd_applies, winograd_conv


def lax_conv(x, kernel, strides: int, padding, groups: int = 1):
    """XLA's convolution, NHWC × HWIO → NHWC, with `groups` feature groups."""
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def conv2d(x, kernel, strides: int, padding, groups: int = 1, policy: KernelPolicy = DEFAULT_POLICY):
    """A k×k convolution (kernel (k, k, cin/groups, cout); 'SAME' or explicit padding) by the fastest form."""
    k = kernel.shape[0]
    if k == 1:
        return pointwise_conv(x, kernel, strides, groups)
    pads = explicit_padding(x.shape[1], x.shape[2], (k, k), strides, padding)
    if winograd_applies(kernel.shape, strides, groups, pads, x.dtype, policy=policy):
        return winograd_conv(x, kernel, pads)
    if groups == 1:
        return dense_conv(x, kernel, strides, pads, x.shape[-1] <= policy.im2col_max_input_channels)
    return lax_conv(x, kernel, strides, pads, groups)


def im2col_patches(x, kernel_hw: tuple, strides: int, pads: tuple):
    """(n, out_h, out_w, kh·kw·cin): every output position's receptive field, ordered as the kernel's rows.

    Each padded row is read as blocks of `strides` adjacent pixels: output column w needs pixels
    s·w … s·w + kw − 1, which are block w and the first pixels of the next ones, so a kernel row is
    ⌈kw/s⌉ contiguous pieces instead of kw pieces of cin values (fewer, larger copies). At stride 1
    this is the plain concatenation of the k² taps.
    """
    kh, kw = kernel_hw
    out_h, out_w = out_hw(x, kernel_hw, strides, pads)
    blocks_per_row = out_w + (kw - 1) // strides
    # Pad (or crop: a negative pad) the right edge to whole blocks; the extra columns are never read.
    right = blocks_per_row * strides - x.shape[2] - pads[1][0]
    xp = pad_hw(x, (pads[0], (pads[1][0], right)))
    batch, rows, _, channels = xp.shape
    blocks = xp.reshape(batch, rows, blocks_per_row, strides * channels)
    pieces = []
    for i in range(kh):
        kernel_row = jax.lax.slice(blocks, (0, i, 0, 0),
                                   (batch, i + (out_h - 1) * strides + 1, blocks_per_row, strides * channels),
                                   (1, strides, 1, 1))
        for block in range(-(-kw // strides)):
            pixels = min(strides, kw - block * strides)
            pieces.append(kernel_row[:, :, block:block + out_w, :pixels * channels])
    return jnp.concatenate(pieces, axis=-1)


def _patches_times_kernel(patches, kernel):
    kh, kw, cin, cout = kernel.shape
    return jnp.einsum('nhwk,kd->nhwd', patches, kernel.reshape(kh * kw * cin, cout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dense_conv(x, kernel, strides: int, pads: tuple, im2col_forward: bool):
    """A dense k×k convolution whose kernel gradient is one patchesᵀ·dy GEMM over the im2col patches.

    XLA:CPU's kernel-gradient convolution is slow (it also transposes both operands first); a GEMM
    over the patches is not. The forward pass is im2col + matmul when `im2col_forward` (few input
    channels: the patches are then kept for the kernel gradient), else XLA's convolution (the patches
    are rebuilt from x in the backward pass, so nothing beyond x is kept). The input gradient is XLA's;
    for a stem, whose input is the image, XLA removes it.
    """
    return _dense_conv_fwd(x, kernel, strides, pads, im2col_forward)[0]


def _dense_conv_fwd(x, kernel, strides, pads, im2col_forward):
    if im2col_forward:
        patches = im2col_patches(x, kernel.shape[:2], strides, pads)
        return _patches_times_kernel(patches, kernel), (x, kernel, patches)
    return lax_conv(x, kernel, strides, pads), (x, kernel, None)


def _dense_conv_bwd(strides, pads, im2col_forward, residuals, dy):
    x, kernel, patches = residuals
    if patches is None:
        patches = im2col_patches(x, kernel.shape[:2], strides, pads)
    _, input_vjp = jax.vjp(lambda a: lax_conv(a, kernel, strides, pads), x)
    dkernel = jnp.matmul(patches.reshape(-1, patches.shape[-1]).T, dy.reshape(-1, dy.shape[-1]),
                         preferred_element_type=accumulation_dtype(dy.dtype))
    return input_vjp(dy)[0], dkernel.reshape(kernel.shape).astype(kernel.dtype)


dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


@jax.custom_vjp
def _dense_pointwise(x, w):
    """x (..., cin) @ w (cin, cout), with a backward pass written as two plain 2-D matmuls.

    Autodiff of the einsum gives a weight gradient contracting the 4-D activations over
    (n, h, w); XLA:CPU then lays the output gradient out channel-major and fuses that transposed
    write into the BatchNorm backward before it, a slow strided pass. Flattened to (n·h·w, c) the
    weight gradient is one xᵀ·dy GEMM and no transposed copy is made.
    """
    return jnp.einsum('...c,cd->...d', x, w)


def _dense_pointwise_fwd(x, w):
    return _dense_pointwise(x, w), (x, w)


def _dense_pointwise_bwd(residuals, dy):
    x, w = residuals
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dx = (dy2 @ w.T).reshape(x.shape)
    dw = x2.T @ dy2
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_pointwise.defvjp(_dense_pointwise_fwd, _dense_pointwise_bwd)


def pointwise_conv(x, kernel, strides: int = 1, groups: int = 1):
    """A 1×1 convolution (kernel (1, 1, cin/groups, cout)) as a matrix product.

    On XLA:CPU the weight gradient of a 1×1 `lax` convolution is much slower than the same
    contraction written as a dot; as a dot both directions of the backward pass are plain GEMMs.
    Grouped 1×1 convolutions (ShuffleNetV1) become one matmul per group (input channel block g feeds
    output channel block g, as in `feature_group_count`). A 1×1 kernel never pads ('SAME' and k//2 both
    give zero padding), so a stride is a strided slice.
    """
    if strides != 1:
        x = x[:, ::strides, ::strides, :]
    w = kernel[0, 0]                                   # (cin/groups, cout)
    if groups == 1:
        return _dense_pointwise(x, w)
    # One matmul per group on its channel slice, then concatenated. A single einsum batched over a
    # group axis makes XLA:CPU put the group first and write the output channel-major; the transposes
    # back were fused into the following BatchNorm/residual chains, which then recomputed them.
    in_per_group, out_per_group = x.shape[-1] // groups, w.shape[-1] // groups
    return jnp.concatenate([
        _dense_pointwise(x[..., g * in_per_group:(g + 1) * in_per_group],
                         w[:, g * out_per_group:(g + 1) * out_per_group])
        for g in range(groups)], axis=-1)
