"""Checkpoint evaluation (mobilenets_jax.evaluation, eval.py) and reading (mobilenets_jax.checkpoints): exact
counts on any device count, partial restores, the EMA record in the checkpoint metadata, EMA/raw selection
and the one-line errors.

One tiny digits run (4 steps on the 8 simulated devices of conftest.py, checkpoints at steps 2 and 4) is
trained once per test session and shared by the xdist workers; another workdir holds a checkpoint written
without EMA, and two more hold checkpoints as they were written before they carried metadata. Other device
counts run eval.py in subprocesses (JAX_NUM_CPU_DEVICES=N) or use a sub-mesh.
"""
import fcntl
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import mobilenets_jax as mj
from mobilenets_jax import checkpoints, config_lib, evaluation, train_lib

pytestmark = pytest.mark.slow   # end-to-end runs: `make test-slow`, not `make test`

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_TEST_SIZE = 360


def _config(data_dir, **overrides):
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from configs import digits
    config = digits.get_config()
    config.data_dir = data_dir
    config.num_train_steps = 4
    config.batch_size = 32
    config.warmup_epochs = 0.0
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.eval_every_epochs = 1000.0
    config.steps_per_eval = 1   # training's own final evaluation: one batch (evaluate_checkpoint ignores it)
    config.update(overrides)
    return config


def _save_without_metadata(workdir, step, state):
    """As checkpoints were written before they carried metadata: the 'state' item only."""
    manager = checkpoints.create_manager(workdir)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    manager.wait_until_finished()
    manager.close()


def _prepare(root):
    data_dir = os.path.join(root, 'tfds')
    dirs = {name: os.path.join(root, name) for name in ('ema', 'no_ema', 'legacy_ema', 'legacy_no_ema')}
    # Trained on 8 devices, EMA decay 0.99 (checkpoints at steps 2 and 4).
    config = _config(data_dir)
    train_lib.train_and_evaluate(config, dirs['ema'])
    mesh = train_lib.create_mesh()
    setup = train_lib.create_setup(config, num_train_examples=1437)
    manager = checkpoints.create_manager(dirs['ema'], read_only=True)
    template = checkpoints.abstract_like(train_lib.initial_state(setup, config, mesh))
    trained = checkpoints.restore(manager, 4, template)
    manager.close()
    _save_without_metadata(dirs['legacy_ema'], 4, trained)
    # A checkpoint as training without EMA writes it: ema_params are bitwise copies of params.
    config = _config(data_dir, ema_decay=0.0)
    untrained = train_lib.initial_state(setup, config, mesh)
    manager = checkpoints.create_manager(dirs['no_ema'])
    checkpoints.save(manager, 1, untrained, checkpoints.CheckpointMetadata.from_config(config), force=True)
    manager.wait_until_finished()
    manager.close()
    _save_without_metadata(dirs['legacy_no_ema'], 1, untrained)
    return {'data_dir': data_dir, **dirs}


@pytest.fixture(scope='session')
def runs(tmp_path_factory, worker_id):
    """The shared workdirs, built by whichever xdist worker gets here first (the other one waits)."""
    if worker_id == 'master':  # no xdist
        return _prepare(str(tmp_path_factory.mktemp('eval_runs')))
    root = tmp_path_factory.getbasetemp().parent / 'eval_runs'  # one per session, shared by the workers
    root.mkdir(exist_ok=True)
    with open(root / 'lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = root / 'done.json'
            if not done.exists():
                done.write_text(json.dumps(_prepare(str(root))))
            return json.loads(done.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _mesh(num_devices):
    return train_lib.create_mesh(jax.devices()[:num_devices])


def _eval_cli(args, *, devices=1, workdir=None, data_dir=None):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    # No persistent compilation cache (not the user's ~/.cache) unless `args` names one: the last flag wins.
    command = [sys.executable, 'eval.py', '--config=configs/digits.py', '--compilation_cache_dir=']
    if workdir:
        command.append(f'--workdir={workdir}')
    if data_dir:
        command.append(f'--config.data_dir={data_dir}')
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _same_metrics(a, b):
    assert a['num_examples'] == b['num_examples'] == DIGITS_TEST_SIZE
    assert a['top1'] == b['top1'] and a['top5'] == b['top5']
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# In-process: sub-meshes of the 8 simulated devices
# ----------------------------------------------------------------------------------------------

def test_exact_count_and_same_result_on_1_and_3_devices(runs):
    config = _config(runs['data_dir'])
    # 360 = 7.5 batches of 48 (3 devices x 16) and 7.2 batches of 50 (1 device): both pad and mask.
    on_3 = evaluation.evaluate_checkpoint(_config(runs['data_dir'], batch_size=48), runs['ema'], mesh=_mesh(3))
    on_1 = evaluation.evaluate_checkpoint(_config(runs['data_dir'], batch_size=50), runs['ema'], mesh=_mesh(1))
    _same_metrics(on_3, on_1)
    assert on_3['step'] == 4 and on_3['weights'] == 'ema' and on_3['split'] == 'test'
    assert (on_3['model'], on_3['alpha'], on_3['resolution']) == (config.model.name, 0.5, 16)
    assert on_3['images_per_sec'] > 0 and 0.0 <= on_3['top1'] <= on_3['top5'] <= 1.0


def test_same_checkpoint_twice_identical_and_ema_differs_from_raw(runs):
    config = _config(runs['data_dir'], batch_size=48)
    first = evaluation.evaluate_checkpoint(config, runs['ema'], step=4, mesh=_mesh(3))
    second = evaluation.evaluate_checkpoint(config, runs['ema'], step=4, mesh=_mesh(3))
    assert {k: v for k, v in first.items() if k != 'images_per_sec'} == \
        {k: v for k, v in second.items() if k != 'images_per_sec'}
    raw = evaluation.evaluate_checkpoint(config, runs['ema'], step=4, weights='raw', mesh=_mesh(3))
    assert (first['weights'], raw['weights']) == ('ema', 'raw')
    assert raw['num_examples'] == DIGITS_TEST_SIZE and raw['loss'] != first['loss']
    earlier = evaluation.evaluate_checkpoint(config, runs['ema'], step=2, mesh=_mesh(3))
    assert earlier['step'] == 2 and earlier['loss'] != first['loss']
    with open(os.path.join(runs['ema'], evaluation.RESULTS_FILE)) as f:
        logged = [json.loads(line) for line in f]
    assert first in logged and raw in logged and earlier in logged


@pytest.mark.parametrize('weights', ['raw', None])
def test_restores_only_inference_weights_replicated_on_the_new_mesh(runs, weights):
    config = _config(runs['data_dir'])
    model = config_lib.create_model(config)
    expected = mj.abstract_variables(model, (1, 16, 16, 3))
    mesh = _mesh(3)   # written by 8 devices
    manager = checkpoints.open_checkpoints(runs['ema'])
    live_before = len(jax.live_arrays())
    variables, chosen = checkpoints.load_variables(manager, 4, dict(expected), mesh, weights=weights)
    manager.close()
    leaves = jax.tree.leaves(variables)
    assert set(variables) == {'params', 'batch_stats'} and chosen == (weights or 'ema')
    # nothing but these arrays was materialised (no optimizer state, no rng, no copy of the other weights)
    assert len(jax.live_arrays()) - live_before == len(leaves)
    assert all(x.sharding.mesh == mesh and x.sharding.spec == jax.sharding.PartitionSpec() for x in leaves)


def test_metadata_records_whether_the_checkpoint_has_ema_weights(runs):
    assert checkpoints.CheckpointMetadata.from_config(_config(None, ema_decay=0.0)).has_ema is False
    assert checkpoints.CheckpointMetadata.from_config(_config(None, ema_decay=0.5)).has_ema is True
    read = {}
    for name, step in (('ema', 4), ('no_ema', 1), ('legacy_ema', 4)):
        manager = checkpoints.open_checkpoints(runs[name])
        read[name] = checkpoints.read_metadata(manager, step)
        manager.close()
    config = _config(runs['data_dir'])
    # what train_and_evaluate wrote with every checkpoint
    assert read['ema'] == checkpoints.CheckpointMetadata(
        has_ema=True, ema_decay=config.ema_decay, model=config.model.name, alpha=config.model.alpha,
        groups=None, dataset='digits', num_classes=10, image_size=16, normalization=config.normalization)
    assert read['no_ema'].has_ema is False and read['no_ema'].ema_decay == 0.0
    assert read['legacy_ema'] is None


def test_the_metadata_not_a_comparison_of_weights_says_whether_ema_is_there(runs, tmp_path):
    """The trained state (EMA differs from raw) saved with metadata saying "no EMA": its raw weights count."""
    config = _config(runs['data_dir'], batch_size=48)
    setup = train_lib.create_setup(config, num_train_examples=1437)
    template = checkpoints.abstract_like(train_lib.initial_state(setup, config, train_lib.create_mesh()))
    manager = checkpoints.create_manager(runs['ema'], read_only=True)
    trained = checkpoints.restore(manager, 4, template)
    manager.close()
    manager = checkpoints.create_manager(str(tmp_path))
    metadata = checkpoints.CheckpointMetadata.from_config(_config(runs['data_dir'], ema_decay=0.0))
    checkpoints.save(manager, 4, trained, metadata, force=True)
    manager.wait_until_finished()
    manager.close()
    recorded = evaluation.evaluate_checkpoint(config, str(tmp_path), mesh=_mesh(3))
    raw = evaluation.evaluate_checkpoint(config, runs['ema'], step=4, weights='raw', mesh=_mesh(3))
    assert recorded['weights'] == 'raw' and recorded['loss'] == raw['loss']
    _same_metrics(recorded, raw)


def test_checkpoints_without_metadata_still_evaluate(runs):
    config = _config(runs['data_dir'], batch_size=48)
    current = evaluation.evaluate_checkpoint(config, runs['ema'], step=4, mesh=_mesh(3))
    legacy = evaluation.evaluate_checkpoint(config, runs['legacy_ema'], mesh=_mesh(3))
    assert (legacy['step'], legacy['weights']) == (4, 'ema')   # told apart from the raw weights by comparison
    _same_metrics(current, legacy)
    assert legacy['loss'] == current['loss']
    raw = evaluation.evaluate_checkpoint(config, runs['legacy_no_ema'], mesh=_mesh(3))
    assert (raw['step'], raw['weights'], raw['num_examples']) == (1, 'raw', DIGITS_TEST_SIZE)
    with pytest.raises(ValueError, match='no EMA weights.*--weights=raw'):
        evaluation.evaluate_checkpoint(config, runs['legacy_no_ema'], weights='ema', mesh=_mesh(3))


def test_checkpoint_without_ema_evaluates_raw_weights_by_default(runs, monkeypatch, caplog):
    monkeypatch.setattr(evaluation, 'PROGRESS_EVERY_SECS', 0.0)   # a progress line after every batch
    caplog.set_level(logging.INFO, logger='absl')
    record = evaluation.evaluate_checkpoint(_config(runs['data_dir'], batch_size=48), runs['no_ema'],
                                            mesh=_mesh(3))
    assert (record['weights'], record['step'], record['num_examples']) == ('raw', 1, DIGITS_TEST_SIZE)
    assert any('eval: 1/8 batches' in message and 'ETA' in message for message in caplog.messages)


def test_shape_mismatch_names_the_parameter_and_the_config_field():
    saved = {'params': {'classifier': {'kernel': np.zeros((512, 10)), 'bias': np.zeros(10)},
                        'stem': {'kernel': np.zeros((3, 3, 3, 16))}}}
    config = _config(None)
    other_width = {'params': {'classifier': {'kernel': np.zeros((256, 10)), 'bias': np.zeros(10)},
                              'stem': {'kernel': np.zeros((3, 3, 3, 8))}}}
    with pytest.raises(ValueError, match=r'params/classifier/kernel has shape \(512, 10\) in the checkpoint '
                                         r'but \(256, 10\).*config\.model\.alpha probably differs'):
        checkpoints.check_shapes(saved, other_width, config, num_classes=10)
    other_classes = {'params': {'classifier': {'kernel': np.zeros((512, 100)), 'bias': np.zeros(100)},
                                'stem': {'kernel': np.zeros((3, 3, 3, 16))}}}
    with pytest.raises(ValueError, match=r'config\.dataset probably differs: the checkpoint classifies 10 '
                                         r'classes'):
        checkpoints.check_shapes(saved, other_classes, config, num_classes=100)
    other_layers = {'params': {'classifier': saved['params']['classifier'], 'conv0': {'kernel': np.zeros(3)}}}
    with pytest.raises(ValueError, match=r"'params/conv0/kernel', which the checkpoint lacks.*"
                                         r'config\.model\.name probably differs'):
        checkpoints.check_shapes(saved, other_layers, config, num_classes=10)
    checkpoints.check_shapes(saved, saved, config, num_classes=10)


# ----------------------------------------------------------------------------------------------
# eval.py in subprocesses: other device counts, output format, errors (exit 2, one line)
# ----------------------------------------------------------------------------------------------

def test_cli_on_one_device_at_another_resolution(runs, tmp_path):
    """Trained on 8 devices, evaluated by a 1-device process at rho 0.75 (24x24), batch 50; then again by a
    process that loads the eval step from the persistent compilation cache the first one wrote."""
    args = ['--config.rho=0.75', '--config.batch_size=50', f'--compilation_cache_dir={tmp_path / "xla"}']
    result = _eval_cli(args, devices=1, workdir=runs['ema'], data_dir=runs['data_dir'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'eval step compiled (persistent cache: {tmp_path / "xla"})' in result.stderr
    cached = _eval_cli(args, devices=1, workdir=runs['ema'], data_dir=runs['data_dir'])
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert 'eval step loaded from the persistent compilation cache' in cached.stderr
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (result, cached))
    assert {k: v for k, v in first.items() if k != 'images_per_sec'} == \
        {k: v for k, v in second.items() if k != 'images_per_sec'}
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    for key in ('top1', 'top5', 'loss', 'num_examples', 'step', 'weights', 'split', 'resolution', 'model',
                'alpha', 'images_per_sec'):
        assert key in record
    assert (record['num_examples'], record['num_devices'], record['resolution']) == (DIGITS_TEST_SIZE, 1, 24)
    assert (record['step'], record['weights'], record['model']) == (4, 'ema', 'cifar_mobilenet_v1')
    assert 'top-1' in result.stdout and '360 examples' in result.stdout
    with open(os.path.join(runs['ema'], evaluation.RESULTS_FILE)) as f:
        assert record in [json.loads(line) for line in f]


def _assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert 'Traceback' not in result.stderr and not result.stdout.strip()
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_cli_error_no_checkpoint(tmp_path):
    result = _eval_cli([], workdir=str(tmp_path / 'empty'))
    _assert_user_error(result, 'no checkpoint in', str(tmp_path / 'empty' / 'checkpoints'))


def test_cli_error_missing_step(runs):
    result = _eval_cli(['--step=3'], workdir=runs['ema'])
    _assert_user_error(result, 'no checkpoint for step 3', 'existing steps: 2, 4')


def test_cli_error_batch_size_not_divisible_by_devices(tmp_path):
    result = _eval_cli([], devices=3, workdir=str(tmp_path))  # digits' batch size 64 on 3 devices
    _assert_user_error(result, 'config.batch_size=64', '3 devices')


def test_cli_error_checkpoint_does_not_fit_config(runs):
    result = _eval_cli(['--config.model.alpha=0.25'], workdir=runs['ema'], data_dir=runs['data_dir'])
    _assert_user_error(result, 'does not fit the config', 'in the checkpoint but', 'config.model.alpha')


def test_cli_error_ema_requested_without_ema(runs):
    result = _eval_cli(['--weights=ema'], workdir=runs['no_ema'], data_dir=runs['data_dir'])
    _assert_user_error(result, '--weights=ema', 'no EMA weights', '--weights=raw')
