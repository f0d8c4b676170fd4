"""The fastest step each model could take if everything but its matrix products were free, next to the
1.5×-PyTorch target of issue 6 (README, "Performance").

    python benchmarks/throughput.py --batch_size=16 --impls=shifted --models=mobilenet_v1,mobilenet_v2 > tp.log
    python benchmarks/gemm.py > gemm.log
    python benchmarks/gemm_floor.py --throughput_log=tp.log --gemm_log=gemm.log

For each JSON row of `throughput.py`'s log, from the model's layer shapes (`cost.layer_costs`, no
compilation): the mult-adds of its matrix products per image, i.e. every convolution but the depthwise
ones (1×1, grouped 1×1, the stem, the dense 3×3 of the conv baseline) and the classifier. A training
step computes each of them three times (forward, input gradient, weight gradient), except the input
gradient of the first layer, which nothing needs; inference once. Dense 3×3 stride-1 float32 layers run
as Winograd F(2×2, 3×3) on CPU (`ops.winograd_applies`): 16 products per 2×2 output tile instead
of 36, over ⌈h/2⌉·⌈w/2⌉ tiles (4/9 of the direct mult-adds on even maps; a 7×7 map has 16 tiles); their
tile transforms are not counted.

    floor_ms  = 2 · mult-adds · batch / GEMM rate
    target_ms = batch / (1.5 · the faster PyTorch layout's images/sec)      (the same row)
    headroom  = target_ms − floor_ms: what all other work (BatchNorm, depthwise, activations, the
                optimizer update) may take together for JAX to reach the target
    share     = headroom / (JAX's step now − floor_ms): the share of its present time that this other
                work would have to shrink to

The GEMM rate is the best GFLOP/s of `gemm.py`'s log (`--gemm_log`), or `--gemm_gflops`, or, with
neither, measured now with `gemm.py`'s shapes. The best rate over shapes is optimistic (the narrow
layers run slower), so each floor is lower than a real step could be: where it is above the target,
the target cannot be reached with these GEMMs. Prints a table and one JSON line per row (`JSON `).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mobilenets_jax as mj  # noqa: E402
from benchmarks import throughput  # noqa: E402
from mobilenets_jax import cost  # noqa: E402
from mobilenets_jax.ops import winograd_applies  # noqa: E402

TARGET_RATIO = 1.5
WINOGRAD_TILE_PRODUCTS = 16     # F(2×2, 3×3): a 4×4 input tile times the transformed 4×4 kernel


def _matrix_product_macs(row: dict, dtype: str, backend: str) -> int:
    """A layer row's mult-adds, or the products of its Winograd tiles where the model computes it so."""
    cin_per_group = row['input_shape'][-1] // row['groups']
    if row['pads'] is None or not winograd_applies(
            (*row['kernel'], cin_per_group, row['output_shape'][-1]), row['strides'], row['groups'], row['pads'],
            dtype, backend):
        return row['macs']
    batch, height, width, cout = row['output_shape']
    tiles = batch * -(-height // 2) * -(-width // 2)
    return tiles * WINOGRAD_TILE_PRODUCTS * row['input_shape'][-1] * cout


@functools.lru_cache(maxsize=None)
def gemm_macs(name: str, image_size: int, alpha: float = 1.0, dtype: str = 'float32',
              backend: str = 'cpu') -> dict:
    """{'train', 'infer'}: mult-adds of the matrix products of one image's training step and inference."""
    spec = mj.get_spec(name)
    model = mj.create_model(name, num_classes=spec.default_num_classes, alpha=alpha, groups=spec.default_groups)
    rows = cost.layer_costs(model, image_size)
    per_layer = [_matrix_product_macs(row, dtype, backend) for row in rows if row['kind'] != 'depthwise']
    infer = sum(per_layer)
    # rows[0] is the stem (layer_costs is in execution order): no input gradient for the images.
    first = per_layer[0] if rows[0]['kind'] != 'depthwise' else 0
    return {'train': 3 * infer - first, 'infer': infer}


def read_json_lines(path: str) -> list[dict]:
    """The `JSON ` lines of a benchmark log, parsed; a ValueError names the file and line it cannot read."""
    try:
        with open(path) as log:
            lines = log.read().splitlines()
    except OSError as error:
        raise ValueError(f'{path}: {error.strerror or error}') from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.startswith('JSON '):
            try:
                rows.append(json.loads(line[len('JSON '):]))
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number}: not a JSON line ({error.msg})') from None
    return rows


def best_gemm_gflops(rows: list[dict]) -> Optional[float]:
    """The best jax GFLOP/s of gemm.py's JSON rows; None if there is none."""
    rates = [row['gflops']['jax'] for row in rows if 'jax' in row.get('gflops', {})]
    return max(rates) if rates else None


def floor_row(result: dict, gflops: float) -> dict:
    """The floor, target and headroom (ms per batch) of one throughput.py JSON row."""
    name, batch = result['model'], result['batch_size']
    macs = dict(gemm_macs(name, result['image_size'], result.get('alpha', 1.0), result.get('dtype', 'float32'),
                          result.get('backend', 'cpu')))       # a copy: gemm_macs is cached
    jax_rates = throughput.best_rates(result['jax'])
    row = dict(model=name, batch_size=batch, image_size=result['image_size'], gemm_gflops=gflops,
               gemm_macs_per_image=macs, host_cpu=result.get('host_cpu'))
    for mode in ('train', 'infer'):
        floor = 2 * macs[mode] * batch / (gflops * 1e9) * 1e3
        row[f'{mode}_floor_ms'] = floor
        row[f'{mode}_jax_ms'] = batch / jax_rates[mode] * 1e3
        if result.get('torch'):
            target = batch / (TARGET_RATIO * throughput.best_rates(result['torch'])[mode]) * 1e3
            row[f'{mode}_target_ms'] = target
            row[f'{mode}_headroom_ms'] = target - floor
            # What all non-GEMM work would have to shrink to, as a share of what it takes now.
            row[f'{mode}_other_work_share'] = (target - floor) / (row[f'{mode}_jax_ms'] - floor)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--throughput_log', required=True, help="a log of throughput.py (its 'JSON ' lines)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument('--gemm_log', default='', help="a log of gemm.py: the best jax GFLOP/s in it is the rate")
    rate.add_argument('--gemm_gflops', type=float, default=None, help='the GEMM rate in GFLOP/s')
    args = parser.parse_args(argv)
    if args.gemm_gflops is not None and not (math.isfinite(args.gemm_gflops) and args.gemm_gflops > 0):
        parser.error(f'--gemm_gflops={args.gemm_gflops}: expected a finite rate > 0')
    try:
        results = [r for r in read_json_lines(args.throughput_log) if 'jax' in r]
        gemm_rows = read_json_lines(args.gemm_log) if args.gemm_log else None
    except ValueError as error:
        parser.error(str(error))
    if not results:
        parser.error(f'{args.throughput_log}: no throughput.py JSON line with JAX rates in it')
    if args.gemm_gflops is not None:
        gflops = args.gemm_gflops
    elif gemm_rows is not None:
        gflops = best_gemm_gflops(gemm_rows)
        if gflops is None:
            parser.error(f'{args.gemm_log}: no gemm.py JSON line with a jax rate in it')
    else:
        from benchmarks import gemm
        with contextlib.redirect_stdout(sys.stderr):       # gemm.py's table, not this one's JSON lines
            gflops = best_gemm_gflops(gemm.main(['--no_torch', '--repeats=5']))
    print(f'# GEMM rate {gflops:.0f} GFLOP/s; ms per batch: floor (matrix products only) / 1.5x-PyTorch '
          'target / JAX now; headroom = target - floor')
    print(f'{"model":22s} {"batch":>5s} {"res":>4s} {"train floor/target/jax":>24s} {"headroom":>9s} {"share":>6s}  '
          f'{"infer floor/target/jax":>24s} {"headroom":>9s} {"share":>6s}')
    rows = []
    for result in results:
        row = floor_row(result, gflops)
        cells = []
        for mode in ('train', 'infer'):
            target = row.get(f'{mode}_target_ms', float('nan'))
            headroom = row.get(f'{mode}_headroom_ms', float('nan'))
            share = row.get(f'{mode}_other_work_share', float('nan'))
            cells.append(f'{row[f"{mode}_floor_ms"]:7.0f}/{target:7.0f}/{row[f"{mode}_jax_ms"]:7.0f}'.rjust(24)
                         + f' {headroom:9.0f} {share:6.2f}')
        print(f'{row["model"]:22s} {row["batch_size"]:5d} {row["image_size"]:4d} {cells[0]}  {cells[1]}', flush=True)
        print('JSON ' + json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == '__main__':
    main()
