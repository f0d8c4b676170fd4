"""int8 TFLite against JAX for every architecture, on models trained on the digits dataset.

    python benchmarks/export_int8_agreement.py [--models=...] [--steps=300] [--workdir=/tmp/int8_agreement]

Each architecture is trained briefly on digits (configs/digits.py with that model at α 0.5, 32×32, `--steps`
steps), then exported by `export.py`'s library call (`mobilenets_jax.export.report.export_checkpoint`) to
full-integer TFLite calibrated on 256 training images, and scored on the whole digits test split: top-1
agreement of the int8 file with JAX, and both top-1s. A random-weight model would not do: its logits barely
depend on the image, so any agreement figure is trivial. Prints a Markdown table and one JSON line per model;
workdirs are kept in --workdir, so a rerun only re-exports.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list('models', None, 'Architectures (default: every one in mj.list_models()).')
flags.DEFINE_integer('steps', 300, 'Training steps per architecture (batch 64).')
flags.DEFINE_string('workdir', '/tmp/int8_agreement', 'Where the training runs and exported files go.')


def digits_config(name: str, steps: int):
    from configs import digits
    config = digits.get_config()
    config.model.name = name
    config.model.alpha = 0.5
    config.rho = 1.0                       # 32x32: every architecture's minimum input
    config.num_train_steps = steps
    config.eval_every_epochs = 1000.0      # one evaluation, at the end
    config.checkpoint_every_steps = steps
    config.log_every_steps = steps
    return config


def main(argv):
    del argv
    import mobilenets_jax as mj
    from mobilenets_jax import train_lib
    from mobilenets_jax.export import report
    print('| model | steps | JAX top-1 | int8 top-1 | top-1 agreement | max \\|Δ\\| / max \\|logit\\| | int8 MB |')
    print('|---|---|---|---|---|---|---|')
    for name in FLAGS.models or mj.list_models():
        config = digits_config(name, FLAGS.steps)
        workdir = os.path.join(FLAGS.workdir, name)
        train_lib.train_and_evaluate(config, workdir)
        try:
            record = report.export_checkpoint(config, workdir, format='tflite_int8',
                                              output=os.path.join(workdir, 'int8.tflite'), measure_latency=False)
        except ValueError as error:   # an architecture the int8 route cannot take
            print(f'| {name} | {FLAGS.steps} | not exported: {error} |||||', flush=True)
            continue
        print(f'| {name} | {record["step"]} | {100 * record["jax_top1"]:.2f}% | {100 * record["exported_top1"]:.2f}% '
              f'| {100 * record["top1_agreement"]:.2f}% | {record["relative_logit_diff"]:.3f} '
              f'| {record["file_bytes"] / 1e6:.2f} |', flush=True)
        print(json.dumps(record), flush=True)


if __name__ == '__main__':
    app.run(main)
