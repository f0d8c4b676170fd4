"""GFLOP/s of the float32 matmuls behind MobileNetV1-224's 1×1 convolutions: XLA (`jnp.dot`) next to PyTorch.

    python benchmarks/gemm.py [--repeats=15] [--no_torch]

Each shape (M, K, N) is a pointwise layer at batch 16: M = 16·H·W positions, K input and N output channels.
The contenders run round-robin in one process, each turn `--settle_s` seconds of untimed settle calls,
then one timed call (as `throughput.py`); the median is reported. This is the ceiling that the 224 models'
training and inference ratios against PyTorch run into (README, "Performance"). Prints a table and one
JSON line per shape (prefix `JSON `), each with the hypervisor's steal share while it was timed.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.throughput import _interleaved_rates, non_negative_seconds, print_row  # noqa: E402
from mobilenets_jax import cli_utils  # noqa: E402
from mobilenets_jax.cost import machine  # noqa: E402

# (M, K, N) of MobileNetV1-224's pointwise layers at batch 16: blocks 1, 3/4, 5/6, 7-11, 13.
SHAPES = ((200704, 32, 64), (50176, 128, 128), (12544, 256, 256), (3136, 512, 512), (784, 1024, 1024))


def _shapes(text):
    """argparse type of --shapes: 'M,K,N;M,K,N' → ((M, K, N), ...) of positive integers."""
    try:
        shapes = tuple(tuple(int(v) for v in triple.split(',')) for triple in text.split(';'))
    except ValueError:
        shapes = ()
    if not shapes or any(len(shape) != 3 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f'{text!r}: expected M,K,N triples of positive integers separated by ";"')
    return shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--shapes', type=_shapes, default=SHAPES,
                        help='M,K,N triples separated by ";" (default: MobileNetV1-224\'s pointwise layers)')
    parser.add_argument('--settle_s', type=non_negative_seconds, default=0.2,
                        help='untimed calls for this many seconds before each timed call (throughput.py\'s)')
    parser.add_argument('--no_torch', action='store_true')
    args = parser.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
    host = machine.host_cpu()
    print(f'# {host}; JAX {jax.__version__} on {jax.default_backend()}; PyTorch {torch.__version__ if torch else "-"}; '
          f'float32; allocator: {cli_utils.preloaded_allocator() or "glibc malloc"}')
    print(f'{"M x K x N":>22s} {"jax GFLOP/s":>12s}' + (f' {"torch GFLOP/s":>14s} {"jax/torch":>10s}' if torch else ''))
    rows = []
    for m, k, n in args.shapes:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        matmul = jax.jit(jnp.dot)
        a_jax, b_jax = jnp.asarray(a), jnp.asarray(b)
        runners = {'jax': lambda: matmul(a_jax, b_jax).block_until_ready()}
        if torch:
            a_torch, b_torch = torch.from_numpy(a), torch.from_numpy(b)
            runners['torch'] = lambda: torch.mm(a_torch, b_torch)
        # _interleaved_rates reports batch_size / seconds: with 2·M·K·N / 1e9 as the "batch", GFLOP/s.
        row = dict(m=m, k=k, n=n, host_cpu=host)
        with machine.record_steal(row):
            rates = row['gflops'] = _interleaved_rates(runners, 2 * m * k * n / 1e9, warmup=3,
                                                       repeats=args.repeats, settle_s=args.settle_s)
        line = f'{f"{m} x {k} x {n}":>22s} {rates["jax"]:12.0f}'
        if torch:
            row['ratio'] = rates['jax'] / rates['torch']
            line += f' {rates["torch"]:14.0f} {row["ratio"]:9.2f}x'
        print_row(line, row, f'{m} x {k} x {n}')
        rows.append(row)
    return rows


if __name__ == '__main__':
    main()
