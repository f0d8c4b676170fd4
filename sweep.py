"""The α × ρ trade-off study: trains and evaluates every grid point, writes results.csv and figures.

    python sweep.py --config=configs/digits.py --alphas=0.25,0.5,1.0 --rhos=0.5,0.75,1.0 --workdir=/tmp/sweep
    python sweep.py --config=configs/cifar10.py --alphas=0.5,0.75,1 --rhos=0.5,0.75,1 --workdir=/tmp/c10sweep \
        --models=cifar_mobilenet_v1,cifar_mobilenet_v2

Rerunning the same command skips finished points and resumes an interrupted one from its checkpoint.
"""
from absl import flags, logging
from ml_collections import config_flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Base training configuration (configs/*.py).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-directory per grid point, results.csv, PNGs.')
flags.DEFINE_list('alphas', ['0.5', '0.75', '1.0'], 'Width multipliers α.')
flags.DEFINE_list('rhos', ['0.5', '0.75', '1.0'], 'Resolution multipliers ρ (image size = round(ρ × base)).')
flags.DEFINE_list('models', None, 'Models to overlay in one study (default: the config\'s model.name).')
cli_utils.define_compilation_cache_flag()
flags.mark_flags_as_required(['config', 'workdir'])


def _floats(values, flag):
    if not values:
        raise ValueError(f'--{flag} is empty: give at least one value, e.g. --{flag}=0.5,1.0')
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ValueError(f'--{flag}={",".join(values)}: expected comma-separated numbers') from None


def main(argv):
    cli_utils.start(argv, distributed=False, persistent_cache=True)   # single-process: no distributed flags
    from mobilenets_jax import sweep_lib
    with cli_utils.one_line_errors():
        result = sweep_lib.run_sweep(FLAGS.config, FLAGS.workdir, models=FLAGS.models or [FLAGS.config.model.name],
                                     alphas=_floats(FLAGS.alphas, 'alphas'), rhos=_floats(FLAGS.rhos, 'rhos'))
    logging.info('Sweep done: %d rows in %s/results.csv, %d trained now, %d failed.', len(result['rows']),
                 FLAGS.workdir, len(result['trained']), len(result['failed']))
    if result['failed']:
        raise SystemExit(1)


if __name__ == '__main__':
    cli_utils.run(main)
