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

from absl import flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
cli_utils.define_run_flags('The training configuration file (configs/*.py); --config.x=y overrides (rho, '
                           'batch_size, data_dir, ...).',
                           'The training run\'s directory (local or gs://); checkpoints are read from '
                           '<workdir>/checkpoints.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).', lower_bound=0)
flags.DEFINE_enum('weights', None, ['ema', 'raw'], 'Which weights to evaluate (default: EMA when the '
                  'checkpoint has EMA weights, else raw).')
flags.DEFINE_string('split', None, 'Dataset split, TFDS slicing allowed (default: config.eval_split or the '
                    'dataset\'s evaluation split).')


def main(argv):
    cli_utils.start(argv, persistent_cache=True)
    from mobilenets_jax import evaluation
    with cli_utils.one_line_errors():
        record = evaluation.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, step=FLAGS.step,
                                                weights=FLAGS.weights, split=FLAGS.split)
    print(evaluation.summary(record))
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
    cli_utils.run(main)
