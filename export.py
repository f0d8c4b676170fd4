"""Exports a training checkpoint to TF SavedModel, TFLite (float or full-integer int8) or ONNX, and
measures the exported file against JAX.

    python export.py --config=configs/digits.py --workdir=/tmp/digits --format=tflite_int8 \\
        --output=/tmp/digits_int8.tflite --calibration_steps=256
    python export.py --config=configs/mobilenet_v2_imagenet.py --workdir=gs://bucket/mnv2 --format=onnx \\
        --output=/tmp/mnv2.onnx --weights=ema

Input of the exported model: float32 NHWC images, normalized as the config trained (written into the
file); output: logits. Prints a table (file size, max |Δlogits| vs JAX on a fixed batch of eval images,
top-1 agreement with JAX and both top-1s over the eval split, latency per image with 1 thread and all
cores next to JAX's), then as the last stdout line the same as one JSON object. Errors (unknown format, a
missing export package, no checkpoint or step, a checkpoint that does not fit the config) print one line
and exit with status 2. Needs the export extra: pip install "mobilenets_jax[export]". See docs/export.md.
"""
import json

from absl import flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
cli_utils.define_run_flags('The training configuration file (configs/*.py); --config.x=y overrides.',
                           'The training run\'s directory; checkpoints are read from <workdir>/checkpoints.')
flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).', lower_bound=0)
flags.DEFINE_enum('weights', None, ['ema', 'raw'], 'Which weights to export (default: EMA when the '
                  'checkpoint has EMA weights, else raw).')
flags.DEFINE_enum('format', None, ['saved_model', 'tflite', 'tflite_int8', 'onnx'], 'Export format.')
flags.DEFINE_string('output', None, 'File to write (a directory for saved_model).')
flags.DEFINE_integer('calibration_steps', 256, 'tflite_int8: number of training images that calibrate the '
                     'int8 ranges.', lower_bound=1)
flags.DEFINE_bool('int8_io', False, 'tflite_int8: int8 input and output tensors (default: float32 ones).')
flags.DEFINE_string('split', None, 'Split to measure on (default: config.eval_split or the dataset\'s '
                    'evaluation split).')
flags.DEFINE_bool('measure_latency', True, 'Time one image through the exported file and through JAX.')
flags.mark_flags_as_required(['format', 'output'])


def main(argv):
    cli_utils.start(argv, persistent_cache=True, distributed=False)
    from mobilenets_jax.export import report
    with cli_utils.one_line_errors():
        record = report.export_checkpoint(
            FLAGS.config, FLAGS.workdir, format=FLAGS.format, output=FLAGS.output, step=FLAGS.step,
            weights=FLAGS.weights, calibration_steps=FLAGS.calibration_steps, int8_io=FLAGS.int8_io,
            split=FLAGS.split, measure_latency=FLAGS.measure_latency)
    print(report.summary(record))
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
    cli_utils.run(main)
