"""Trains one configuration on every local device (and every host), resuming from its last checkpoint.

    python train.py --config=configs/digits.py --workdir=/tmp/digits
    python train.py --config=configs/mobilenet_v1_imagenet.py --workdir=gs://bucket/mnv1 --config.model.alpha=0.5

Multi-host (TPU VM pods, multi-node GPU): run the same command on every host; add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I where the platform does not
provide them (TPU VMs do).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and metrics.')
cli_utils.define_distributed_flags()
cli_utils.define_compilation_cache_flag()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    cli_utils.start(argv, persistent_cache=True)
    from mobilenets_jax import train_lib
    with cli_utils.user_errors_exit_2():
        result = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info('done: %s', result)


if __name__ == '__main__':
    app.run(main)
