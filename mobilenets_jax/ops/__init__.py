"""Pure-JAX kernels the Flax layers call: convolutions, depthwise convolutions, pools, dropout masks.

No Flax here. Each kernel computes exactly what its `lax` / `jax.random` reference computes, in the
form that is fastest on the backend; which form is chosen where is decided by one `KernelPolicy`
(`policy.py`), passed as `policy=` (default `DEFAULT_POLICY`).

  conv.py       conv2d (dispatch), pointwise_conv (1×1 as matmul), dense_conv (GEMM kernel gradient,
                im2col forward), im2col_patches, lax_conv
  winograd.py   winograd_conv (F(2×2, 3×3) forward and backward), winograd_applies (the rule)
  depthwise.py  depthwise_conv by implementation name ('xla', 'shifted', 'shifted_autodiff', 'auto')
  pooling.py    shifted_max_pool, shifted_avg_pool
  random.py     threefry2x32, random_bits, dropout_keep_mask
  padding.py    explicit_padding, pad_hw, out_hw, input_gradient_pads
  windows.py    taps (strided slices), polyphase_transpose, accumulation_dtype
"""
from mobilenets_jax.ops.conv import conv2d, dense_conv, im2col_patches, lax_conv, pointwise_conv
from mobilenets_jax.ops.depthwise import (DEPTHWISE_IMPLS, check_depthwise_impl, depthwise_conv,
                                          depthwise_kernel_grad, resolve_depthwise_impl)
from mobilenets_jax.ops.padding import explicit_padding, out_hw, pad_hw
from mobilenets_jax.ops.policy import DEFAULT_POLICY, KernelPolicy
from mobilenets_jax.ops.pooling import shifted_avg_pool, shifted_max_pool
from mobilenets_jax.ops.random import dropout_keep_mask, random_bits, threefry2x32
from mobilenets_jax.ops.windows import taps
from mobilenets_jax.ops.winograd import winograd_applies, winograd_conv

__all__ = [
    'DEFAULT_POLICY', 'DEPTHWISE_IMPLS', 'KernelPolicy', 'check_depthwise_impl', 'conv2d', 'dense_conv',
    'depthwise_conv', 'depthwise_kernel_grad', 'dropout_keep_mask', 'explicit_padding', 'im2col_patches',
    'lax_conv', 'out_hw', 'pad_hw', 'pointwise_conv', 'random_bits', 'resolve_depthwise_impl',
    'shifted_avg_pool', 'shifted_max_pool', 'taps', 'threefry2x32', 'winograd_applies', 'winograd_conv',
]
