"""Milliseconds of one 3×3 depthwise layer per implementation: forward, and forward + both gradients.

    python benchmarks/depthwise_layer.py [--impls=xla,shifted,shifted_autodiff] [--repeats=5]

The shapes are the zoo's typical layers (batch, height, width, channels, stride). This is the per-layer
table in docs/performance.md, and what `KernelPolicy.auto_depthwise_impl` ('auto') was chosen from.
Median of `--repeats` timed calls after one warm-up, float32, on JAX's default backend.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mobilenets_jax.cost import median_seconds  # noqa: E402
from mobilenets_jax import ops  # noqa: E402

SHAPES = ((32, 112, 112, 32, 1), (32, 112, 112, 64, 2), (32, 28, 28, 256, 1), (128, 16, 16, 256, 2),
          (32, 14, 14, 512, 1), (64, 32, 32, 32, 1))


def _median_ms(fn, *args, repeats):
    return 1000 * median_seconds(lambda: fn(*args), warmup=1, runs=repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--impls', default='xla,shifted,shifted_autodiff')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    impls = args.impls.split(',')
    print(f'# JAX {jax.__version__} on {jax.default_backend()}; ms forward / forward+backward, float32')
    print(f'{"input (stride)":24s}' + ''.join(f'{impl:>20s}' for impl in impls), flush=True)
    rng = np.random.default_rng(0)
    for n, h, w, c, s in SHAPES:
        x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((3, 3, 1, c)), jnp.float32)
        cells = []
        for impl in impls:
            forward = jax.jit(lambda a, k, impl=impl: ops.depthwise_conv(a, k, s, 'SAME', impl))
            backward = jax.jit(jax.grad(lambda a, k, impl=impl: jnp.sum(ops.depthwise_conv(a, k, s, 'SAME', impl)),
                                        argnums=(0, 1)))
            cells.append(f'{_median_ms(forward, x, kernel, repeats=args.repeats):7.0f} / '
                         f'{_median_ms(backward, x, kernel, repeats=args.repeats):<7.0f}')
        print(f'{f"{n}×{h}×{w}×{c} ({s})":24s}' + ''.join(f'{cell:>20s}' for cell in cells), flush=True)


if __name__ == '__main__':
    main()
