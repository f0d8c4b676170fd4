"""The throughput benchmark runs end to end on a tiny configuration (without PyTorch, which CI lacks)."""
from benchmarks import throughput


def test_throughput_reports_rates_and_compile_time(capsys):
    rows = throughput.main(['--models=cifar_mobilenet_v2', '--alpha=0.5', '--batch_size=8', '--image_size=16',
                            '--impls=shifted', '--repeats=1', '--warmup=1', '--no_torch'])
    (row,) = rows
    result = row['jax']['shifted']
    assert result['train'] > 0 and result['infer'] > 0 and result['compile_s'] > 0
    assert row['torch'] == {} and 'ratio' not in row
    assert any(line.startswith('JSON ') for line in capsys.readouterr().out.splitlines())


def test_compile_only_reports_each_impl():
    rows = throughput.main(['--models=cifar_mobilenet_v2', '--alpha=0.5', '--batch_size=8', '--image_size=16',
                            '--impls=xla,shifted', '--compile_only', '--no_torch'])
    assert set(rows[0]['compile_s']) == {'xla', 'shifted'}
    assert all(seconds > 0 for seconds in rows[0]['compile_s'].values())


def test_input_pipeline_benchmark_runs_the_training_transform():
    from benchmarks import input_pipeline
    result = input_pipeline.main(['--image_size=32', '--batch_size=2', '--batches=2', '--num_images=2'])
    assert result['train'] > 0 and result['eval'] > 0 and result['jpeg_kib'] > 1
