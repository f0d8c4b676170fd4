"""Sliding windows as strided slices ("taps"), and the transpose of a strided window op by output phase.

Shared by the depthwise convolution, the pools and im2col: a k×k window op over NHWC x is a sum (or
max) over k² strided slices of the padded input, which XLA fuses into one elementwise loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mobilenets_jax.ops.padding import pad_hw


def accumulation_dtype(dtype):
    """float32 for 16-bit inputs, as XLA's convolutions accumulate sums of k·k products; else `dtype`."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def taps(xp, kernel_hw: tuple, strides: int, out_hw: tuple):
    """Yields ((i, j), xp[:, i + s*h, j + s*w, :]) for every kernel tap, as strided slices."""
    out_h, out_w = out_hw
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            yield (i, j), jax.lax.slice(
                xp, (0, i, j, 0),
                (xp.shape[0], i + (out_h - 1) * strides + 1, j + (out_w - 1) * strides + 1, xp.shape[3]),
                (1, strides, strides, 1))


def polyphase_transpose(sources, pad_values, tap_term, kernel_hw: tuple, strides: int, pads: tuple,
                        input_hw: tuple):
    """Sends every tap's contribution back to the input position it read, one output phase at a time.

    `sources` are arrays shaped like the window op's output; `tap_term(i, j, *source_values)` gives what
    output position a contributes to input position s·a + (i, j) − pad (through tap (i, j)). In padded
    coordinates dxp[s·a + r] = Σ_m term_{r + s·m}[a − m]: each of the s² phases (r_h, r_w) is a small
    stride-1 tap sum over the sources with only the taps ≡ r (mod s) (2×2, 2×1, 1×2 and 1×1 of a 3×3
    window at s = 2). The sources are padded once (by `pad_values`), the phases interleaved and the
    padding cropped. Autodiff of a strided window op instead scatters every tap into a zero-dilated copy
    (XLA fuses k² strided pads with a select per element).
    """
    kh, kw = kernel_hw
    height, width = input_hw
    batch, out_h, out_w, channels = sources[0].shape
    padded_h, padded_w = height + sum(pads[0]), width + sum(pads[1])
    rows_per_phase, cols_per_phase = -(-padded_h // strides), -(-padded_w // strides)
    lead_h, lead_w = (kh - 1) // strides, (kw - 1) // strides
    padded_sources = [pad_hw(source, ((lead_h, rows_per_phase - out_h), (lead_w, cols_per_phase - out_w)),
                             value, materialize=True) for source, value in zip(sources, pad_values)]
    phase_rows = []
    for r_h in range(strides):
        phase_cols = []
        for r_w in range(strides):
            total = None
            for m_h in range((kh - 1 - r_h) // strides + 1):
                for m_w in range((kw - 1 - r_w) // strides + 1):
                    start = (0, lead_h - m_h, lead_w - m_w, 0)
                    limit = (batch, lead_h - m_h + rows_per_phase, lead_w - m_w + cols_per_phase, channels)
                    values = [jax.lax.slice(source, start, limit) for source in padded_sources]
                    term = tap_term(r_h + strides * m_h, r_w + strides * m_w, *values)
                    total = term if total is None else total + term
            phase_cols.append(total)
        phase_rows.append(jnp.stack(phase_cols, axis=3))      # (n, A, B, s, c)
    dxp = jnp.stack(phase_rows, axis=2).reshape(batch, rows_per_phase * strides, cols_per_phase * strides,
                                                channels)
    top, left = pads[0][0], pads[1][0]
    return dxp[:, top:top + height, left:left + width, :]
