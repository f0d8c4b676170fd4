"""Cost report: XLA's FLOPs of each compiled configuration next to the papers' mult-adds and parameters.

    python flops.py --config=configs/mobilenet_v1_imagenet.py [--config.model.alpha=0.5]
    python flops.py --model=mobilenet_v1 --alphas=1,0.75,0.5,0.25 --resolutions=224,192,160,128
    python flops.py --model=shufflenet_v1 --groups=3 --alphas=0.5,1 --resolutions=224
    python flops.py --all                      # every model over its published grid (63 configurations)
       [--format=table|json|csv|markdown] [--per_layer] [--measure [--batch_size=N]] [--num_classes=N]

Output fields and how each figure is derived: README.md, "Cost report (flops.py)"; the library is
`mobilenets_jax.cost`.
"""
import os
import sys

# --config imports TensorFlow (for the dataset's class count and base size): keep its start-up chatter quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A training configuration (configs/*.py) to report on.',
                                lock_config=False)
flags.DEFINE_string('model', None, 'Model name (see mobilenets_jax.list_models()).')
flags.DEFINE_list('alphas', None, 'Width multipliers (default: the model\'s published ones).')
flags.DEFINE_list('resolutions', None, 'Input sizes (default: the model\'s published ones).')
flags.DEFINE_list('groups', None, 'ShuffleNet V1 group counts (default: 3).')
flags.DEFINE_bool('all', False, 'Every model over its published alpha x resolution grid.')
flags.DEFINE_bool('include_cifar', False, 'With --all: add the CIFAR study\'s two 6x6 grids.')
flags.DEFINE_enum('format', 'table', ['table', 'json', 'csv', 'markdown'], 'Output format.')
flags.DEFINE_bool('per_layer', False, 'One row per conv/dense layer (name, shape, params, MACs, flops, bytes).')
flags.DEFINE_bool('measure', False, 'Also measure inference and training images/second on this device.')
flags.DEFINE_integer('batch_size', 32, 'Batch of the counted training step and of --measure.')
flags.DEFINE_integer('num_classes', None, 'Classifier size (default: the model\'s, or the config\'s dataset).')
flags.DEFINE_enum('train_cost', None, ['compiled', 'lowered', 'none'],
                  'How train_flops is counted (default: compiled; lowered with --all, see the README).')
flags.DEFINE_integer('workers', None, 'Worker processes (default: one per CPU core for 4+ configurations).')


class _UserError(ValueError):
    pass


def _numbers(values, kind, name):
    out = []
    for value in values or []:
        try:
            out.append(kind(value))
        except ValueError:
            raise _UserError(f'--{name}={value!r} is not {"an integer" if kind is int else "a number"}') from None
    return out


def _configs_and_options():
    from mobilenets_jax import cost
    options = dict(measure=FLAGS.measure, batch_size=FLAGS.batch_size, per_layer=FLAGS.per_layer)
    if FLAGS.batch_size < 1:
        raise _UserError(f'--batch_size={FLAGS.batch_size}: must be >= 1')
    alphas = _numbers(FLAGS.alphas, float, 'alphas')
    resolutions = _numbers(FLAGS.resolutions, int, 'resolutions')
    groups = _numbers(FLAGS.groups, int, 'groups')
    chosen = [name for name, on in (('--config', FLAGS.config is not None), ('--model', FLAGS.model is not None),
                                    ('--all', FLAGS.all)) if on]
    if FLAGS['config'].present:
        filename = config_flags.get_config_filename(FLAGS['config'])
        if not os.path.isfile(filename):
            raise _UserError(f'--config={filename}: no such file')
        try:
            FLAGS.config.get('model')   # config_flags reports a broken file only when the config is read
        except Exception as error:  # noqa: BLE001 — whatever the config file raised
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise _UserError(f'--config={filename}: {lines[-1] if lines else type(error).__name__}') from None
    if len(chosen) != 1:
        raise _UserError('give exactly one of --config, --model, --all' + (f' (got {", ".join(chosen)})' if chosen else ''))
    if FLAGS.all:
        if alphas or resolutions or groups:
            raise _UserError('--all takes no --alphas/--resolutions/--groups (it uses the published grids)')
        configs = cost.all_configs(FLAGS.num_classes, include_cifar=FLAGS.include_cifar)
        options['train_cost'] = FLAGS.train_cost or 'lowered'
        return configs, options
    options['train_cost'] = FLAGS.train_cost or 'compiled'
    if FLAGS.model is not None:
        return cost.grid(FLAGS.model, alphas, resolutions, groups, FLAGS.num_classes), options
    return _config_file_configs(FLAGS.config, alphas, resolutions, groups, options)


def _config_file_configs(config, alphas, resolutions, groups, options):
    """One configuration from a training config: its model, alpha, groups, rho x base size, optimizer."""
    from mobilenets_jax import config_lib, cost, optim
    from mobilenets_jax.data import input_pipeline
    if alphas or resolutions or groups:
        raise _UserError('with --config, change the configuration with --config.model.alpha=..., --config.rho=...')
    try:
        info = input_pipeline.get_dataset_info(config.dataset)
    except (KeyError, ValueError) as error:
        raise _UserError(f'config.dataset={config.dataset!r}: {error}') from None
    num_classes = FLAGS.num_classes or info.num_classes
    config_lib.create_model(config, num_classes=num_classes)   # checks every model field and the image size
    kwargs = config_lib.model_kwargs(config, num_classes)
    name_fields = {k: kwargs.pop(k) for k in ('num_classes', 'alpha', 'groups')}
    configs = [cost.make_config(config.model.name, name_fields['alpha'], name_fields['groups'],
                                config_lib.image_size(config), num_classes)]
    learning_rate_fn = optim.learning_rate_schedule(
        base_learning_rate=config.learning_rate, steps_per_epoch=1000, num_epochs=config.num_epochs,
        warmup_epochs=config.warmup_epochs, schedule=config.schedule, decay_rate=config.lr_decay_rate,
        decay_epochs=config.lr_decay_epochs)
    options.update(
        model_kwargs={k: v for k, v in kwargs.items() if v is not None},
        label_smoothing=float(config.label_smoothing),
        optimizer=optim.create_optimizer(
            learning_rate_fn=learning_rate_fn, weight_decay=config.weight_decay, optimizer=config.optimizer,
            rmsprop_decay=config.rmsprop_decay, momentum=config.momentum, epsilon=config.epsilon,
            grad_clip_norm=config.grad_clip_norm or None))
    return configs, options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # a report, not a log: keep INFO chatter off stderr
    from mobilenets_jax import cost
    try:
        configs, options = _configs_and_options()
    except ValueError as error:   # bad user input: one line, exit status 2, no traceback
        print(f'error: {error}', file=sys.stderr)
        return 2
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if len(configs) > 1 else None
    import time
    start = time.perf_counter()
    records = cost.run_configs(configs, workers=FLAGS.workers, progress=progress, **options)
    if len(configs) > 1:
        print(f'{len(configs)} configurations in {time.perf_counter() - start:.1f} s', file=sys.stderr)
    print(cost.format_records(records, FLAGS.format))
    return 0


def _parse_flags(argv):
    """absl's parser, but a bad flag value (e.g. a missing --config file) is one line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        text = str(error)
        if 'Traceback' in text:   # a config file that raised: keep the flag and the exception's last line
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            text = f'{text.split("Traceback")[0].strip()} {lines[-1]}'
        message = ' '.join(text.split())
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    app.run(main, flags_parser=_parse_flags)
