"""Fault injection: what a preempted, crashed, misused or diverging run does, through the real CLIs.

Each probe runs train.py / eval.py / sweep.py as a user would and asserts the outcome (exit status, what is
on disk) and the one line the user sees. Processes are synchronised on their own log lines, never on sleeps.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from mobilenets_jax import errors, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _env(cache_dir=None):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', JAX_NUM_CPU_DEVICES='1')
    if cache_dir:
        env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
        env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    return env


def _cli(script, workdir, data_dir, *overrides):
    return [sys.executable, os.path.join(REPO, script), '--config=' + os.path.join(REPO, 'configs', 'digits.py'),
            f'--workdir={workdir}', f'--config.data_dir={data_dir}', '--config.model.name=cifar_mobilenet_v2',
            '--config.model.alpha=0.25', '--config.batch_size=16', '--config.log_every_steps=1',
            '--config.eval_every_epochs=1000', *overrides]


def _run(command, cache_dir=None):
    done = subprocess.run(command, env=_env(cache_dir), cwd=REPO, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def _error_line(output):
    lines = [line for line in output.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
    return lines[0]


class _Run:
    """A train.py process whose log is read line by line, to act at a known point of the run."""

    def __init__(self, command, cache_dir=None):
        self.proc = subprocess.Popen(command, env=_env(cache_dir), cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []

    def wait_for(self, fragment):
        for line in self.proc.stdout:
            self.lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(f'the run ended before logging {fragment!r}:\n' + ''.join(self.lines[-40:]))

    def finish(self):
        rest, _ = self.proc.communicate(timeout=600)
        self.lines.append(rest)
        return self.proc.returncode, ''.join(self.lines)


def _steps(workdir):
    directory = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _final_eval(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    last = records[-1]
    assert last['split'] == 'test'
    return {k: last[k] for k in ('step', 'loss', 'top1', 'top5', 'num_examples')}


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    """One persistent compilation cache for this module's runs: the same program compiles once."""
    return str(tmp_path_factory.mktemp('xla_cache'))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir, cache_dir):
    """A finished 4-step run with checkpoints at steps 2 and 4; tests work on copies of it."""
    workdir = str(tmp_path_factory.mktemp('trained') / 'work')
    status, output = _run(_cli('train.py', workdir, data_dir, '--config.num_train_steps=4',
                               '--config.checkpoint_every_steps=2'), cache_dir)
    assert status == 0 and _steps(workdir) == [2, 4], output[-3000:]
    return workdir


def _copy(trained, tmp_path):
    workdir = str(tmp_path / 'work')
    shutil.copytree(trained, workdir)
    return workdir


# ---------------------------------------------------------------------------------------------------
# Resumption is exact
# ---------------------------------------------------------------------------------------------------

def test_sigterm_and_resume_equals_an_uninterrupted_run(tmp_path, data_dir, cache_dir):
    steps = '--config.num_train_steps=14'
    whole = str(tmp_path / 'whole')
    status, output = _run(_cli('train.py', whole, data_dir, steps, '--config.checkpoint_every_steps=1000'),
                          cache_dir)
    assert status == 0, output[-3000:]

    parts = str(tmp_path / 'parts')
    run = _Run(_cli('train.py', parts, data_dir, steps, '--config.checkpoint_every_steps=1000'), cache_dir)
    run.wait_for('step 5/14')
    run.proc.send_signal(signal.SIGTERM)    # lands after some step >= 5, not a checkpoint step
    status, output = run.finish()
    assert status == 0, output[-3000:]
    stopped_at = int(output.split('Preempted: saved the checkpoint at step ')[1].split(';')[0])
    assert 5 <= stopped_at < 14 and _steps(parts) == [stopped_at]
    status, output = _run(_cli('train.py', parts, data_dir, steps, '--config.checkpoint_every_steps=1000'),
                          cache_dir)
    assert status == 0, output[-3000:]
    assert f'Resumed from the checkpoint at step {stopped_at}' in output
    assert _final_eval(parts) == _final_eval(whole)
    # The log holds each step once, in order, although steps after the checkpoint ran twice in between.
    with open(os.path.join(parts, 'metrics.jsonl')) as f:
        train_steps = [json.loads(line)['step'] for line in f if '"train"' in line]
    assert train_steps == list(range(1, 15))


# ---------------------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------------------

def _damage_data(step_dir):
    """Truncates every data file of the step (one truncated file may hold only optimizer state, which
    eval.py, reading just the weights, rightly does not need)."""
    data = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
    for name in os.listdir(data):
        with open(os.path.join(data, name), 'r+b') as f:
            f.truncate(100)


def _damage_metadata(step_dir):
    os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _truncate_metadata(step_dir):
    """A write cut short: the JSON that remains does not parse (json raises a ValueError, which must still
    count as damage, not as a config that does not fit)."""
    with open(os.path.join(step_dir, 'state', '_METADATA'), 'r+b') as f:
        f.truncate(10)


@pytest.mark.parametrize('damage', [_damage_data, _damage_metadata, _truncate_metadata])
def test_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path, data_dir, cache_dir, trained,
                                                                           damage):
    workdir = _copy(trained, tmp_path)
    damage(os.path.join(workdir, 'checkpoints', '4'))

    # eval.py reads, never moves: it evaluates the newest readable step and says which one it skipped.
    status, output = _run(_cli('eval.py', workdir, data_dir), cache_dir)
    assert status == 0, output[-3000:]
    record = [line for line in output.splitlines() if line.startswith('{')][-1]
    assert json.loads(record)['step'] == 2
    assert any('step 4 is damaged' in line for line in output.splitlines())
    assert _steps(workdir) == [2, 4]

    status, output = _run(_cli('train.py', workdir, data_dir, '--config.num_train_steps=6',
                               '--config.checkpoint_every_steps=2'), cache_dir)
    assert status == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if 'is damaged' in line]
    assert len(warnings) == 1 and 'step 4' in warnings[0] and '4.damaged' in warnings[0], warnings
    assert 'Resumed from the checkpoint at step 2' in output
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4.damaged'))   # kept, not deleted
    assert _steps(workdir)[-1] == 6


def test_sigkill_resumes_from_the_last_complete_checkpoint_and_loads_its_compiled_step(tmp_path, data_dir):
    """SIGKILL mid-run (a save may be half written): the restart resumes from the last complete step and
    loads its train step from the persistent compilation cache the first run wrote."""
    workdir, cache = str(tmp_path / 'work'), str(tmp_path / 'xla_cache')
    command = _cli('train.py', workdir, data_dir, '--config.num_train_steps=100000', '--config.checkpoint_every_steps=2',
                   f'--compilation_cache_dir={cache}')
    run = _Run(command)
    assert f'(persistent cache: {cache})' in run.wait_for('Train step compiled')
    run.wait_for('step 5/')     # saves of steps 2 and 4 were started; the one of 4 may still be writing
    run.proc.kill()
    run.finish()
    resumable = _steps(workdir)[-1]
    assert resumable in (2, 4)
    run = _Run(command)
    assert f'step {resumable} in' in run.wait_for('Resumed from the checkpoint at step')
    assert 'Train step loaded from the persistent compilation cache' in run.wait_for('Train step ')
    run.wait_for(f'step {resumable + 2}/')
    run.proc.send_signal(signal.SIGTERM)
    status, output = run.finish()
    assert status == 0, output[-3000:]
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        firsts = [json.loads(line) for line in f if 'compile_seconds' in line]
    assert [r['compile_cache_hit'] for r in firsts] == [False, True]
    assert [r['step'] for r in firsts] == [1, resumable + 1]


# ---------------------------------------------------------------------------------------------------
# One writer per workdir
# ---------------------------------------------------------------------------------------------------

def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, data_dir, cache_dir):
    workdir = tmp_path / 'work'
    workdir.mkdir()
    # A live holder: a process on this host that waits for its stdin to close.
    holder = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE)
    try:
        (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(
            {'host': os.uname().nodename, 'pid': holder.pid, 'started': 0}))
        status, output = _run(_cli('train.py', str(workdir), data_dir, '--config.num_train_steps=2'), cache_dir)
        assert status == errors.EXIT_USER_ERROR
        line = _error_line(output)
        assert f'pid {holder.pid}' in line and 'one training run per workdir' in line
        assert not (workdir / 'metrics.jsonl').exists()
    finally:
        holder.communicate(input=b'')
    # The holder is gone: its lock is stale and the next run takes it over, then releases it.
    status, output = _run(_cli('train.py', str(workdir), data_dir, '--config.num_train_steps=2'), cache_dir)
    assert status == 0, output[-3000:]
    assert 'Taking over the workdir lock' in output and f'pid {holder.pid}' in output
    assert not (workdir / workdir_lock.LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------------
# Training that goes wrong stops loudly, with its checkpoints written
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('overrides, what', [
    (['--config.optimizer=sgd', '--config.learning_rate=1e6', '--config.divergence_factor=0'],
     'non-finite training loss'),
    (['--config.learning_rate=1e6'], 'above config.divergence_factor=1000'),
])
def test_non_finite_or_diverging_loss_stops_with_status_3(tmp_path, data_dir, cache_dir, overrides, what):
    workdir = str(tmp_path / 'work')
    status, output = _run(_cli('train.py', workdir, data_dir, '--config.num_train_steps=40',
                               '--config.checkpoint_every_steps=2', *overrides), cache_dir)
    assert status == errors.EXIT_TRAINING_STOPPED, output[-3000:]
    line = _error_line(output)
    assert what in line
    complete = _steps(workdir)
    assert complete, output[-3000:]
    assert f'the last complete checkpoint is step {complete[-1]}' in line
    assert not [d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in d]
    assert 'cannot schedule new futures' not in output


def test_healthy_run_never_trips_the_divergence_check():
    from mobilenets_jax import train_lib
    monitor = train_lib.DivergenceMonitor(1000.0)
    # A run that overfits to a near-zero loss and then sees a bad batch at chance level (ln 10).
    monitor.check(list(np.geomspace(2.3, 1e-6, 200)) + [np.log(10.0)], first_step=1)
    with pytest.raises(train_lib.DivergenceError, match='at step 5'):
        train_lib.DivergenceMonitor(1000.0).check([2.3, 2.0, 1.5, 1.0, 1e4], first_step=1)


# ---------------------------------------------------------------------------------------------------
# Mistakes: one line, exit status 2, before any data is read
# ---------------------------------------------------------------------------------------------------

def test_resuming_another_width_names_the_parameter_and_the_field(tmp_path, data_dir, cache_dir, trained):
    workdir = _copy(trained, tmp_path)
    status, output = _run(_cli('train.py', workdir, data_dir, '--config.num_train_steps=6',
                               '--config.model.alpha=0.5'), cache_dir)
    assert status == errors.EXIT_USER_ERROR
    line = _error_line(output)
    assert 'has shape' in line and 'config.model.alpha probably differs' in line and 'strict' not in line


@pytest.mark.parametrize('script, flags_, message', [
    ('train.py', ['--config=configs/nope.py', '--workdir=W'], '--config=configs/nope.py: no such file'),
    ('eval.py', ['--config=configs/nope.py', '--workdir=W'], '--config=configs/nope.py: no such file'),
    ('sweep.py', ['--config=configs/nope.py', '--workdir=W'], '--config=configs/nope.py: no such file'),
    ('train.py', ['--config=configs/digits.py', '--workdir=W', '--config.batch_size=abc'],
     "--config.batch_size=abc: invalid literal for int()"),
    ('sweep.py', ['--config=configs/digits.py', '--workdir=W', '--alphas='], '--alphas is empty'),
    ('train.py', ['--config=configs/digits.py', '--workdir=/proc/1/no_such_dir'],
     '--workdir=/proc/1/no_such_dir cannot be created'),
])
def test_plain_mistakes_are_one_line_and_status_2(tmp_path, script, flags_, message):
    flags_ = [f.replace('=W', f'={tmp_path / "w"}') for f in flags_]
    status, output = _run([sys.executable, os.path.join(REPO, script), *flags_])
    assert status == errors.EXIT_USER_ERROR, output[-3000:]
    assert message in _error_line(output)
    assert not (tmp_path / 'tfds').exists()


def test_disk_full_is_recognised_through_wrapping():
    try:
        with open('/dev/full', 'w') as f:
            f.write('x' * 10_000)
            f.flush()
    except OSError as error:
        raised = error
    wrapped = RuntimeError('background save failed')
    wrapped.__cause__ = raised
    assert raised.errno == errno.ENOSPC and errors.is_disk_full(wrapped)
    assert not errors.is_disk_full(RuntimeError('something else'))
    message = str(errors.disk_full_error('/tmp', 123_456))
    assert '/tmp' in message and '123,456 bytes' in message and 'bytes free' in message


def test_disk_full_during_a_save_is_one_line(tmp_path, data_dir, cache_dir):
    small = tmp_path / 'small'
    small.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}')
    try:
        # α = 1: a checkpoint (weights, Adam's two moments, the EMA) of about 1 MB does not fit in 600 kB.
        status, output = _run(_cli('train.py', str(small / 'work'), data_dir, '--config.num_train_steps=4',
                                   '--config.checkpoint_every_steps=2', '--config.model.alpha=1.0'), cache_dir)
    finally:
        subprocess.run(['umount', str(small)], check=True)
    assert status == errors.EXIT_USER_ERROR, output[-3000:]
    assert 'Traceback' not in output and 'Event loop is closed' not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and output.strip().endswith(lines[0])
    assert 'disk full' in lines[0] and str(small / 'work') in lines[0] and 'bytes' in lines[0]
