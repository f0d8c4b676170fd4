"""Training: guardrails, multi-device equivalence, multi-process, TFDS mock data end to end, resume."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10, mobilenet_v1_imagenet
from mobilenets_jax import checkpoints, config_lib, train_lib
from mobilenets_jax.data import datasets


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# see tests/multihost_worker.py: Adam amplifies rounding noise
RMSPROP = {'model.dropout_rate': 0.0, 'optimizer': 'rmsprop', 'learning_rate': 0.01}


@pytest.mark.parametrize('field, value, message', [
    ('batch_size', 12, 'config.batch_size=12 is not divisible by the 8 devices'),
    ('dataset', 'mnist', "config.dataset: Unknown dataset 'mnist'; supported datasets: ['cifar10'"),
    ('model.name', 'resnet50', "config.model: unknown model 'resnet50'"),
    ('rho', 0.1, 'config.rho=0.1: image size 3x3 is too small for cifar_mobilenet_v2'),
    ('optimizer', 'lamb', "config.optimizer='lamb'; allowed: rmsprop, adam, adamw, sgd"),
    ('ema_decay', 1.5, 'config.ema_decay=1.5'),
    ('model.alpha', 0.0, 'alpha=0.0 for cifar_mobilenet_v2'),
    ('model.bn_epsilon', 0.0, 'bn_epsilon=0.0: must be > 0'),
    ('warmup_style', 'cosine', "config.warmup_style='cosine'; allowed: offset, absolute"),
    ('decoupled_weight_decay', 0.1, "needs config.optimizer=adamw (it is 'rmsprop')"),
    ('freeze_backbone', True, 'config.freeze_backbone=True needs config.init_from'),
    ('reinit_classifier', True, 'config.reinit_classifier=True needs config.init_from'),
])
def test_config_guardrails(tiny_config, field, value, message):
    config = tiny_config(**RMSPROP)
    *parents, leaf = field.split('.')
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError) as info:
        config_lib.validate_config(config, num_devices=8)
    assert message in str(info.value)


def test_cosine_end_factor_needs_the_cosine_schedule(tiny_config):
    config = tiny_config(**RMSPROP, cosine_end_factor=0.001)
    config_lib.validate_config(config, num_devices=8)   # digits trains with 'cosine': accepted
    config.schedule = 'linear'
    with pytest.raises(ValueError, match="config.cosine_end_factor=0.001 needs config.schedule=cosine .it is 'linear'"):
        config_lib.validate_config(config, num_devices=8)


def _one_step(config, devices, batch):
    mesh = train_lib.create_mesh(devices)
    setup = train_lib.create_setup(config, num_train_examples=160)
    state = train_lib.initial_state(setup, config, mesh)
    state, _ = train_lib.make_train_step(setup, config, mesh)(state, train_lib.shard_batch(batch, mesh))
    return jax.device_get(state)


def test_sync_batch_stats_eight_devices_equal_one_device(tiny_config):
    config = tiny_config(**RMSPROP)
    config.sync_batch_stats = True
    rng = np.random.default_rng(0)
    batch = {'image': rng.uniform(size=(16, 16, 16, 3)).astype(np.float32),
             'label': rng.integers(0, 10, size=(16,)).astype(np.int32)}
    one = _one_step(config, jax.devices()[:1], batch)
    eight = _one_step(config, jax.devices()[:8], batch)
    for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(eight['params'])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one['batch_stats']), jax.tree.leaves(eight['batch_stats'])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', **extra)
    env.pop('JAX_NUM_CPU_DEVICES', None)
    return env


def test_two_processes_match_one_process(tmp_path):
    worker = os.path.join(REPO, 'tests', 'multihost_worker.py')
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / 'multi.npy'), '2', str(i), port],
                              env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    single = subprocess.run([sys.executable, worker, str(tmp_path / 'single.npy'), '1', '0', port], env=_env(),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert single.returncode == 0, single.stdout + single.stderr
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    np.testing.assert_allclose(np.load(tmp_path / 'multi.npy'), np.load(tmp_path / 'single.npy'), atol=1e-5)


def _read_metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize('dataset', ['imagenet2012', 'cifar10'])
def test_end_to_end_on_tfds_mock_data(tmp_path, dataset):
    if dataset == 'imagenet2012':
        config = mobilenet_v1_imagenet.get_config()
        config.model.alpha = 0.25
        config.rho = 32 / 224
    else:
        config = cifar10.get_config()
        config.model.name = 'cifar_mobilenet_v2'
        config.model.alpha = 0.5
        config.rho = 0.5
    config.batch_size = 8
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.steps_per_eval = 2
    config.data_dir = str(tmp_path / 'tfds')
    workdir = str(tmp_path / 'work')
    with tfds.testing.mock_data(num_examples=64):
        result = train_lib.train_and_evaluate(config, workdir)
    assert result['status'] == 'finished' and result['step'] == 3
    manager = checkpoints.create_manager(workdir, read_only=True)
    assert manager.all_steps() == [2, 3]
    records = _read_metrics(workdir)
    train = [r for r in records if r['split'] == 'train']
    assert [r['step'] for r in train] == [1, 2, 3]
    for key in ('loss', 'top1', 'top5', 'learning_rate', 'images_per_sec', 'eta_seconds', 'epoch'):
        assert np.isfinite(train[-1][key])
    assert records[-1]['split'] in ('validation', 'test') and records[-1]['num_examples'] == 16


CONFIG_NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs')) if f.endswith('.py') and f != '__init__.py')


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_every_config_is_valid_and_documents_its_command(name):
    import importlib
    module = importlib.import_module(f'configs.{name}')
    config = module.get_config()
    config_lib.validate_config(config, num_devices=8)
    if name != 'default':
        assert f'--config=configs/{name}.py' in module.__doc__ and 'Expected' in module.__doc__


# ---------------------------------------------------------------------------------------------------
# Early stopping survives a restart
# ---------------------------------------------------------------------------------------------------

def test_early_stopping_count_is_replayed_from_the_periodic_evaluations(tmp_path):
    """Best top-1, evaluations since it and the last evaluated step, from the records a resumed run keeps
    (MetricWriter: a cut line and the records after the resumed step dropped): train records (even when
    the eval split is called 'train'), final evaluations off the period and a repeated step left out."""
    def evaluation(step, top1, split='test'):
        return {'step': step, 'split': split, 'top1': top1, 'num_examples': 32}
    records = [{'step': 2, 'split': 'train', 'top1': 0.99}, evaluation(2, 0.5), evaluation(4, 0.4),
               evaluation(5, 0.9), evaluation(6, 0.6), evaluation(6, 0.3), evaluation(8, 0.55), evaluation(10, 0.1)]
    lines = [json.dumps(r) for r in records]
    lines.insert(3, '{"step": 4, "split": "te')

    def replayed(patience, up_to_step, records_lines=lines, split='test'):
        workdir = tmp_path / f'run_{len(os.listdir(tmp_path))}'
        workdir.mkdir()
        (workdir / 'metrics.jsonl').write_text('\n'.join(records_lines) + '\n')
        kept = train_lib.MetricWriter(str(workdir), resumed_step=up_to_step).records
        stopping = train_lib.EarlyStopping.replayed(patience, kept, split, 2)
        return stopping.best_top1, stopping.evals_without_gain, stopping.last_step, stopping.should_stop
    assert replayed(2, 8) == (0.6, 1, 8, False)
    assert replayed(1, 8) == (0.6, 1, 8, True)
    assert replayed(2, 4) == (0.5, 1, 4, False)
    assert replayed(2, 10) == (0.6, 2, 10, True)
    assert replayed(0, 10)[3] is False   # patience 0: never stops
    assert replayed(2, 10, []) == (-1.0, 0, -1, False)
    assert train_lib.EarlyStopping.replayed(2, [evaluation(8, 0.55)], 'test', 2).last_record == evaluation(8, 0.55)

    train_named = [{'step': 2, 'split': 'train', 'top1': 0.9}, evaluation(2, 0.5, 'train'),
                   {'step': 4, 'split': 'train', 'top1': 0.95}, evaluation(4, 0.4, 'train')]
    assert replayed(2, 4, [json.dumps(r) for r in train_named], 'train') == (0.5, 1, 4, False)


def test_metric_writer_keeps_the_records_up_to_the_resumed_step(tmp_path):
    lines = [json.dumps({'step': 1, 'split': 'train'}), '{"step": 2, "spl', json.dumps({'step': 3, 'split': 'train'})]
    (tmp_path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    writer = train_lib.MetricWriter(str(tmp_path), resumed_step=2)
    assert writer.records == [{'step': 1, 'split': 'train'}]
    assert (tmp_path / 'metrics.jsonl').read_text() == lines[0] + '\n'


def _periodic_evals(workdir, every):
    return [(r['step'], r['top1']) for r in _read_metrics(workdir)
            if r['split'] == 'test' and r['step'] % every == 0]


@pytest.mark.slow
def test_early_stopping_count_survives_a_restart(tiny_config, tmp_path):
    """A run restarted between two evaluations without gain, or preempted at an evaluation step, stops where
    the uninterrupted run stopped (a fresh count, or a skipped evaluation, would let it run on); rerunning
    an early-stopped run trains and evaluates nothing."""
    def config(steps):
        # constant rate, no warmup: the schedule does not depend on num_train_steps, so a run cut short
        # and continued computes the same steps as the whole run
        return tiny_config(num_train_steps=steps, early_stopping_patience=2, schedule='constant',
                           warmup_epochs=0.0, checkpoint_every_steps=1000,
                           eval_every_epochs=2 / (datasets.PUBLISHED_SPLIT_SIZES['digits']['train'] // 16))
    whole = train_lib.train_and_evaluate(config(60), str(tmp_path / 'whole'))
    assert whole['status'] == 'early_stopped', whole
    stop = whole['step']
    evals = _periodic_evals(str(tmp_path / 'whole'), 2)
    assert evals[-1][0] == stop and len(evals) >= 3   # the stop's evaluation is the result: not run twice
    assert whole['top1'] == evals[-1][1] and len(evals) == len({step for step, _ in evals})

    parts = str(tmp_path / 'parts')
    first = train_lib.train_and_evaluate(config(stop - 1), parts)   # after the evaluation at stop - 2
    assert first['status'] == 'finished' and first['step'] == stop - 1
    resumed = train_lib.train_and_evaluate(config(60), parts)
    assert (resumed['status'], resumed['step']) == ('early_stopped', stop)
    assert _periodic_evals(parts, 2) == evals

    # Preempted at an evaluation step: the checkpoint is written before that evaluation runs (here: a run
    # that ended at stop - 2, its final evaluation taken out of the log), so the resumed run runs it first.
    preempted = str(tmp_path / 'preempted')
    train_lib.train_and_evaluate(config(stop - 2), preempted)
    path = os.path.join(preempted, 'metrics.jsonl')
    kept = [json.dumps(r) for r in _read_metrics(preempted) if (r['split'], r['step']) != ('test', stop - 2)]
    with open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in kept))
    resumed = train_lib.train_and_evaluate(config(60), preempted)
    assert (resumed['status'], resumed['step']) == ('early_stopped', stop)
    assert _periodic_evals(preempted, 2) == evals

    before = _read_metrics(parts)
    again = train_lib.train_and_evaluate(config(60), parts)
    assert (again['status'], again['step'], again['top1']) == ('early_stopped', stop, evals[-1][1])
    assert _read_metrics(parts) == before   # nothing trained, nothing evaluated again
