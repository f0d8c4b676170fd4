"""Winograd F(2×2, 3×3) convolution (Lavin & Gray 2016), forward and both gradients.

Each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A over a 4×4 input tile d, so a stride-1 3×3
convolution becomes 16 GEMMs of (tiles × cin)·(cin × cout): 2.25× fewer multiply-adds than the direct
form, plus elementwise tile transforms.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_jax.ops.padding import input_gradient_pads, out_hw
from mobilenets_jax.ops.policy import DEFAULT_POLICY, KernelPolicy

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# The input transform reads 4×4 tiles overlapping by 2, so it handles pads of at most 2 per side.
_MAX_PAD = 2


def winograd_applies(kernel_shape: tuple, strides: int, groups: int, pads: tuple, dtype,
                     backend: Optional[str] = None, policy: KernelPolicy = DEFAULT_POLICY) -> bool:
    """Whether a convolution takes `winograd_conv`: dense 3×3, stride 1, in the policy's dtypes and backends.

    From shapes alone (kernel (k, k, cin/groups, cout), the explicit pads, the input dtype), so the cost
    report can tell which layers run this way; `backend` defaults to JAX's default backend. Convolutions
    over few input channels (the stems) take im2col instead (`policy.im2col_max_input_channels`).
    """
    backend = jax.default_backend() if backend is None else backend
    return (tuple(kernel_shape[:2]) == (3, 3) and strides == 1 and groups == 1
            and jnp.dtype(dtype).name in policy.winograd_dtypes
            and kernel_shape[2] > policy.im2col_max_input_channels and backend in policy.winograd_backends
            and all(0 <= pad <= _MAX_PAD for side in pads for pad in side))


def _linear_terms(matrix, blocks):
    """out[a] = Σ_i matrix[a, i] · blocks[i], written out as adds of the blocks.

    The Winograd matrices hold only 0, ±1 and ±½, so each output is a short sum that XLA fuses into
    one elementwise pass over the activation tiles (no multiplies by ±1, no zero terms).
    """
    out = []
    for row in np.asarray(matrix):
        total = None
        for coefficient, block in zip(row.tolist(), blocks):
            if coefficient == 0:
                continue
            term = block if coefficient == 1 else -block if coefficient == -1 else block * coefficient
            total = term if total is None else total + term
        out.append(total)
    return out


def _bilinear_terms(left, right, blocks):
    """out[a][b] = Σ_ij left[a, i] · right[b, j] · blocks[i][j] (`_linear_terms` with left ⊗ right)."""
    flat = _linear_terms(np.kron(left, right), [block for row in blocks for block in row])
    return [flat[a * right.shape[0]:(a + 1) * right.shape[0]] for a in range(left.shape[0])]


def _tiles(x, pads: tuple) -> tuple:
    """(out_h, out_w, tiles_h, tiles_w) of a stride-1 3×3 convolution over x padded by `pads`."""
    out_h, out_w = out_hw(x, (3, 3), 1, pads)
    return out_h, out_w, -(-out_h // 2), -(-out_w // 2)


def _input_transform(x, pads: tuple):
    """Bᵀ d B for every 4×4 input tile d (tiles overlap by 2): (16, n·tiles_h·tiles_w, cin).

    Applied separably, Bᵀ over rows then B over columns, each output a sum of two strided slices.
    Written instead as 16 four-term sums it ran a little faster but took far longer to compile.
    """
    batch, height, width, channels = x.shape
    _, _, tiles_h, tiles_w = _tiles(x, pads)
    xp = jnp.pad(x, ((0, 0), (pads[0][0], 2 * tiles_h + 2 - height - pads[0][0]),
                     (pads[1][0], 2 * tiles_w + 2 - width - pads[1][0]), (0, 0)))
    rows = jnp.stack(_linear_terms(_BT, [xp[:, i:i + 2 * tiles_h:2] for i in range(4)]))
    columns = _linear_terms(_BT, [rows[:, :, :, j:j + 2 * tiles_w:2] for j in range(4)])
    tiles = jnp.stack(columns, axis=1)                                   # (4, 4, n, tiles_h, tiles_w, c)
    return tiles.reshape(16, batch * tiles_h * tiles_w, channels)


def _kernel_matrix(flip: bool = False):
    """G ⊗ G as a (16, 9) matrix: row 4a + b, column 3i + j holds G[a, i] · G[b, j]."""
    g = _G[:, ::-1] if flip else _G
    return np.kron(g, g)


def _kernel_transform(kernel, flip: bool = False):
    """G g Gᵀ per (cin, cout) pair: (16, cin, cout); of the spatially flipped kernel when `flip`.

    One (16, 9)·(9, cin·cout) matmul, which is faster and far quicker to compile than 16 explicit sums.
    """
    matrix = jnp.asarray(_kernel_matrix(flip), kernel.dtype)
    return (matrix @ kernel.reshape(9, -1)).reshape(16, *kernel.shape[2:])


def _forward(x, transformed_kernel, pads: tuple, kernel_transposed: bool = False):
    """The convolution from a transformed kernel ((16, cin, cout), or (16, cout, cin) if transposed)."""
    batch = x.shape[0]
    out_h, out_w, tiles_h, tiles_w = _tiles(x, pads)
    products = jnp.einsum('tpc,tdc->tpd' if kernel_transposed else 'tpc,tcd->tpd',
                          _input_transform(x, pads), transformed_kernel)
    products = products.reshape(4, 4, batch, tiles_h, tiles_w, -1)
    out = _bilinear_terms(_AT, _AT, [[products[i, j] for j in range(4)] for i in range(4)])
    # out[a][b] is output pixel (2·tile_h + a, 2·tile_w + b): interleave the tiles back into rows.
    y = jnp.stack([jnp.stack(out[a], axis=3) for a in range(2)], axis=2)
    return y.reshape(batch, 2 * tiles_h, 2 * tiles_w, -1)[:, :out_h, :out_w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv(x, kernel, pads: tuple):
    """A stride-1 3×3 convolution by Winograd F(2×2, 3×3), forward and backward.

    Both gradients stay in Winograd form: the input gradient is the same algorithm over dy with the
    flipped kernel (read transposed by the GEMMs rather than copied), and the kernel gradient is 16
    GEMMs (Bᵀ d B)ᵀ·(A dy Aᵀ) between the input tiles, recomputed from x, and the output-gradient
    tiles, mapped back by Gᵀ(·)G. Autodiff of the forward pass would instead scatter the tile
    transforms back with overlapping adds, which is slower.
    """
    return _forward(x, _kernel_transform(kernel), pads)


def _winograd_conv_fwd(x, kernel, pads):
    return winograd_conv(x, kernel, pads), (x, kernel)


def _winograd_conv_bwd(pads, residuals, dy):
    x, kernel = residuals
    out_h, out_w, tiles_h, tiles_w = _tiles(x, pads)
    # The input gradient: dy correlated with the flipped kernel, its in/out channels swapped.
    dx = _forward(dy, _kernel_transform(kernel, flip=True),
                  input_gradient_pads((3, 3), pads, x.shape[1:3], (out_h, out_w)), kernel_transposed=True)
    # Transpose of the output transform: A (dy tile) Aᵀ for each 2×2 output-gradient tile.
    dyp = jnp.pad(dy, ((0, 0), (0, 2 * tiles_h - out_h), (0, 2 * tiles_w - out_w), (0, 0)))
    dy_tile = [[dyp[:, a::2, b::2, :] for b in range(2)] for a in range(2)]
    d_products = jnp.stack([jnp.stack(row) for row in _bilinear_terms(_AT.T, _AT.T, dy_tile)])
    d_products = d_products.reshape(16, -1, dy.shape[-1])
    d_transformed = jnp.einsum('tpc,tpd->tcd', _input_transform(x, pads), d_products)
    # The kernel transform's transpose: (G ⊗ G)ᵀ·(16, cin·cout).
    matrix = jnp.asarray(_kernel_matrix(), d_transformed.dtype)
    dkernel = (matrix.T @ d_transformed.reshape(16, -1)).reshape(kernel.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


winograd_conv.defvjp(_winograd_conv_fwd, _winograd_conv_bwd)
