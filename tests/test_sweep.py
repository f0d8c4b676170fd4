"""sweep.py: a 2 × 2 grid on the digits data, its table and figures, and resuming."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mobilenets_jax import sweep_lib

pytestmark = pytest.mark.slow   # end-to-end runs: `make test-slow`, not `make test`

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_by_two_grid_table_figures_and_resume(tmp_path, tiny_config, monkeypatch):
    workdir = str(tmp_path / 'sweep')
    config = tiny_config(num_train_steps=2)
    result = sweep_lib.run_sweep(config, workdir, models=['cifar_mobilenet_v2'], alphas=[0.5, 1.0], rhos=[0.5, 1.0])
    assert not result['failed'] and len(result['trained']) == 4
    rows = sweep_lib.read_results(os.path.join(workdir, 'results.csv'))
    assert len(rows) == 4
    assert {(float(r['alpha']), float(r['rho'])) for r in rows} == {(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)}
    assert {int(r['resolution']) for r in rows} == {16, 32}
    for r in rows:
        assert 0.0 <= float(r['top1']) <= 1.0 and int(r['macs']) > 0 and int(r['params']) > 0
    for name in ('accuracy_vs_macs.png', 'accuracy_vs_params.png'):
        with Image.open(os.path.join(workdir, name)) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100

    # Rerun: every point has a row, so nothing trains.
    def must_not_train(*args, **kwargs):
        raise AssertionError('a finished grid point was trained again')
    monkeypatch.setattr(sweep_lib.train_lib, 'train_and_evaluate', must_not_train)
    again = sweep_lib.run_sweep(config, workdir, models=['cifar_mobilenet_v2'], alphas=[0.5, 1.0], rhos=[0.5, 1.0])
    assert again['trained'] == [] and len(again['rows']) == 4

    # The MACs column is flops.py's figure for the same configuration.
    row = next(r for r in rows if float(r['alpha']) == 0.5 and float(r['rho']) == 0.5)
    out = subprocess.run([sys.executable, os.path.join(REPO, 'flops.py'), '--model=cifar_mobilenet_v2',
                          '--alphas=0.5', '--resolutions=16', '--num_classes=10', '--format=json'],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr
    record = json.loads([line for line in out.stdout.splitlines() if line.startswith('{')][0])
    assert int(row['macs']) == record['macs'] and int(row['params']) == record['params']


def test_failed_point_is_reported_and_others_continue(tmp_path, tiny_config, monkeypatch):
    workdir = str(tmp_path / 'sweep')
    config = tiny_config(num_train_steps=2)
    real = sweep_lib.train_lib.train_and_evaluate

    def flaky(cfg, point_dir):
        if cfg.model.alpha == 0.5:
            raise RuntimeError('simulated failure')
        return real(cfg, point_dir)
    monkeypatch.setattr(sweep_lib.train_lib, 'train_and_evaluate', flaky)
    result = sweep_lib.run_sweep(config, workdir, models=['cifar_mobilenet_v2'], alphas=[0.5, 1.0], rhos=[0.5])
    assert list(result['failed']) == ['cifar_mobilenet_v2_a0.5_r0.5']
    assert 'simulated failure' in result['failed']['cifar_mobilenet_v2_a0.5_r0.5']
    assert result['trained'] == ['cifar_mobilenet_v2_a1_r0.5'] and len(result['rows']) == 1
