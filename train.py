"""Trains one configuration on every local device (and every host), resuming from its last checkpoint.

    python train.py --config=configs/digits.py --workdir=/tmp/digits
    python train.py --config=configs/mobilenet_v1_imagenet.py --workdir=gs://bucket/mnv1 --config.model.alpha=0.5

Multi-host (TPU VM pods, multi-node GPU): run the same command on every host; add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I where the platform does not
provide them (TPU VMs do).

Exit status: 0 done (or preempted by SIGTERM, checkpoint saved); 2 a mistake to fix (one line on stderr:
bad flag or config, missing config file, workdir in use or not writable, disk full, a checkpoint that does
not fit the config); 3 training stopped itself (non-finite or diverging loss; the message names the last
complete checkpoint).
"""
from absl import flags, logging

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
cli_utils.define_run_flags('Training configuration file (configs/*.py).',
                           'Directory (local or gs://) for checkpoints and metrics.')


def main(argv):
    cli_utils.start(argv, persistent_cache=True)
    from mobilenets_jax import train_lib
    with cli_utils.one_line_errors():
        result = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info('done: %s', result)


if __name__ == '__main__':
    cli_utils.run(main)
