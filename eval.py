"""Evaluates a training checkpoint exactly (every example once) on whatever devices are here.

    python eval.py --config=configs/digits.py --workdir=/tmp/digits
    python eval.py --config=configs/mobilenet_v1_imagenet.py --workdir=gs://bucket/mnv1 --step=100000 \\
        --weights=raw --config.rho=0.857 --config.batch_size=500

Prints a summary, then as the last stdout line one JSON object (top1, top5, loss, num_examples, step,
weights, split, resolution, model, alpha, images_per_sec, ...), also appended to
<workdir>/eval_results.jsonl. Errors (no checkpoint, missing step, a checkpoint that does not fit the
config, --weights=ema without EMA) print one line and exit with status 2.

Multi-host: run the same command on every host (see train.py for the distributed flags).
"""
import json

from absl import app, flags
from ml_collections import config_flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The training configuration file (configs/*.py); '
                                '--config.x=y overrides (rho, batch_size, data_dir, ...).', lock_config=True)
flags.DEFINE_string('workdir', None, 'The training run\'s directory (local or gs://); checkpoints are read '
                    'from <workdir>/checkpoints.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).', lower_bound=0)
flags.DEFINE_enum('weights', None, ['ema', 'raw'], 'Which weights to evaluate (default: EMA when the '
                  'checkpoint has EMA weights, else raw).')
flags.DEFINE_string('split', None, 'Dataset split, TFDS slicing allowed (default: config.eval_split or the '
                    'dataset\'s evaluation split).')
cli_utils.define_distributed_flags()
cli_utils.define_compilation_cache_flag()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    cli_utils.start(argv, persistent_cache=True)
    from mobilenets_jax import evaluation
    with cli_utils.user_errors_exit_2():
        record = evaluation.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, step=FLAGS.step,
                                                weights=FLAGS.weights, split=FLAGS.split)
    print(evaluation.summary(record))
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
    app.run(main)
