"""Data-parallel training: the setup a config describes, the state's placement, and the training loop.

The steps themselves (per device, pmap semantics) are in `mobilenets_jax.steps`; they run by
`jax.shard_map` inside `jax.jit` over a 1-D mesh of every device of every process. The train state is
replicated; each device sees `batch_size / num_devices` examples.

    state = {'step', 'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng'}
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenets_jax import checkpoints, compilation_cache, config_lib, errors, optim, steps, workdir_lock
from mobilenets_jax.data import datasets
from mobilenets_jax.models import init_variables

# The steps and the mesh, under the names evaluation.py, the tests and scripts use.
from mobilenets_jax.steps import BATCH_AXIS, create_mesh, make_eval_step  # noqa: F401


class NonFiniteLossError(errors.TrainingStopped):
    """The training loss became NaN or infinite."""


class DivergenceError(errors.TrainingStopped):
    """The training loss rose above `config.divergence_factor` times its running minimum."""


# Divergence is judged against max(running minimum, this floor): with the default factor of 1000 the
# threshold never falls below 10 nats, above the chance loss of a 20,000-class softmax (ln 20000 ≈ 9.9),
# so a healthy run, however close to zero its loss gets, cannot trip it.
DIVERGENCE_LOSS_FLOOR = 0.01


class DivergenceMonitor:
    """Tracks the running minimum of the training loss and names the first step that breaks the rules."""

    def __init__(self, factor: float):
        self.factor = factor
        self.minimum = float('inf')

    def check(self, losses, first_step: int) -> None:
        """`losses` of consecutive steps from `first_step`; raises NonFiniteLossError / DivergenceError."""
        for offset, loss in enumerate(losses):
            loss = float(loss)
            step = first_step + offset
            if not np.isfinite(loss):
                raise NonFiniteLossError(f'non-finite training loss ({loss}) at step {step}')
            if self.factor > 0 and loss > self.factor * max(self.minimum, DIVERGENCE_LOSS_FLOOR):
                raise DivergenceError(f'training loss {loss:.4g} at step {step} is above config.divergence_factor='
                                      f'{self.factor:g} times its running minimum {self.minimum:.4g}: diverging')
            self.minimum = min(self.minimum, loss)


# ----------------------------------------------------------------------------------------------
# Mesh and placement
# ----------------------------------------------------------------------------------------------

def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places identical host values on every device of the mesh (every process passes the same values)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Builds global arrays from this process's share of the batch (split over the 'batch' axis)."""
    sharding = NamedSharding(mesh, P(BATCH_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Model, optimizer, state
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything derived from the config that the steps and the loop need."""
    model: Any
    tx: optax.GradientTransformation
    learning_rate_fn: Callable
    image_size: int
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    num_train_examples: int


def create_setup(config: ml_collections.ConfigDict, num_train_examples: int) -> Setup:
    info = datasets.get_dataset_info(config.dataset)
    model = config_lib.create_model(config, bn_axis_name=BATCH_AXIS if config.sync_batch_stats else None)
    steps_per_epoch = max(1, num_train_examples // config.batch_size)
    learning_rate_fn, tx = optim.optimizer_for_run(config, steps_per_epoch)
    return Setup(model, tx, learning_rate_fn, config_lib.image_size(config), info.num_classes, steps_per_epoch,
                 optim.run_length(config, steps_per_epoch), num_train_examples)


def initial_state(setup: Setup, config: ml_collections.ConfigDict, mesh: Mesh, *,
                  pretrained: bool = False) -> dict:
    """A fresh, replicated train state (host-side init: nothing is compiled but the optimizer init); with
    `pretrained`, its variables come from `config.init_from` (a fresh classifier where `init_from` says)."""
    variables = init_variables(setup.model, config.seed, (1, setup.image_size, setup.image_size, 3))
    if pretrained:
        from mobilenets_jax.weights import init_from
        variables = init_from.initial_variables(variables, config)
    replicated = NamedSharding(mesh, P())
    opt_state = jax.jit(setup.tx.init, out_shardings=replicated)(replicate(variables['params'], mesh))
    rng = np.asarray(jax.random.key_data(jax.random.key(config.seed)))
    # Each host leaf is placed on its own (params and ema_params too): the step donates the state, and a
    # buffer may be donated only once.
    return {key: value if key == 'opt_state' else replicate(value, mesh)
            for key, value in steps.state_from(variables, opt_state, rng).items()}


# ----------------------------------------------------------------------------------------------
# The compiled steps
# ----------------------------------------------------------------------------------------------

def make_train_step(setup: Setup, config: ml_collections.ConfigDict, mesh: Mesh):
    """`steps.make_train_step` of this setup and config over `mesh`: ``(state, batch) -> (state, metrics)``."""
    return steps.make_train_step(setup.model, setup.tx, setup.num_classes, mesh,
                                 label_smoothing=float(config.label_smoothing), ema_decay=float(config.ema_decay))


def evaluate(eval_fn, variables: dict, dataset, mesh: Mesh, *, max_batches: int = -1,
             progress: Optional[Callable[[int], None]] = None) -> dict:
    """Runs `eval_fn` over a padded, masked dataset; returns top1/top5/loss means and the exact count."""
    totals = None
    for index, batch in enumerate(dataset):
        if 0 <= max_batches <= index:
            break
        sums = eval_fn(variables, shard_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if progress is not None:
            progress(index + 1)
    if totals is None:
        raise ValueError('the evaluation split is empty')
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {'top1': float(totals['top1']) / count, 'top5': float(totals['top5']) / count,
            'loss': float(totals['loss']) / count, 'num_examples': int(round(count))}


# ----------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------

class MetricWriter:
    """metrics.jsonl plus TensorBoard events; only process 0 writes.

    `records`: on process 0, the run's earlier records up to `resumed_step` (what metrics.jsonl keeps);
    elsewhere empty.
    """

    def __init__(self, workdir: str, resumed_step: int = 0):
        self.active = jax.process_index() == 0
        self._tb = None
        self.records: list[dict] = []
        if self.active:
            import tensorflow as tf
            tf.io.gfile.makedirs(workdir)
            self._jsonl_path = os.path.join(workdir, 'metrics.jsonl')
            self.records = self._drop_records_after(resumed_step)
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

    def _drop_records_after(self, step: int) -> list[dict]:
        """A resumed run repeats the steps after its checkpoint: their old records would be duplicates, and
        a line cut short by a kill is dropped. Returns the records kept."""
        import tensorflow as tf
        if not tf.io.gfile.exists(self._jsonl_path):
            return []
        with tf.io.gfile.GFile(self._jsonl_path) as f:
            lines = f.read().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:   # a cut line (or an empty one)
                continue
            if record.get('step', 0) <= step:
                kept.append((line, record))
        if len(kept) != len(lines):
            with tf.io.gfile.GFile(self._jsonl_path + '.tmp', 'w') as f:
                f.write(''.join(line + '\n' for line, _ in kept))
            tf.io.gfile.rename(self._jsonl_path + '.tmp', self._jsonl_path, overwrite=True)
        return [record for _, record in kept]

    def write(self, record: dict) -> None:
        if not self.active:
            return
        import tensorflow as tf
        with tf.io.gfile.GFile(self._jsonl_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        with self._tb.as_default(step=int(record['step'])):
            for key, value in record.items():
                if key not in ('step', 'split') and isinstance(value, (int, float)):
                    tf.summary.scalar(f'{record["split"]}/{key}', value)
        self._tb.flush()


@dataclasses.dataclass
class EarlyStopping:
    """The count behind `config.early_stopping_patience`: best top-1 of the periodic evaluations and how
    many came after it; `patience` 0 never stops."""
    patience: int
    best_top1: float = -1.0
    evals_without_gain: int = 0
    last_step: int = -1                   # the step of the last evaluation counted
    last_record: Optional[dict] = None    # its metrics record (None on other processes after a replay)

    def add(self, record: dict) -> bool:
        """Counts one periodic evaluation's record; True when the run should stop."""
        self.last_step, self.last_record = int(record['step']), record
        if record['top1'] > self.best_top1:
            self.best_top1, self.evals_without_gain = float(record['top1']), 0
        else:
            self.evals_without_gain += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return 0 < self.patience <= self.evals_without_gain

    @classmethod
    def replayed(cls, patience: int, records: list[dict], eval_split: str, eval_every: int) -> 'EarlyStopping':
        """The count an uninterrupted run had where this one resumes, from the periodic evaluations among
        the run's earlier `records` (`MetricWriter.records`: process 0's, up to the resumed step; train
        records, final evaluations off the period and repeats of a step are left out). Process 0's count is
        broadcast: every process must take the same decisions (to evaluate, to stop), which run collectives."""
        stopping = cls(patience)
        for record in records:
            step = record.get('step', 0)
            if (record.get('split') == eval_split and 'num_examples' in record   # an evaluation's record
                    and step % eval_every == 0 and step > stopping.last_step):
                stopping.add(record)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            best, count, last = multihost_utils.broadcast_one_to_all(
                (np.float32(stopping.best_top1), np.int32(stopping.evals_without_gain), np.int32(stopping.last_step)))
            if int(last) != stopping.last_step:
                stopping.last_record = None
            stopping.best_top1, stopping.evals_without_gain, stopping.last_step = float(best), int(count), int(last)
        return stopping


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


class _PreemptionFlag:
    """Turns SIGTERM into a flag the loop checks after each step (saving then exiting cleanly)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def _claim_workdir(workdir: str) -> workdir_lock.WorkdirLock:
    """Creates the workdir and takes its lock (process 0), before any data is read: an unwritable
    directory or a second writer is a one-line error, not a traceback after the dataset has loaded."""
    import tensorflow as tf
    writer = jax.process_index() == 0
    if writer:
        try:
            tf.io.gfile.makedirs(workdir)
        except (OSError, tf.errors.OpError) as error:
            raise errors.UserError(f'--workdir={workdir} cannot be created: {getattr(error, "strerror", None) or error}'
                                   ) from None
    lock = workdir_lock.WorkdirLock(workdir, enabled=writer)
    try:
        lock.acquire()
    except PermissionError as error:
        raise errors.UserError(f'--workdir={workdir} is not writable: {error.strerror}') from None
    return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` to completion in `workdir`, resuming from its newest readable checkpoint.

    Returns the final evaluation record (or the last record and `status='preempted'` after SIGTERM).
    Raises `errors.UserError` for what the user can fix (exit 2) and `errors.TrainingStopped` when the
    loss goes non-finite or diverges (exit 3), after waiting for the checkpoints being written.
    """
    mesh = create_mesh()
    config_lib.validate_config(config, mesh.devices.size)
    if config.get('init_from') and not checkpoints.has_steps(workdir):   # a resumed run no longer needs it
        from mobilenets_jax.weights import init_from
        init_from.check_exists(config.init_from)
    with _claim_workdir(workdir):
        return _train(config, workdir, mesh)


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict:
    from mobilenets_jax.data import input_pipeline

    num_devices = mesh.devices.size
    if config.dataset != 'imagenet2012':
        # digits builds offline, CIFAR downloads; ImageNet needs a manual download, and reading it
        # below raises the how-to message when it is missing.
        input_pipeline.ensure_dataset(config.dataset, data_dir=config.data_dir)
    info = datasets.get_dataset_info(config.dataset)
    eval_split = config.eval_split or info.eval_split
    train_split = config.get('train_split') or info.train_split
    num_train = input_pipeline.num_examples(config.dataset, train_split, data_dir=config.data_dir)
    setup = create_setup(config, num_train)
    logging.info('%s alpha=%s at %dx%d on %s: %d devices over %d processes, global batch %d, %d steps '
                 '(%d per epoch)', config.model.name, config.model.alpha, setup.image_size, setup.image_size,
                 config.dataset, num_devices, jax.process_count(), config.batch_size, setup.total_steps,
                 setup.steps_per_epoch)

    checkpoint_metadata = checkpoints.CheckpointMetadata.from_config(config)
    state = initial_state(setup, config, mesh)
    manager, restored, latest = checkpoints.restore_newest_readable(
        workdir, checkpoints.create_manager(workdir, keep=config.keep_checkpoints), checkpoints.abstract_like(state),
        config, setup.num_classes, keep=config.keep_checkpoints, move_damaged=jax.process_index() == 0)
    if restored is not None:
        state = restored
        logging.info('Resumed from the checkpoint at step %d in %s', latest, checkpoints.checkpoint_dir(workdir))
    elif config.get('init_from'):   # fine-tuning starts from it once; a resumed run continues its own weights
        # (the fresh state above was the restore target; this one replaces it with the pretrained weights)
        state = initial_state(setup, config, mesh, pretrained=True)
    start_step = int(jax.device_get(state['step']))
    checkpoint_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

    writer = MetricWriter(workdir, resumed_step=start_step)
    p_train_step = make_train_step(setup, config, mesh)
    p_eval_step = make_eval_step(setup.model, setup.num_classes, mesh)
    train_iter = iter(input_pipeline.create_train_dataset(
        config.dataset, global_batch_size=config.batch_size, image_size=setup.image_size,
        data_dir=config.data_dir, augment=config.augment, normalization=config.normalization, split=train_split,
        # the stream depends on the seed alone: a resumed run continues it where the checkpoint stopped
        seed=config.seed, start_step=start_step).as_numpy_iterator())
    eval_every = max(1, int(round(config.eval_every_epochs * setup.steps_per_epoch)))

    def run_eval(state, step):
        dataset = input_pipeline.create_eval_dataset(
            config.dataset, global_batch_size=config.batch_size, image_size=setup.image_size, split=eval_split,
            data_dir=config.data_dir, normalization=config.normalization)
        use_ema = config.ema_decay > 0
        variables = {'params': state['ema_params' if use_ema else 'params'],
                     'batch_stats': state['ema_batch_stats' if use_ema else 'batch_stats']}
        started = time.time()
        result = evaluate(p_eval_step, variables, dataset.as_numpy_iterator(), mesh,
                          max_batches=config.steps_per_eval)
        record = {'step': step, 'epoch': step / setup.steps_per_epoch, 'split': eval_split, **result,
                  'weights': 'ema' if use_ema else 'raw',
                  'images_per_sec': result['num_examples'] / max(time.time() - started, 1e-9)}
        writer.write(record)
        logging.info('eval step %d: top1 %.2f%% top5 %.2f%% loss %.4f on %d %s examples (%s weights)', step,
                     100 * result['top1'], 100 * result['top5'], result['loss'], result['num_examples'],
                     eval_split, record['weights'])
        return record

    def saving(action):
        """Runs a save (or the wait for one) turning a full disk into one line naming what is needed."""
        try:
            return action()
        except Exception as error:  # noqa: BLE001 — orbax wraps the OSError of a background write
            if errors.is_disk_full(error):
                raise errors.disk_full_error(checkpoints.checkpoint_dir(workdir), checkpoint_bytes) from None
            raise

    def save(step, force=False):
        saving(lambda: checkpoints.save(manager, step, state, checkpoint_metadata, force=force))

    def save_final(step):
        # The periodic save may already hold this step (e.g. SIGTERM right after it); saving twice is an error.
        if manager.latest_step() != step:
            save(step, force=True)
        saving(manager.wait_until_finished)

    def stopped(stop: errors.TrainingStopped) -> errors.TrainingStopped:
        """The stop's message, completed once the saves in flight are written: the last complete step."""
        saving(manager.wait_until_finished)
        complete = manager.latest_step()
        where = (f'the last complete checkpoint is step {complete} in {checkpoints.checkpoint_dir(workdir)}; '
                 f'rerunning resumes from it' if complete is not None else 'no checkpoint was written')
        return type(stop)(f'{stop}; training stopped ({where}). Lower config.learning_rate or set '
                          f'config.grad_clip_norm.')

    pending, last_record = [], None
    compile_note = {}  # how the run's first call got its step; goes into the run's first metrics record
    interval_start, input_wait = time.time(), 0.0
    run_start, run_start_step = time.time(), start_step
    status = 'finished'
    # A resumed run continues the early-stopping count of the evaluations before its checkpoint.
    stopping = EarlyStopping.replayed(config.early_stopping_patience, writer.records, eval_split, eval_every)
    monitor = DivergenceMonitor(config.divergence_factor)
    try:
        with _PreemptionFlag() as preemption:
            if (0 < start_step < setup.total_steps and start_step % eval_every == 0
                    and stopping.last_step != start_step and not stopping.should_stop):
                # preempted at an evaluation step: its checkpoint was saved before that evaluation ran
                stopping.add(run_eval(state, start_step))
            if stopping.should_stop and start_step < setup.total_steps:
                logging.info('Early-stopped at step %d (no top-1 gain in %d evaluations); nothing to train.',
                             start_step, stopping.evals_without_gain)
                status = 'early_stopped'
            step = start_step
            while step < setup.total_steps and status != 'early_stopped':
                wait_start = time.time()
                batch = shard_batch(next(train_iter), mesh)
                input_wait += time.time() - wait_start
                if step == start_step:  # the run's first call compiles the step, or loads it from the cache
                    with compilation_cache.CompileEvents() as events:
                        compile_start = time.time()
                        state, metrics = p_train_step(state, batch)
                        compile_seconds = time.time() - compile_start
                    # Process 0's view (it writes the metrics): with a per-host cache, other hosts may have compiled.
                    compile_note = {'compile_seconds': compile_seconds, 'compile_cache_hit': events.cache_hits > 0}
                    logging.info('Train step %s in %.1fs', compilation_cache.describe(events), compile_seconds)
                else:
                    state, metrics = p_train_step(state, batch)
                pending.append(metrics)
                step += 1

                last = step == setup.total_steps
                if step % config.log_every_steps == 0 or last or step % config.checkpoint_every_steps == 0:
                    records = jax.device_get(pending)
                    monitor.check([r['loss'] for r in records], step - len(records) + 1)
                    now = time.time()
                    elapsed = now - interval_start
                    steps_per_sec = len(records) / max(elapsed, 1e-9)
                    overall_rate = (step - run_start_step) / max(now - run_start, 1e-9)
                    last_record = {
                        'step': step, 'epoch': step / setup.steps_per_epoch, 'split': 'train',
                        'loss': float(np.mean([r['loss'] for r in records])),
                        'top1': float(np.mean([r['top1'] for r in records])),
                        'top5': float(np.mean([r['top5'] for r in records])),
                        'learning_rate': float(setup.learning_rate_fn(step - 1)),
                        'images_per_sec': steps_per_sec * config.batch_size,
                        'input_wait_fraction': input_wait / max(elapsed, 1e-9),
                        'eta_seconds': (setup.total_steps - step) / max(overall_rate, 1e-9),
                        **compile_note,
                    }
                    compile_note = {}
                    writer.write(last_record)
                    logging.info('step %d/%d (epoch %.2f) loss %.4f top1 %.2f%% lr %.5f | %.1f img/s %.2f steps/s | '
                                 'input wait %.0f%% | ETA %s', step, setup.total_steps, last_record['epoch'],
                                 last_record['loss'], 100 * last_record['top1'], last_record['learning_rate'],
                                 last_record['images_per_sec'], steps_per_sec, 100 * last_record['input_wait_fraction'],
                                 format_seconds(last_record['eta_seconds']))
                    pending, interval_start, input_wait = [], time.time(), 0.0

                if step % config.checkpoint_every_steps == 0 and not last:
                    save(step)
                if preemption.requested or manager.reached_preemption(step):
                    if pending:
                        monitor.check([r['loss'] for r in jax.device_get(pending)], step - len(pending) + 1)
                    save_final(step)
                    logging.warning('Preempted: saved the checkpoint at step %d; rerun the same command to resume.',
                                    step)
                    status = 'preempted'
                    break
                if step % eval_every == 0 and not last:
                    if stopping.add(run_eval(state, step)):
                        logging.info('Early stopping at step %d: no top-1 gain in %d evaluations (best %.2f%%).',
                                     step, stopping.evals_without_gain, 100 * stopping.best_top1)
                        status = 'early_stopped'
                        break

        if status in ('finished', 'early_stopped'):
            save_final(step)
            if status == 'early_stopped' and stopping.last_step == step:
                # these weights were just evaluated (or, on a rerun, before the restart): no second evaluation
                last_record = stopping.last_record or {'step': step}
            else:
                last_record = run_eval(state, step)
    except errors.TrainingStopped as stop:
        with contextlib.suppress(Exception):   # the stop's own line is what matters
            manager.close()
        raise stopped(stop) from None
    except BaseException:
        with contextlib.suppress(Exception):   # a failed background save re-raises here; keep the first error
            manager.close()
        raise
    manager.close()
    return dict(last_record or {'step': step}, status=status)
