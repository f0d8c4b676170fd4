"""k×k max and average pooling (NHWC) as k² strided slices, the 'shifted' form of the pools.

Pooling is a depthwise window op, so the zoo's pools follow the model's depthwise implementation:
these for 'shifted', `lax.reduce_window` (flax's `nn.max_pool` / `nn.avg_pool`) for 'xla'. XLA:CPU runs
`reduce_window` and especially its gradient (`select_and_scatter`) far slower than fused slices.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mobilenets_jax.ops.padding import explicit_padding, out_hw, pad_hw
from mobilenets_jax.ops.windows import accumulation_dtype, polyphase_transpose, taps


def shifted_max_pool(x, window: int, strides: int, padding):
    """k×k max pooling ('SAME' or explicit padding, padded with −inf) as the max of k² strided slices.

    The backward pass routes each gradient to the window's first maximum by output phase, so values
    and gradients equal `lax.reduce_window` + `select_and_scatter` exactly, ties included.
    """
    pads = explicit_padding(x.shape[1], x.shape[2], (window, window), strides, padding)
    return _max_pool(x, window, strides, pads, x.shape[1:3])


def shifted_avg_pool(x, window: int, strides: int, padding):
    """k×k average pooling as the sum of k² strided slices over zero-padded x, divided by k².

    The padding counts (as in flax and PyTorch's default `count_include_pad`); autodiff of it is
    already a few fused slices and pads.
    """
    pads = explicit_padding(x.shape[1], x.shape[2], (window, window), strides, padding)
    acc = accumulation_dtype(x.dtype)
    total = None
    for _, tap in taps(pad_hw(x, pads), (window, window), strides, out_hw(x, (window, window), strides, pads)):
        total = tap.astype(acc) if total is None else total + tap.astype(acc)
    return (total / (window * window)).astype(x.dtype)


def _first_max_taps(xp, window: int, strides: int, out_hw: tuple):
    """(max over the window's taps, the index i·k + j of the first tap holding it) per output position."""
    best = index = None
    for tap_index, (_, tap) in enumerate(taps(xp, (window, window), strides, out_hw)):
        if best is None:
            best, index = tap, jnp.zeros(tap.shape, jnp.int8)
        else:
            greater = tap > best      # strictly: on ties the earlier tap keeps the maximum, as in XLA
            best = jnp.where(greater, tap, best)
            index = jnp.where(greater, jnp.int8(tap_index), index)
    return best, index


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x, window: int, strides: int, pads: tuple, input_hw: tuple):
    return _max_pool_fwd(x, window, strides, pads, input_hw)[0]


def _max_pool_fwd(x, window, strides, pads, input_hw):
    y, index = _first_max_taps(pad_hw(x, pads, -jnp.inf), window, strides,
                               out_hw(x, (window, window), strides, pads))
    # The first-maximum index (int8, a quarter of y) is all the backward pass needs of the forward.
    return y, index


def _max_pool_bwd(window, strides, pads, input_hw, index, dy):
    """Each output's gradient goes to its window's first maximum, as `lax`'s select_and_scatter does
    (autodiff of a chain of `maximum`s would split it on ties), by output phase."""
    zero = jnp.zeros((), dy.dtype)
    tap_term = lambda i, j, dy_tap, index_tap: jnp.where(index_tap == i * window + j, dy_tap, zero)
    return (polyphase_transpose((dy, index), (0, -1), tap_term, (window, window), strides, pads, input_hw),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
