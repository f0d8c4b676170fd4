"""Every backend choice and size threshold of the kernels, in one explicit object.

The kernels in `mobilenets_jax.ops` pick between equivalent formulations (same numbers, different
speed) by backend, dtype and layer shape. Each of those choices is a field here, so it can be read in
one place, changed for an experiment, and forced by a test (`dataclasses.replace(DEFAULT_POLICY, ...)`)
instead of patching module globals. The measurements behind the defaults are in docs/performance.md.

The policy is a frozen dataclass of ints, strings and tuples: hashable, so it can be a static argument
of `jax.jit` and a non-differentiable argument of a `custom_vjp`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class KernelPolicy:
    """Which formulation each kernel takes, by backend and shape.

    Attributes (one line each on why the choice exists):
      auto_depthwise_impl: ((backend, impl), ...) that `depthwise_impl='auto'` resolves to; XLA:CPU
        lowers one-group-per-channel convolutions poorly, GPU/TPU libraries have native depthwise kernels.
      fallback_depthwise_impl: what 'auto' means on a backend not listed above (the portable form).
      row_loop_min_channels: the loop over output rows for the depthwise kernel gradient pays off only
        on wide layers; its fixed per-iteration cost dominates on narrow ones.
      row_loop_min_output_size: the same loop needs enough output positions (h·w) to amortize that
        per-iteration cost; small maps keep the single reduction.
      row_loop_max_taps: larger kernels gave no speed through the loop but many more small loop bodies
        to compile, hence 3×3 only.
      polyphase_min_input_size: the by-phase input gradient of a strided depthwise layer wins on large
        maps (h·w) only; on small maps autodiff of the strided forward is faster.
      im2col_max_input_channels: dense convolutions over this few input channels (the RGB stems) run as
        im2col + matmul, which XLA:CPU's convolution is slow at; above it, patches would cost too much
        memory.
      winograd_backends: backends where dense 3×3 stride-1 convolutions take Winograd F(2×2, 3×3);
        elsewhere the convolution libraries have their own fast algorithms.
      winograd_dtypes: dtype names Winograd is used for; its tile transforms lose a little precision,
        acceptable in float32 but not in 16-bit types.
    """
    auto_depthwise_impl: tuple[tuple[str, str], ...] = (
        ('cpu', 'shifted'), ('gpu', 'xla'), ('cuda', 'xla'), ('rocm', 'xla'), ('tpu', 'xla'))
    fallback_depthwise_impl: str = 'xla'
    row_loop_min_channels: int = 64
    row_loop_min_output_size: int = 14 * 14
    row_loop_max_taps: int = 3 * 3
    polyphase_min_input_size: int = 56 * 56
    im2col_max_input_channels: int = 4
    winograd_backends: tuple[str, ...] = ('cpu',)
    winograd_dtypes: tuple[str, ...] = ('float32',)

    def depthwise_impl_for(self, backend: Optional[str] = None) -> str:
        """The implementation 'auto' stands for on `backend` (default: JAX's default backend)."""
        backend = jax.default_backend() if backend is None else backend
        return dict(self.auto_depthwise_impl).get(backend, self.fallback_depthwise_impl)

    def uses_row_loop(self, kernel_hw: tuple, out_hw: tuple, channels: int) -> bool:
        """Whether a depthwise kernel gradient of this shape is accumulated by the loop over output rows."""
        return (channels >= self.row_loop_min_channels and out_hw[0] * out_hw[1] >= self.row_loop_min_output_size
                and kernel_hw[0] * kernel_hw[1] <= self.row_loop_max_taps)

    def uses_polyphase(self, input_hw: tuple) -> bool:
        """Whether a strided depthwise input gradient over this input size is computed by output phase."""
        return input_hw[0] * input_hw[1] >= self.polyphase_min_input_size


DEFAULT_POLICY = KernelPolicy()
