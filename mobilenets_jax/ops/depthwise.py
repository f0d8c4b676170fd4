"""Depthwise k×k convolution (NHWC input, (k, k, 1, C) kernel) by implementation name.

'xla' is a grouped `lax` convolution (one group per channel). 'shifted' writes it as k² shifted
multiply-adds (strided slices times a per-channel weight vector: plain elementwise work that XLA:CPU
vectorizes, where it lowers one-group-per-channel convolutions poorly), with a hand-written backward
pass (`_shifted_vjp_bwd`). 'shifted_autodiff' is the same forward differentiated by autodiff, kept as a
reference. 'auto' resolves per backend (`KernelPolicy.auto_depthwise_impl`). All give the numbers of
`lax.conv_general_dilated`.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from mobilenets_jax.ops.conv import lax_conv
from mobilenets_jax.ops.padding import explicit_padding, input_gradient_pads, out_hw, pad_hw
from mobilenets_jax.ops.policy import DEFAULT_POLICY, KernelPolicy
from mobilenets_jax.ops.windows import accumulation_dtype, polyphase_transpose, taps

DEPTHWISE_IMPLS = ('auto', 'xla', 'shifted', 'shifted_autodiff')


def resolve_depthwise_impl(impl: str, backend: Optional[str] = None, policy: KernelPolicy = DEFAULT_POLICY) -> str:
    """Maps 'auto' to the policy's implementation for `backend` (default: JAX's default backend)."""
    if impl != 'auto':
        return impl
    return policy.depthwise_impl_for(backend)


def check_depthwise_impl(impl: str, policy: KernelPolicy = DEFAULT_POLICY) -> str:
    """`resolve_depthwise_impl`, refusing names that are not implementations."""
    resolved = resolve_depthwise_impl(impl, policy=policy)
    if resolved not in _DEPTHWISE_FNS:
        raise ValueError(f'unknown depthwise_impl {impl!r}; allowed: {list(DEPTHWISE_IMPLS)}')
    return resolved


def depthwise_conv(x, kernel, strides: int = 1, padding='SAME', impl: str = 'auto',
                   policy: KernelPolicy = DEFAULT_POLICY):
    """Functional depthwise convolution, NHWC input and (k, k, 1, C) kernel, by implementation name."""
    return _DEPTHWISE_FNS[check_depthwise_impl(impl, policy)](x, kernel, strides, padding, policy)


def _xla_depthwise(x, kernel, strides: int, padding, policy: KernelPolicy):
    del policy      # one formulation
    return lax_conv(x, kernel, strides, padding, groups=x.shape[-1])


def _shifted_depthwise(x, kernel, strides: int, padding, policy: KernelPolicy):
    pads = explicit_padding(x.shape[1], x.shape[2], kernel.shape[:2], strides, padding)
    return _shifted_vjp(x, kernel, strides, pads, policy)


def _shifted_depthwise_autodiff(x, kernel, strides: int, padding, policy: KernelPolicy):
    del policy      # the reference form: plain autodiff, no choices
    pads = explicit_padding(x.shape[1], x.shape[2], kernel.shape[:2], strides, padding)
    return _shifted_forward(x, kernel, strides, pads)[0]


_DEPTHWISE_FNS = {
    'xla': _xla_depthwise,
    'shifted': _shifted_depthwise,
    'shifted_autodiff': _shifted_depthwise_autodiff,
}


def _tap_sum(x, kernel, strides: int, out_hw: tuple, flip: bool = False):
    """sum_ij x[:, i + s*h, j + s*w, :] * kernel[i, j, 0, :] (kernel[k-1-i, k-1-j] when `flip`)."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    acc = accumulation_dtype(x.dtype)
    result = None
    for (i, j), tap in taps(x, (kh, kw), strides, out_hw):
        weight = kernel[kh - 1 - i, kw - 1 - j, 0] if flip else kernel[i, j, 0]
        term = tap.astype(acc) * weight.astype(acc)
        result = term if result is None else result + term
    return result.astype(x.dtype)


def _shifted_forward(x, kernel, strides: int, pads: tuple, materialize_pad: bool = False):
    """Returns (the k² shifted multiply-adds over padded x, padded x); see `pad_hw`."""
    xp = pad_hw(x, pads, materialize=materialize_pad)
    return _tap_sum(xp, kernel, strides, out_hw(x, kernel.shape[:2], strides, pads)), xp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shifted_vjp(x, kernel, strides: int, pads: tuple, policy: KernelPolicy):
    return _shifted_vjp_fwd(x, kernel, strides, pads, policy)[0]


def _shifted_vjp_fwd(x, kernel, strides, pads, policy):
    del policy      # only the backward pass has choices
    y, xp = _shifted_forward(x, kernel, strides, pads, materialize_pad=True)
    # The padded input is kept for the kernel gradient (instead of x, which would be padded again).
    return y, (xp, kernel)


def _shifted_vjp_bwd(strides, pads, policy, residuals, dy):
    """The transposed convolution written directly (instead of autodiff's k² pad+add scatters).

    Input gradient at stride 1: dy padded once (the pad also applies the forward padding's crop) and
    correlated with the flipped kernel — again k² shifted multiply-adds, one fused loop, where
    autodiff builds k² padded copies of dy and adds them. With a stride, on large maps:
    `_strided_input_grad`; on small ones autodiff of the strided forward (`policy.uses_polyphase`).
    Kernel gradient: `depthwise_kernel_grad`.
    """
    xp, kernel = residuals
    kh, kw = kernel.shape[0], kernel.shape[1]
    height = xp.shape[1] - pads[0][0] - pads[0][1]
    width = xp.shape[2] - pads[1][0] - pads[1][1]
    out_h, out_w = dy.shape[1], dy.shape[2]
    if strides == 1:
        dyp = pad_hw(dy, input_gradient_pads((kh, kw), pads, (height, width), (out_h, out_w)), materialize=True)
        dx = _tap_sum(dyp, kernel, 1, (height, width), flip=True)
    elif policy.uses_polyphase((height, width)):
        dx = _strided_input_grad(dy, kernel, strides, pads, (height, width))
    else:
        x = xp[:, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width, :]
        dx = jax.vjp(lambda x_: _shifted_forward(x_, kernel, strides, pads)[0], x)[1](dy)[0]
    dkernel = depthwise_kernel_grad(xp, dy, (kh, kw), strides, policy).astype(kernel.dtype)
    return dx, dkernel


_shifted_vjp.defvjp(_shifted_vjp_fwd, _shifted_vjp_bwd)


def _strided_input_grad(dy, kernel, strides: int, pads: tuple, input_hw: tuple):
    """The input gradient of a strided depthwise convolution by output phase (`polyphase_transpose`)."""
    acc = accumulation_dtype(dy.dtype)
    tap_term = lambda i, j, dy_tap: dy_tap.astype(acc) * kernel[i, j, 0].astype(acc)
    dx = polyphase_transpose((dy,), (0,), tap_term, kernel.shape[:2], strides, pads, input_hw)
    return dx.astype(dy.dtype)


def depthwise_kernel_grad(xp, dy, kernel_hw: tuple, strides: int, policy: KernelPolicy = DEFAULT_POLICY):
    """dk[i, j, 0, c] = sum_{n,h,w} xp[n, i + s h, j + s w, c] · dy[n, h, w, c], accumulated in f32.

    By a loop over output rows on the layers `policy.uses_row_loop` selects, else by one reduction.
    """
    if policy.uses_row_loop(kernel_hw, dy.shape[1:3], dy.shape[3]):
        return _kernel_grad_by_rows(xp, dy, kernel_hw, strides)
    return _kernel_grad_by_reduction(xp, dy, kernel_hw, strides)


def _kernel_grad_by_rows(xp, dy, kernel_hw: tuple, strides: int):
    """The depthwise kernel gradient as k² running (n, w, c) sums over the output rows, in a loop.

    Each iteration reads the k input rows that output row h sees and adds tap·dy for every tap to
    its own accumulator: k² plain elementwise multiply-adds along the channel axis, which XLA:CPU
    vectorizes (the one variadic reduction of `_kernel_grad_by_reduction` is emitted as scalar code).
    The accumulators are summed over (n, w) at the end. A loop rather than a sum unrolled over h keeps
    the program small; the per-iteration cost of its k² small kernels is why narrow or small layers
    keep the reduction.
    """
    kh, kw = kernel_hw
    batch, out_h, out_w, channels = dy.shape
    acc = accumulation_dtype(dy.dtype)
    tap_offsets = [(i, j) for i in range(kh) for j in range(kw)]

    def add_row(h, sums):
        rows = jax.lax.dynamic_slice(xp, (0, h * strides, 0, 0), (batch, kh, xp.shape[2], channels))
        dy_row = jax.lax.dynamic_slice(dy, (0, h, 0, 0), (batch, 1, out_w, channels))[:, 0].astype(acc)
        return tuple(
            total + jax.lax.slice(rows, (0, i, j, 0), (batch, i + 1, j + (out_w - 1) * strides + 1, channels),
                                  (1, 1, strides, 1))[:, 0].astype(acc) * dy_row
            for total, (i, j) in zip(sums, tap_offsets))

    zeros = jnp.zeros((batch, out_w, channels), acc)
    sums = jax.lax.fori_loop(0, out_h, add_row, (zeros,) * len(tap_offsets))
    return jnp.stack([total.reshape(-1, channels).sum(axis=0) for total in sums]).reshape(kh, kw, 1, channels)


def _kernel_grad_by_reduction(xp, dy, kernel_hw: tuple, strides: int):
    """The depthwise kernel gradient as one variadic reduction of all k² tap products over w.

    Written as k² separate `sum(tap * dy)`, XLA:CPU materializes every shifted tap before reducing
    it (k² extra passes over the activation). Here all k² products are the operands of one variadic
    reduction over w, which reads each tap straight from `xp` in a single loop and leaves k² small
    (n, h, c) partial sums. Reducing over w (rather than n or (h, w)) was the fastest choice inside
    whole train steps, where the reduction also fuses the BatchNorm backward that makes dy. XLA:CPU
    emits a variadic reduction as scalar code, so wide 3×3 layers take `_kernel_grad_by_rows` instead.
    """
    acc = accumulation_dtype(dy.dtype)
    dy_acc = dy.astype(acc)
    out_h, out_w = dy.shape[1:3]
    products = tuple(tap.astype(acc) * dy_acc for _, tap in taps(xp, kernel_hw, strides, (out_h, out_w)))
    zero = jnp.zeros((), acc)
    partial = jax.lax.reduce(products, (zero,) * len(products),
                             lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    sums = [p.reshape(-1, p.shape[-1]).sum(axis=0) for p in partial]
    return jnp.stack(sums).reshape(kernel_hw[0], kernel_hw[1], 1, dy.shape[3])
