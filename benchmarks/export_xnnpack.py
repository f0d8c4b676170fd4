"""How much of each TFLite file LiteRT's XNNPACK delegate takes, and what it buys.

    python benchmarks/export_xnnpack.py --models=mobilenet_v2,mobilenet_v3_small --image_size=224

Exports each model (random weights; int8 calibrated on 32 random images: speed only) to float and int8
TFLite and prints, per file: the XNNPACK partitions (one DELEGATE node each in
`Interpreter._get_ops_details()` after `allocate_tensors`; 1 = the whole graph is delegated), the file's
HARD_SWISH ops, and the latency per image on 1 thread with the delegate and without it
(`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`). A Markdown table and one JSON line (with every op
count) per file.
"""
import collections
import json
import os
import sys
import tempfile

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['mobilenet_v2', 'mobilenet_v3_small'], 'Architectures to export.')
flags.DEFINE_integer('image_size', 224, 'Input resolution.')


def _interpreter(path: str, delegate: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=kind)
    interpreter.allocate_tensors()
    return interpreter


def _latency_ms(interpreter, image) -> float:
    from mobilenets_jax.export import runtime
    source = interpreter.get_input_details()[0]

    def run(x):
        interpreter.set_tensor(source['index'], x)
        interpreter.invoke()
    return runtime.latency_ms(run, image)


def main(argv):
    del argv
    import mobilenets_jax as mj
    from mobilenets_jax.export import formats
    size = FLAGS.image_size
    rng = np.random.RandomState(0)
    image = rng.uniform(-1, 1, (size, size, 3)).astype(np.float32)
    calibration = rng.uniform(-1, 1, (32, size, size, 3)).astype(np.float32)
    print('| model | format | XNNPACK partitions | HARD_SWISH ops | ms, XNNPACK | ms, no delegate |')
    print('|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as directory:
        for name in FLAGS.models:
            model = mj.create_model(name)
            variables = mj.init_variables(model, 0, (1, size, size, 3))
            for fmt in ('tflite', 'tflite_int8'):
                path = formats.export(model, variables, fmt, os.path.join(directory, f'{name}.{fmt}'),
                                      image_size=size, calibration_images=calibration)
                delegated, plain = _interpreter(path, delegate=True), _interpreter(path, delegate=False)
                partitions = sum(op['op_name'] == 'DELEGATE' for op in delegated._get_ops_details())
                ops = collections.Counter(op['op_name'] for op in plain._get_ops_details())
                row = {'model': name, 'format': fmt, 'image_size': size, 'partitions': partitions, 'ops': dict(ops),
                       'ms_xnnpack': _latency_ms(delegated, image), 'ms_no_delegate': _latency_ms(plain, image)}
                print(f'| {name} | {fmt} | {partitions} | {ops["HARD_SWISH"]} | {row["ms_xnnpack"]:.2f} | '
                      f'{row["ms_no_delegate"]:.2f} |', flush=True)
                print(json.dumps(row), flush=True)


if __name__ == '__main__':
    app.run(main)
