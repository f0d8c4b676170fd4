"""Padding and output-size arithmetic of sliding-window ops (convolutions, depthwise, pools), NHWC."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def explicit_padding(height: int, width: int, kernel_size: tuple, strides: int, padding):
    """The ((top, bottom), (left, right)) padding that `lax` applies for `padding` ('SAME' or explicit)."""
    if padding != 'SAME':
        return tuple(tuple(int(p) for p in pair) for pair in padding)
    pads = []
    for size, k in ((height, kernel_size[0]), (width, kernel_size[1])):
        out = -(-size // strides)
        total = max((out - 1) * strides + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def out_hw(x, kernel_hw: tuple, strides: int, pads: tuple) -> tuple:
    """(out_h, out_w) of a k×k window sliding with `strides` over x padded by `pads`."""
    return tuple((size + lo + hi - k) // strides + 1
                 for size, (lo, hi), k in zip(x.shape[1:3], pads, kernel_hw))


def input_gradient_pads(kernel_hw: tuple, pads: tuple, input_hw: tuple, out_hw: tuple) -> tuple:
    """Padding of dy that turns a stride-1 convolution's input gradient into a plain correlation.

    dx[q] = Σ_i dy[q + pad_lo − i] · k[i], so dy is padded by k − 1 − pad_lo in front and up to
    input + k − 1 rows in all (a negative pad crops) and correlated with the flipped kernel.
    """
    return tuple((k - 1 - lo, size - out + lo) for k, (lo, _), size, out in zip(kernel_hw, pads, input_hw, out_hw))


def pad_hw(x, pads: tuple, value=0, materialize: bool = False):
    """NHWC x padded on its two spatial axes by pads = ((top, bottom), (left, right)) with `value`
    (a negative pad crops).

    `materialize` writes the padded array out once rather than letting XLA fuse the pad into each of
    the k² tap slices that read it: fused, every tap re-evaluates "inside the border?" per element and
    XLA:CPU's loop stops vectorizing. The optimization barrier only stops that fusion.
    """
    xp = jax.lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    return jax.lax.optimization_barrier(xp) if materialize else xp
