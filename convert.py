"""Converts a released weight file into a workdir that eval.py evaluates.

    python convert.py --source=keras --model=mobilenet_v2 --alpha=1.0 \\
        --weights=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 --workdir=/tmp/mnv2_keras
    python eval.py --config=/tmp/mnv2_keras/config.py --workdir=/tmp/mnv2_keras --config.data_dir=...
    python convert.py --source=torchvision --model=shufflenet_v2 --alpha=0.5 \\
        --weights=shufflenetv2_x0.5-f707e7126e.pth --workdir=/tmp/snv2_tv
    python convert.py --source=timm --model=mobilenet_v3_large --weights=DIR/model.safetensors --workdir=...

Writes <workdir>/checkpoints (step 0: the converted params and BatchNorm statistics), <workdir>/config.py
(the model built as the source trained it and the source's input normalization) and converted.json, and
prints the eval command as the last stdout line. A file that does not fit the model prints one line naming
the first layer that differs and exits with status 2.
"""
import json

from absl import flags

from mobilenets_jax import cli_utils

FLAGS = flags.FLAGS
flags.DEFINE_enum('source', 'keras', ['keras', 'torchvision', 'timm'],
                  'Where the weights come from: Keras applications .h5, torchvision .pth, timm model.safetensors.')
flags.DEFINE_string('model', None, 'Our architecture name (mobilenet_v1, mobilenet_v2, mobilenet_v3_large, ...).')
flags.DEFINE_float('alpha', 1.0, 'Width multiplier of the released file.')
flags.DEFINE_string('weights', None, 'The released weight file.')
flags.DEFINE_string('workdir', None, 'Directory to write (an empty or new one).')
flags.DEFINE_string('dataset', 'imagenet2012', 'Dataset the checkpoint is evaluated on (its class count must be '
                    'the file\'s).')
flags.mark_flags_as_required(['model', 'weights', 'workdir'])


def main(argv):
    cli_utils.start(argv, distributed=False)
    from mobilenets_jax.weights import to_workdir
    with cli_utils.one_line_errors():
        record = to_workdir.convert_to_workdir(FLAGS.weights, FLAGS.workdir, source=FLAGS.source,
                                               model=FLAGS.model, alpha=FLAGS.alpha, dataset=FLAGS.dataset)
    print(json.dumps(record), flush=True)
    print(record['eval_command'], flush=True)


if __name__ == '__main__':
    cli_utils.run(main)
