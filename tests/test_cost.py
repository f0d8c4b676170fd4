"""The cost report: mult-adds against the papers, XLA's counts, the CLI's formats and errors.

Mult-adds and parameter counts come from traced layer shapes (nothing is compiled), so every published
point is checked; only a few small configurations are compiled.
"""
import csv
import functools
import io
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax as mj
from mobilenets_jax import config_lib, cost, published, train_lib
from mobilenets_jax.cost import machine
from mobilenets_jax.data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACS_TOLERANCE = 0.03

# Published points the zoo misses by more than 3% (left visible for the model owners; strict, so a fix
# turns them into failures that ask for this list to shrink). Measured relative difference in brackets.
KNOWN_MACS_MISSES = {
    # TF-slim prints 34M, but α²ρ² from its own 41M at 224 gives 30.1M: most likely a typo in the table.
    ('mobilenet_v1', 0.25, None, 192): 'zoo 30.21M vs published 34M (-11.1%)',
    # 13.57M prints as 14M: inside the table's integer rounding, outside 3%.
    ('mobilenet_v1', 0.25, None, 128): 'zoo 13.57M vs published 14M (-3.1%)',
    # The TF-slim V2 table truncates to whole millions (every zoo value lies in [published, published + 1)).
    ('mobilenet_v2', 0.35, None, 96): 'zoo 11.93M vs published 11M (+8.5%)',
    ('mobilenet_v2', 0.5, None, 96): 'zoo 18.89M vs published 18M (+4.9%)',
}


@functools.lru_cache(maxsize=None)
def _model(name, alpha, groups):
    return mj.create_model(name, alpha=alpha, groups=groups)


@functools.lru_cache(maxsize=None)
def _macs(name, alpha, groups, resolution):
    return cost.count_macs(_model(name, alpha, groups), resolution)


def _params(name, alpha, groups):
    return cost.count_variables(mj.abstract_variables(_model(name, alpha, groups), (1, 32, 32, 3)))


def _macs_points():
    points = []
    for key in sorted(published.PUBLISHED_MACS, key=str):
        marks = [pytest.mark.xfail(reason=KNOWN_MACS_MISSES[key], strict=True)] if key in KNOWN_MACS_MISSES else []
        points.append(pytest.param(*key, id='-'.join(str(k) for k in key), marks=marks))
    return points


@pytest.mark.parametrize('name,alpha,groups,resolution', _macs_points())
def test_macs_match_every_published_point(name, alpha, groups, resolution):
    macs = _macs(name, alpha, groups, resolution)
    expected = published.published_macs(name, alpha, groups, resolution)
    assert abs(macs / expected - 1) <= MACS_TOLERANCE, f'{macs / 1e6:.2f}M vs {expected / 1e6:.0f}M'


def _params_points():
    keys = set(published.EXACT_PARAMS) | set(published.EXACT_TRAINABLE_PARAMS) | set(published.ROUNDED_PARAMS)
    return [pytest.param(*key, id='-'.join(str(k) for k in key)) for key in sorted(keys, key=str)]


@pytest.mark.parametrize('name,alpha,groups', _params_points())
def test_params_match_published(name, alpha, groups):
    counts = _params(name, alpha, groups)
    key = (name, alpha, groups)
    if key in published.EXACT_PARAMS:
        assert (counts['params'], counts['batch_stats']) == published.EXACT_PARAMS[key]
    elif key in published.EXACT_TRAINABLE_PARAMS:
        assert counts['params'] == published.EXACT_TRAINABLE_PARAMS[key]
    else:
        value, unit, decimals = published.ROUNDED_PARAMS[key]
        assert round(counts['params'] / unit, decimals) == pytest.approx(value)


def test_all_configs_cover_every_published_point():
    configs = cost.all_configs()
    keys = {(c.model, c.alpha, c.groups, c.resolution) for c in configs}
    assert set(published.PUBLISHED_MACS) <= keys
    assert len(configs) == len(keys) == 72


def test_macs_scale_with_alpha_squared():
    # "roughly α²" (paper, Sec. 3.3): the stem and the classifier scale with α only, which shows at α = 0.25.
    full = _macs('mobilenet_v1', 1.0, None, 224)
    for alpha, tolerance in ((0.75, 0.1), (0.5, 0.1), (0.25, 0.2)):
        ratio = _macs('mobilenet_v1', alpha, None, 224) / full
        assert abs(ratio / alpha ** 2 - 1) < tolerance, (alpha, ratio)


def test_macs_scale_with_rho_squared():
    full = _macs('mobilenet_v1', 1.0, None, 224)
    for resolution in (192, 160, 128):
        ratio = _macs('mobilenet_v1', 1.0, None, resolution) / full
        assert abs(ratio / (resolution / 224) ** 2 - 1) < 0.05, (resolution, ratio)


def test_mobilenet_v1_macs_sit_in_pointwise_convolutions():
    rows = cost.layer_costs(_model('mobilenet_v1', 1.0, None), 224)
    shares = cost.macs_by_kind(rows)
    total = sum(shares.values())
    assert total == _macs('mobilenet_v1', 1.0, None, 224)
    assert shares['conv1x1'] / total == pytest.approx(0.9486, abs=0.005)   # paper, Table 2: 94.86%
    assert shares['depthwise'] / total == pytest.approx(0.0306, abs=0.005)  # 3.06%
    assert {row['kind'] for row in rows} == {'conv', 'depthwise', 'dense'}
    # Conv and dense parameters: every parameter but BatchNorm's scale and offset (as many as its statistics).
    assert sum(row['params'] for row in rows) == 4_231_976 - 21_888


def test_layer_costs_rows():
    model = _model('shufflenet_v1', 0.5, 3)
    rows = cost.layer_costs(model, 224, batch=2)
    kinds = {row['kind'] for row in rows}
    assert kinds == {'conv', 'depthwise', 'group_conv', 'dense'}
    assert rows[0]['name'] == 'stem' and rows[0]['output_shape'] == (2, 112, 112, 12)
    # TF 'SAME' at stride 2 on an even map pads only after: (112 - 1)·2 + 3 - 224 = 1 row and column.
    assert (rows[0]['strides'], rows[0]['pads'], rows[0]['groups']) == (2, ((0, 1), (0, 1)), 1)
    grouped = next(r for r in rows if r['kind'] == 'group_conv')
    assert grouped['groups'] == 3 and grouped['pads'] == ((0, 0), (0, 0))
    assert rows[-1]['strides'] is None and rows[-1]['pads'] is None
    assert rows[-1]['kind'] == 'dense' and rows[-1]['macs'] == 2 * 480 * 1000
    assert sum(r['macs'] for r in rows) == 2 * _macs('shufflenet_v1', 0.5, 3, 224)
    counts = _params('shufflenet_v1', 0.5, 3)
    assert sum(r['params'] for r in rows) == counts['params'] - counts['batch_stats']


def test_normalize_cost_across_versions():
    assert cost.normalize_cost({'flops': 10.0, 'bytes accessed': 4.0})['flops'] == 10.0
    assert cost.normalize_cost([{'flops': 10.0, 'bytes accessed': 4.0}])['bytes accessed'] == 4.0
    merged = cost.normalize_cost([{'flops': 1.0}, {'flops': 2.0}])
    assert merged['flops'] == 3.0
    with pytest.warns(RuntimeWarning, match='unavailable'):
        assert cost.normalize_cost(None) == {'flops': None, 'bytes accessed': None, 'transcendentals': None}
    with pytest.warns(RuntimeWarning, match='no "flops"'):
        assert cost.normalize_cost({'utilization': 1.0})['flops'] is None

    class NoCostModel:
        def cost_analysis(self):
            raise NotImplementedError('not on this backend')

    with pytest.warns(RuntimeWarning):
        assert cost.xla.stage_cost(NoCostModel(), 'test program')['flops'] is None


def test_compiled_cost_counts_a_matmul():
    a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
    result = cost.compiled_cost(jnp.matmul, a, b)
    assert result['flops'] == 2 * 8 * 16 * 4
    assert result['bytes accessed'] > 0 and result['compile_seconds'] > 0


def test_fast_compile_options_leave_the_counts_unchanged():
    # Grouped and depthwise convolutions, channel shuffles, concatenations: the ops XLA:CPU rewrites most.
    fast = cost.analyze('shufflenet_v1', 0.25, 3, 64, train=False, fast_compile=True)
    default = cost.analyze('shufflenet_v1', 0.25, 3, 64, train=False, fast_compile=False)
    assert (fast['flops'], fast['bytes_accessed']) == (default['flops'], default['bytes_accessed'])


@pytest.mark.parametrize('train_cost', ['compiled', 'lowered'])
def test_flops_against_macs_and_training(train_cost):
    record = cost.analyze('cifar_mobilenet_v2', 0.5, resolution=32, train_cost=train_cost, batch_size=4)
    assert set(cost.FIELDS) <= set(record)
    assert record['macs'] == _macs('cifar_mobilenet_v2', 0.5, None, 32)
    assert record['flops'] >= 1.8 * record['macs']
    assert record['train_flops'] > 2 * record['flops']
    assert record['train_cost_source'] == train_cost and record['train_batch_size'] == 4
    assert record['params'] == _params('cifar_mobilenet_v2', 0.5, None)['params']
    assert record['published_params'] == 15_500 and record['published_macs'] is None
    assert record['arithmetic_intensity'] == pytest.approx(record['flops'] / record['bytes_accessed'])
    assert record['backend'] == 'cpu' and record['groups'] is None


def test_flops_of_a_published_point():
    record = cost.analyze('mobilenet_v1', 0.25, resolution=128, train=False, per_layer=True)
    assert record['train_flops'] is None and record['train_cost_source'] is None
    assert record['macs'] == _macs('mobilenet_v1', 0.25, None, 128)
    assert 1.8 * record['macs'] <= record['flops'] <= 2.3 * record['macs']
    layers = record['layers']
    assert len(layers) == 28 and all(row['flops'] > 0 and row['bytes'] > 0 for row in layers)
    # XLA counts 2 flops per multiply-add, plus the bias add; padded taps are skipped (3x3 convolutions
    # count less: 31% less at 4x4).
    for row in layers:
        bias = math.prod(row['output_shape']) if row['kind'] == 'dense' else 0
        if row['kernel'] in (None, (1, 1)):
            assert row['flops'] == 2 * row['macs'] + bias, row
        else:
            assert 0.6 * 2 * row['macs'] <= row['flops'] <= 2 * row['macs'], row
    table = cost.format_records([record], 'table')
    assert 'block_13/pointwise' in table and 'MACs by layer kind: conv1x1 81.' in table


def test_formats():
    records = [
        dict(model='mobilenet_v1', alpha=1.0, groups=None, resolution=224, num_classes=1000, params=4231976,
             batch_stats=21888, macs=568740352, flops=1.15e9, train_flops=3.5e9, bytes_accessed=9.1e7,
             arithmetic_intensity=12.6, published_macs=569000000, published_params=4231976, backend='cpu',
             compile_seconds=1.5, train_batch_size=32, train_cost_source='compiled'),
        dict(model='shufflenet_v1', alpha=0.5, groups=3, resolution=224, num_classes=1000, params=717324,
             batch_stats=1, macs=37590000, flops=None, train_flops=None, bytes_accessed=None,
             arithmetic_intensity=None, published_macs=None, published_params=None, backend='cpu',
             compile_seconds=0.5, train_batch_size=None, train_cost_source=None),
    ]
    lines = cost.format_records(records, 'json').splitlines()
    assert [json.loads(line)['model'] for line in lines] == ['mobilenet_v1', 'shufflenet_v1']
    rows = list(csv.reader(io.StringIO(cost.format_records(records, 'csv'))))
    assert rows[0] == list(cost.FIELDS) and len(rows) == 3
    table = cost.format_records(records, 'table').splitlines()
    assert len(table) == 4 and '-0.0%' in table[2] and '+0.0%' in table[2]
    markdown = cost.format_records(records, 'markdown').splitlines()
    assert markdown[0].startswith('| model') and markdown[1].startswith('|:---') and len(markdown) == 4


def _tiny_training_config(**overrides):
    """The papers' recipe (RMSprop, L2, staircase decay, label smoothing, EMA) on a tiny CIFAR model."""
    config = config_lib.default_config()
    config.model.name, config.model.alpha = 'cifar_mobilenet_v1', 0.25
    config.dataset, config.rho, config.batch_size = 'cifar10', 0.5, 8   # 16x16 images
    config.update(overrides)
    return config


def _trained_program_text(config):
    """The lowered text of the step train_lib trains `config` with on one device."""
    mesh = train_lib.create_mesh(jax.devices()[:1])
    setup = train_lib.create_setup(config, num_train_examples=datasets.published_split_size(config.dataset, 'train'))
    state = train_lib.initial_state(setup, config, mesh)
    batch = train_lib.shard_batch({'image': np.zeros((8, 16, 16, 3), np.float32),
                                   'label': np.zeros((8,), np.int32)}, mesh)
    return train_lib.make_train_step(setup, config, mesh).lower(state, batch).as_text()


def test_cost_counts_the_step_that_trains():
    """What `train_flops` counts for a training config is the program train_lib compiles for one device:
    the same lowered HLO (same step function, optimizer, state and placement). A cost report whose step
    drifted from training's (another optimizer, no EMA, no label smoothing) differs, as the second
    half shows."""
    config = _tiny_training_config()
    point, options = cost.from_training_config(config)
    counted = cost.train_program(point, batch_size=8, **options).as_text()
    assert counted == _trained_program_text(config)
    without_ema = cost.train_program(point, batch_size=8, model_kwargs=options['model_kwargs'],
                                     training_config=_tiny_training_config(ema_decay=0.0)).as_text()
    assert without_ema != counted


def test_measured_records_carry_rates_and_steal():
    record = cost.analyze('cifar_mobilenet_v2', 0.25, resolution=16, train_cost='lowered', measure=True,
                          batch_size=2, measure_runs=1)
    assert record['inference_images_per_sec'] > 0 and record['train_images_per_sec'] > 0
    assert record['steal'] is None or 0 <= record['steal'] <= 1
    calm, stolen = dict(record, steal=0.0), dict(record, resolution=24, steal=0.25)
    table = cost.format_records([calm, stolen], 'table').splitlines()
    assert table[0].split()[-5:] == ['infer', 'img/s', 'train', 'img/s', 'steal']
    assert table[2].rstrip().endswith('0%') and table[3].rstrip().endswith('25%')
    assert table[-2] == '' and table[-1].startswith('warning: the hypervisor took 25% ')
    assert 'cifar_mobilenet_v2 α=0.25 24 was timed' in table[-1]
    assert 'warning' not in cost.format_records([calm], 'table')
    rows = list(csv.reader(io.StringIO(cost.format_records([calm, stolen], 'csv'))))
    assert rows[0][-1] == 'steal' and rows[2][-1] == '0.25'


def test_host_cpu_names_the_model_and_the_cpu_count(monkeypatch):
    """Benchmarks name the host: the first processor's model name, family and model from /proc/cpuinfo,
    and the number of CPUs this process may use."""
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2}, raising=False)
    cpuinfo = ('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n'
               'model name\t: AMD EPYC\nflags\t\t: fpu avx512f\n\n'
               'processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n'
               'model name\t: AMD EPYC\nflags\t\t: fpu avx512f\n')
    assert machine.host_cpu(cpuinfo) == 'AMD EPYC (family 25, model 17), 3 CPUs'
    # Without family and model (ARM kernels): the name alone; without a name, Python's own guess.
    assert machine.host_cpu('processor\t: 0\nmodel name\t: Neoverse-V2\n') == 'Neoverse-V2, 3 CPUs'
    monkeypatch.setattr(machine.platform, 'processor', lambda: 'armv8')
    assert machine.host_cpu('processor\t: 0\nBogoMIPS\t: 50.00\n') == 'armv8, 3 CPUs'
    monkeypatch.undo()
    assert machine.host_cpu().endswith(' CPUs')       # this machine's own /proc/cpuinfo


def test_steal_is_read_from_proc_stat(tmp_path):
    """The hypervisor's share (steal) is the 8th number of /proc/stat's 'cpu' line over the first 8."""
    stat = tmp_path / 'stat'
    stat.write_text('cpu  100 0 50 800 10 0 0 40 7 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n')
    before = machine.cpu_times(str(stat))
    assert before == (40, 1000)
    stat.write_text('cpu  190 0 60 1000 10 0 0 140 7 0\n')
    after = machine.cpu_times(str(stat))
    assert machine.steal_fraction(before, after) == pytest.approx(100 / 400)
    assert machine.steal_fraction(before, None) is None and machine.steal_fraction(after, before) is None
    assert machine.cpu_times(str(tmp_path / 'missing')) is None
    stat.write_text('intr 1 2 3\n')
    assert machine.cpu_times(str(stat)) is None
    # The context manager reads the file around its block and sets the share when the block ends.
    stat.write_text('cpu  100 0 50 800 10 0 0 40 7 0\n')
    record = {}
    with machine.record_steal(record, str(stat)) as same:
        assert same is record and 'steal' not in record
        stat.write_text('cpu  130 0 50 900 10 0 0 60 7 0\n')
    assert record['steal'] == pytest.approx(20 / 150)
    with machine.record_steal(record):         # the real /proc/stat, or None off Linux
        pass
    assert record['steal'] is None or 0 <= record['steal'] <= 1
    assert machine.steal_warning('x', 0.03) is None and machine.steal_warning('x', None) is None
    assert machine.steal_warning('x', 0.031).startswith('warning: the hypervisor took 3% ')


def _flops_cli(*args, devices=8, check=True):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS='cpu')
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'flops.py'), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_figures_identical_under_1_and_8_devices():
    args = ('--model=cifar_mobilenet_v2', '--alphas=0.5', '--resolutions=16', '--batch_size=4', '--format=json')
    runs = []
    for devices in (1, 8):
        lines = _flops_cli(*args, devices=devices).stdout.strip().splitlines()
        assert len(lines) == 1
        runs.append([json.loads(line) for line in lines])
    for one, eight in zip(*runs):
        one.pop('compile_seconds'), eight.pop('compile_seconds')
        assert one == eight
        assert one['train_cost_source'] == 'compiled' and one['flops'] > 0 and one['train_flops'] > 0


def test_cli_csv_one_row_per_configuration():
    result = _flops_cli('--model=cifar_mobilenet_v1', '--alphas=0.5,1', '--resolutions=16', '--train_cost=none',
                        '--format=csv')
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][:4] == ['model', 'alpha', 'groups', 'resolution'] and len(rows) == 3
    assert [row[1] for row in rows[1:]] == ['0.5', '1.0']
    assert '[2/2]' in result.stderr   # the progress line


@pytest.mark.parametrize('args,message', [
    (['--model=mobilenet_v5'], "unknown model 'mobilenet_v5'"),
    (['--model=mobilenet_v1', '--alphas=0'], 'alpha=0.0'),
    (['--model=mobilenet_v1', '--resolutions=16'], 'resolution=16 is too small'),
    (['--model=mobilenet_v2', '--groups=3'], 'groups=3: mobilenet_v2 has no groups'),
    (['--config=configs/no_such_config.py'], 'configs/no_such_config.py: no such file'),
])
def test_cli_bad_input(args, message):
    result = _flops_cli(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and 'Traceback' not in result.stderr
