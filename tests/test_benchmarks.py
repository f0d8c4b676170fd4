"""The throughput benchmark runs end to end on a tiny configuration (without PyTorch, which CI lacks)."""
import json

import jax
import numpy as np
import pytest

import mobilenets_jax as mj
from benchmarks import throughput
from mobilenets_jax import cost
from mobilenets_jax.cost import machine

pytestmark = pytest.mark.slow   # end-to-end runs: `make test-slow`, not `make test`


def test_throughput_reports_rates_and_compile_time(capsys, monkeypatch):
    monkeypatch.setattr(machine, 'host_cpu', lambda: 'Test CPU (family 1, model 2), 2 CPUs')
    rows = throughput.main(['--models=cifar_mobilenet_v2', '--alpha=0.5', '--batch_size=8', '--image_size=16',
                            '--impls=shifted', '--repeats=1', '--warmup=1', '--no_torch'])
    (row,) = rows
    result = row['jax']['shifted']
    assert result['train'] > 0 and result['infer'] > 0 and result['compile_s'] > 0
    # The row's parameter count (the PyTorch mirror is checked against it) is the model's own.
    variables = mj.init_variables(mj.create_model('cifar_mobilenet_v2', num_classes=10, alpha=0.5), seed=0,
                                  input_shape=(1, 16, 16, 3))
    assert result['params'] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
    assert row['torch'] == {} and 'ratio' not in row
    assert row['steal'] is None or 0 <= row['steal'] <= 1
    assert row['host_cpu'] == 'Test CPU (family 1, model 2), 2 CPUs'
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('# Test CPU (family 1, model 2), 2 CPUs; JAX ')
    assert any(line.startswith('JSON ') for line in out)


def test_compile_only_reports_each_impl():
    rows = throughput.main(['--models=cifar_mobilenet_v2', '--alpha=0.5', '--batch_size=8', '--image_size=16',
                            '--impls=xla,shifted', '--compile_only', '--no_torch'])
    assert set(rows[0]['compile_s']) == {'xla', 'shifted'}
    assert all(seconds > 0 for seconds in rows[0]['compile_s'].values())
    assert rows[0]['from_cache'] == {'xla': False, 'shifted': False}  # no persistent cache unless asked for


def test_input_pipeline_benchmark_runs_the_training_transform():
    from benchmarks import input_pipeline
    result = input_pipeline.main(['--image_size=32', '--batch_size=2', '--batches=2', '--num_images=2'])
    assert result['train'] > 0 and result['eval'] > 0 and result['jpeg_kib'] > 1


def test_rows_timed_under_steal_carry_a_warning(capsys):
    throughput.print_row('calm', {'steal': 0.01}, 'calm row')
    throughput.print_row('stolen', {'steal': 0.2}, 'stolen row')
    throughput.print_row('unknown', {'steal': None}, 'row off Linux')
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'calm  steal 1%' and lines[1].startswith('JSON ')
    assert lines[2] == 'stolen  steal 20%' and '20%' in lines[3] and 'stolen row' in lines[3]
    assert lines[3].startswith('# warning') and lines[4] == 'JSON {"steal": 0.2}'
    assert lines[5] == 'unknown' and lines[6] == 'JSON {"steal": null}' and len(lines) == 7


def _fake_clock():
    """A clock that only the runners below move forward: (clock, advance)."""
    now = [0.0]

    def advance(seconds):
        now[0] += seconds
    return (lambda: now[0]), advance


def test_contenders_are_timed_round_robin():
    """Warm-up first, then each contender in turn: `settle` untimed calls, then one timed call, so load
    swings hit all of them alike; the rate is batch size / median seconds of the timed calls only."""
    clock, advance = _fake_clock()
    calls = []

    def runner(name, seconds):
        count = [0]

        def run():
            calls.append(name)
            count[0] += 1
            # With warmup=1 and settle=1 a runner's even-numbered calls are its settle calls. They take
            # 10x longer here, and the rates must not see them.
            advance(seconds * (10 if count[0] % 2 == 0 else 1))
        return run

    rates = throughput._interleaved_rates({'fast': runner('fast', 0.25), 'slow': runner('slow', 1.0)},
                                          batch_size=4, warmup=1, repeats=3, settle=1, clock=clock)
    assert calls == ['fast', 'slow'] + ['fast', 'fast', 'slow', 'slow'] * 3
    assert rates == {'fast': 4 / 0.25, 'slow': 4 / 1.0}
    # Without settle calls every call is timed.
    calls.clear()
    rates = throughput._interleaved_rates({'fast': runner('fast', 0.25)}, batch_size=4, warmup=0, repeats=2,
                                          settle=0, clock=clock)
    assert calls == ['fast', 'fast'] and rates == {'fast': 4 / ((0.25 + 2.5) / 2)}   # the median of both
    # A settle time adds untimed calls until it has passed: 1 s of calls of 1/16 s is 16 settle calls, then
    # the timed one, per turn.
    calls.clear()
    rates = throughput._interleaved_rates({'steady': lambda: (calls.append('steady'), advance(1 / 16))},
                                          batch_size=4, warmup=0, repeats=2, settle=1, settle_s=1.0, clock=clock)
    assert len(calls) == 2 * (16 + 1) and rates == {'steady': 4 * 16}


def test_gemm_benchmark_reports_gflops(monkeypatch):
    from benchmarks import gemm
    monkeypatch.setattr(machine, 'host_cpu', lambda: 'Test CPU, 2 CPUs')
    (row,) = gemm.main(['--shapes=64,32,16', '--repeats=2', '--no_torch'])
    assert (row['m'], row['k'], row['n']) == (64, 32, 16)
    assert set(row['gflops']) == {'jax'} and row['gflops']['jax'] > 0 and 'ratio' not in row
    assert row['host_cpu'] == 'Test CPU, 2 CPUs'
    assert row['steal'] is None or 0 <= row['steal'] <= 1
    for bad in ('64,32', '64,x,16', '64,0,16'):
        with pytest.raises(SystemExit):
            gemm.main([f'--shapes={bad}', '--no_torch'])
    for bad in ('-1', 'x', 'nan'):
        with pytest.raises(SystemExit):
            gemm.main([f'--settle_s={bad}', '--no_torch'])


def test_gemm_floor_counts_the_matrix_products_of_a_step():
    """MobileNetV1-224: every mult-add but the depthwise ones (17,385,984 by hand: Σ out_h·out_w·9·c over
    the 13 blocks), three times in training less the stem's input gradient (112²·27·32 = 10,838,016)."""
    from benchmarks import gemm_floor
    model = mj.create_model('mobilenet_v1', num_classes=1000)
    macs = gemm_floor.gemm_macs('mobilenet_v1', 224)
    assert macs['infer'] == cost.count_macs(model, 224) - 17_385_984
    assert macs['train'] == 3 * macs['infer'] - 10_838_016
    # The conv baseline's stride-1 dense 3×3 layers take Winograd in float32 on CPU: 16 products per 2×2
    # tile. On the even maps that is 4/9 of their 3,468,165,120 direct mult-adds (112²·9·32·64 + 7 layers
    # of 462,422,016); the 7×7×1024² layer has 4·4 tiles: 268,435,456 instead of 462,422,016. In bfloat16
    # all of them count in full.
    direct = gemm_floor.gemm_macs('mobilenet_v1_conv', 224, dtype='bfloat16')
    winograd = gemm_floor.gemm_macs('mobilenet_v1_conv', 224, dtype='float32')
    assert direct['infer'] - winograd['infer'] == 3_468_165_120 * 5 // 9 + 462_422_016 - 268_435_456
    assert gemm_floor.gemm_macs('mobilenet_v1_conv', 224, backend='gpu') == direct


def test_gemm_floor_of_a_throughput_log(tmp_path, capsys):
    from benchmarks import gemm_floor
    result = dict(model='cifar_mobilenet_v2', batch_size=8, image_size=32, alpha=1.0, dtype='float32',
                  backend='cpu', jax={'shifted': {'train': 100.0, 'infer': 1000.0}},
                  torch={'nchw': {'train': 50.0, 'infer': 400.0}, 'channels_last': {'train': 80.0, 'infer': 500.0}})
    throughput_log = tmp_path / 'tp.log'
    throughput_log.write_text('# header\nsome table line\nJSON ' + json.dumps(result) + '\n')
    gemm_log = tmp_path / 'gemm.log'
    gemm_log.write_text(''.join('JSON ' + json.dumps({'m': 1, 'k': 1, 'n': 1, 'gflops': {'jax': g, 'torch': 1.0}})
                                + '\n' for g in (80.0, 125.0, 100.0)))
    (row,) = gemm_floor.main([f'--throughput_log={throughput_log}', f'--gemm_log={gemm_log}'])
    macs = gemm_floor.gemm_macs('cifar_mobilenet_v2', 32)
    assert row['gemm_gflops'] == 125.0                           # the best rate of the log
    assert row['train_floor_ms'] == pytest.approx(2 * macs['train'] * 8 / 125e9 * 1e3)
    assert row['infer_floor_ms'] == pytest.approx(2 * macs['infer'] * 8 / 125e9 * 1e3)
    assert row['train_target_ms'] == pytest.approx(8 / (1.5 * 80) * 1e3)    # the faster layout
    assert row['infer_target_ms'] == pytest.approx(8 / (1.5 * 500) * 1e3)
    assert row['train_jax_ms'] == pytest.approx(80.0) and row['infer_jax_ms'] == pytest.approx(8.0)
    assert row['train_headroom_ms'] == pytest.approx(row['train_target_ms'] - row['train_floor_ms'])
    assert row['infer_other_work_share'] == pytest.approx(row['infer_headroom_ms'] / (8.0 - row['infer_floor_ms']))
    assert any(line.startswith('JSON ') for line in capsys.readouterr().out.splitlines())
    # --gemm_gflops overrides the log; bad input is refused before anything is traced.
    (row,) = gemm_floor.main([f'--throughput_log={throughput_log}', '--gemm_gflops=250'])
    assert row['train_floor_ms'] == pytest.approx(2 * macs['train'] * 8 / 250e9 * 1e3)
    # A row without PyTorch has floors but no target.
    no_torch_log = tmp_path / 'no_torch.log'
    no_torch_log.write_text('JSON ' + json.dumps({**result, 'torch': {}}) + '\n')
    (row,) = gemm_floor.main([f'--throughput_log={no_torch_log}', '--gemm_gflops=250'])
    assert row['train_floor_ms'] > 0 and 'train_target_ms' not in row and 'infer_headroom_ms' not in row
    broken_log = tmp_path / 'broken.log'
    broken_log.write_text('JSON {"model": \n')
    capsys.readouterr()
    for bad, message in ((['--gemm_gflops=0'], '--gemm_gflops=0.0'), (['--gemm_gflops=-3'], '--gemm_gflops=-3.0'),
                         (['--gemm_gflops=inf'], '--gemm_gflops=inf'),
                         ([f'--gemm_log={throughput_log}'], f'{throughput_log}: no gemm.py JSON line'),
                         ([f'--gemm_log={broken_log}'], f'{broken_log}:1: not a JSON line'),
                         ([f'--gemm_log={tmp_path / "missing.log"}'], 'missing.log'),
                         ([f'--gemm_log={gemm_log}', '--gemm_gflops=1'], 'not allowed with')):
        with pytest.raises(SystemExit):
            gemm_floor.main([f'--throughput_log={throughput_log}', *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gemm_floor.main([f'--throughput_log={gemm_log}', '--gemm_gflops=100'])    # no throughput row in it
    assert 'no throughput.py JSON line' in capsys.readouterr().err
