"""The MobileNet paper's α × ρ trade-off study: train and evaluate a grid, tabulate, plot.

Each grid point trains in `<workdir>/<model>_a<alpha>_r<rho>/` through `train_lib.train_and_evaluate`
(the code behind train.py, so an interrupted point resumes from its checkpoint) and is recorded as one
row of `<workdir>/results.csv` once it has finished: a point with a row is done and is skipped on the
next run. A point that fails is reported and the sweep goes on with the others.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import os
import time
import traceback
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from mobilenets_jax import config_lib, cost, train_lib

RESULT_FIELDS = ('model', 'alpha', 'rho', 'resolution', 'params', 'macs', 'flops', 'top1', 'top5',
                 'train_seconds', 'images_per_sec')


@dataclasses.dataclass(frozen=True)
class GridPoint:
    model: str
    alpha: float
    rho: float

    @property
    def key(self) -> tuple:
        return (self.model, float(self.alpha), float(self.rho))

    @property
    def dirname(self) -> str:
        return f'{self.model}_a{self.alpha:g}_r{self.rho:g}'


def point_config(base: ml_collections.ConfigDict, point: GridPoint) -> ml_collections.ConfigDict:
    config = copy.deepcopy(base)
    with config.unlocked():
        config.model.name = point.model
        config.model.alpha = float(point.alpha)
        config.rho = float(point.rho)
    return config


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _append_row(path: str, row: dict) -> None:
    is_new = not os.path.exists(path)
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        if is_new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in RESULT_FIELDS})


def point_costs(config: ml_collections.ConfigDict) -> dict:
    """params, macs (from layer shapes, as flops.py) and XLA flops of the inference program at batch 1."""
    model = config_lib.create_model(config)
    size = config_lib.image_size(config)
    record = cost.analyze(config.model.name, alpha=config.model.alpha, groups=config.model.get('groups'),
                          resolution=size, num_classes=model.num_classes, train=False)
    return {'resolution': size, 'params': record['params'], 'macs': record['macs'], 'flops': record['flops']}


def _train_images_per_sec(workdir: str) -> Optional[float]:
    import json
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return None
    rates = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record.get('split') == 'train' and record.get('images_per_sec'):
                rates.append(record['images_per_sec'])
    # the first interval includes compilation; the median of the rest is the steady rate
    return float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else None


def check_grid(base: ml_collections.ConfigDict, points: Sequence[GridPoint]) -> None:
    """Validates every point's config before any training (bad α, ρ too small, unknown model)."""
    for point in points:
        config = point_config(base, point)
        try:
            config_lib.validate_config(config, num_devices=jax.device_count())
        except ValueError as error:
            raise ValueError(f'grid point {point.dirname}: {error}') from None


def run_sweep(base: ml_collections.ConfigDict, workdir: str, *, models: Sequence[str],
              alphas: Sequence[float], rhos: Sequence[float]) -> dict:
    """Trains and evaluates every grid point not yet in results.csv, then draws the figures.

    Returns {'rows': all result rows, 'trained': points trained now, 'failed': {point: error}}.
    """
    points = [GridPoint(m, a, r) for m in models for a in alphas for r in rhos]
    check_grid(base, points)
    os.makedirs(workdir, exist_ok=True)
    results_path = os.path.join(workdir, 'results.csv')
    done = {(r['model'], float(r['alpha']), float(r['rho'])) for r in read_results(results_path)}
    todo = [p for p in points if p.key not in done]
    logging.info('Sweep: %d grid points, %d already finished, %d to run.', len(points), len(points) - len(todo),
                 len(todo))
    trained, failed, durations = [], {}, []
    for index, point in enumerate(todo):
        eta = np.mean(durations) * (len(todo) - index) if durations else None
        logging.info('Grid point %d/%d: %s (%d left%s)', index + 1, len(todo), point.dirname, len(todo) - index,
                     f', ETA {train_lib.format_seconds(eta)}' if eta is not None else '')
        started = time.time()
        point_dir = os.path.join(workdir, point.dirname)
        try:
            config = point_config(base, point)
            result = train_lib.train_and_evaluate(config, point_dir)
            if result.get('status') == 'preempted':
                logging.warning('Sweep interrupted at %s; rerun the same command to continue.', point.dirname)
                break
            row = {'model': point.model, 'alpha': point.alpha, 'rho': point.rho, **point_costs(config),
                   'top1': result['top1'], 'top5': result['top5'],
                   'train_seconds': round(time.time() - started, 1),
                   'images_per_sec': _train_images_per_sec(point_dir)}
            if jax.process_index() == 0:
                _append_row(results_path, row)
            trained.append(point.dirname)
        except Exception as error:  # a failed point must not stop the others
            failed[point.dirname] = f'{type(error).__name__}: {error}'
            logging.error('Grid point %s failed: %s\n%s', point.dirname, error, traceback.format_exc())
        durations.append(time.time() - started)
    rows = read_results(results_path)
    if rows and jax.process_index() == 0:
        plot_results(rows, workdir)
    for name, error in failed.items():
        logging.error('FAILED %s: %s', name, error)
    return {'rows': rows, 'trained': trained, 'failed': failed}


def plot_results(rows: Sequence[dict], workdir: str) -> tuple[str, str]:
    """accuracy_vs_macs.png (log x, one series per ρ, log-linear fit per model) and accuracy_vs_params.png."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    models = sorted({r['model'] for r in rows})
    rhos = sorted({float(r['rho']) for r in rows}, reverse=True)
    colors = {rho: plt.cm.viridis(i / max(1, len(rhos) - 1)) for i, rho in enumerate(rhos)}
    markers = dict(zip(models, 'osD^v<>'))

    def series(model, rho):
        selected = [r for r in rows if r['model'] == model and float(r['rho']) == rho]
        return sorted(selected, key=lambda r: float(r['alpha']))

    paths = []
    for x_field, filename, x_label in (('macs', 'accuracy_vs_macs.png', 'mult-adds (millions, log scale)'),
                                       ('params', 'accuracy_vs_params.png', 'parameters (millions)')):
        fig, ax = plt.subplots(figsize=(7, 5))
        for model in models:
            for rho in rhos:
                points = series(model, rho)
                if not points:
                    continue
                xs = [float(p[x_field]) / 1e6 for p in points]
                ys = [100 * float(p['top1']) for p in points]
                label = f'ρ={rho:g} ({int(float(points[0]["resolution"]))}px)' + (f' {model}' if len(models) > 1 else '')
                ax.plot(xs, ys, marker=markers[model], color=colors[rho], label=label,
                        linestyle='-' if x_field == 'macs' else ':')
                if x_field == 'params':
                    for p, x, y in zip(points, xs, ys):
                        ax.annotate(f'α={float(p["alpha"]):g}', (x, y), fontsize=7, xytext=(3, 3),
                                    textcoords='offset points')
            if x_field == 'macs':
                model_rows = [r for r in rows if r['model'] == model]
                if len(model_rows) >= 2:
                    log_x = np.log10([float(r['macs']) / 1e6 for r in model_rows])
                    y = [100 * float(r['top1']) for r in model_rows]
                    slope, intercept = np.polyfit(log_x, y, 1)
                    grid = np.linspace(log_x.min(), log_x.max(), 50)
                    ax.plot(10 ** grid, slope * grid + intercept, color='gray', linestyle='--',
                            label=f'log-linear fit {model}: {slope:.1f} pts/decade')
        if x_field == 'macs':
            ax.set_xscale('log')
        ax.set_xlabel(x_label)
        ax.set_ylabel('top-1 accuracy (%)')
        ax.set_title(f'accuracy vs {"mult-adds" if x_field == "macs" else "parameters"} '
                     f'(width α × resolution ρ)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
        path = os.path.join(workdir, filename)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return tuple(paths)
