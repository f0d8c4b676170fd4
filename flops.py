"""Cost report: XLA's FLOPs of each compiled configuration next to the papers' mult-adds and parameters.

    python flops.py --config=configs/mobilenet_v1_imagenet.py [--config.model.alpha=0.5]
    python flops.py --model=mobilenet_v1 --alphas=1,0.75,0.5,0.25 --resolutions=224,192,160,128
    python flops.py --model=shufflenet_v1 --groups=3 --alphas=0.5,1 --resolutions=224
    python flops.py --all                      # every model over its published grid (72 configurations)
       [--format=table|json|csv|markdown] [--per_layer] [--measure [--batch_size=N]] [--num_classes=N]

Output fields and how each figure is derived: docs/cost_report.md; the library is `mobilenets_jax.cost`
(train_flops counts `mobilenets_jax.steps`' train step, the one training runs).
"""
import os
import sys
import time

# --config imports TensorFlow (for the dataset's class count and base size): keep its start-up chatter quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import flags, logging
from ml_collections import config_flags

from mobilenets_jax import cli_utils, errors

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
                  'How train_flops is counted: the compiled train step (default), the lowered one (before XLA\'s '
                  'optimizations, cheaper), or not at all (the default of --all). See the README.')
flags.DEFINE_integer('workers', None, 'Worker processes (default: one per CPU core for 4+ configurations).')


def _numbers(values, kind, name):
    out = []
    for value in values or []:
        try:
            out.append(kind(value))
        except ValueError:
            raise errors.UserError(f'--{name}={value!r} is not {"an integer" if kind is int else "a number"}') from None
    return out


def _configs_and_options():
    from mobilenets_jax import cost
    options = dict(measure=FLAGS.measure, batch_size=FLAGS.batch_size, per_layer=FLAGS.per_layer)
    if FLAGS.batch_size < 1:
        raise errors.UserError(f'--batch_size={FLAGS.batch_size}: must be >= 1')
    alphas = _numbers(FLAGS.alphas, float, 'alphas')
    resolutions = _numbers(FLAGS.resolutions, int, 'resolutions')
    groups = _numbers(FLAGS.groups, int, 'groups')
    chosen = [name for name, on in (('--config', FLAGS.config is not None), ('--model', FLAGS.model is not None),
                                    ('--all', FLAGS.all)) if on]
    if len(chosen) != 1:
        got = f' (got {", ".join(chosen)})' if chosen else ''
        raise errors.UserError(f'give exactly one of --config, --model, --all{got}')
    if FLAGS.all:
        if alphas or resolutions or groups:
            raise errors.UserError('--all takes no --alphas/--resolutions/--groups (it uses the published grids)')
        configs = cost.all_configs(FLAGS.num_classes, include_cifar=FLAGS.include_cifar)
        # Even uncompiled, tracing 63 training steps takes far longer than the inference programs, so --all
        # counts inference only unless asked (docs/cost_report.md).
        options['train_cost'] = FLAGS.train_cost or 'none'
        if options['train_cost'] == 'none':
            print('note: --all leaves train_flops null; add --train_cost=lowered (about 3x slower) or '
                  '--train_cost=compiled (about 10x slower) to count the training steps', file=sys.stderr)
        return configs, options
    options['train_cost'] = FLAGS.train_cost or 'compiled'
    if FLAGS.model is not None:
        return cost.grid(FLAGS.model, alphas, resolutions, groups, FLAGS.num_classes), options
    if alphas or resolutions or groups:
        raise errors.UserError('with --config, change the configuration with --config.model.alpha=..., --config.rho=...')
    config, config_options = cost.from_training_config(FLAGS.config, FLAGS.num_classes)
    options.update(config_options)
    return [config], options


def main(argv):
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # a report, not a log: keep INFO chatter off stderr
    cli_utils.start(argv, distributed=False)
    from mobilenets_jax import cost
    with cli_utils.one_line_errors():
        configs, options = _configs_and_options()
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if len(configs) > 1 else None
    start = time.perf_counter()
    records = cost.run_configs(configs, workers=FLAGS.workers, progress=progress, **options)
    if len(configs) > 1:
        print(f'{len(configs)} configurations in {time.perf_counter() - start:.1f} s', file=sys.stderr)
    print(cost.format_records(records, FLAGS.format))
    return 0


if __name__ == '__main__':
    cli_utils.run(main)
