"""Size and latency per image of exported models (random weights: size and speed do not depend on them).

    python benchmarks/export_latency.py --models=mobilenet_v2,mobilenet_v3_small --image_size=224

Exports each model to tflite, tflite_int8 (calibrated on random images: latency only, not accuracy) and
onnx, times one image through LiteRT / onnxruntime with 1 thread and all cores, and JAX (jit, batch 1) on
one core (a child process pinned to it: runtime.jax_latency_ms_one_core) and on all cores next to them.
Prints a Markdown table and one JSON line per row.
"""
import json
import os
import tempfile

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['mobilenet_v2', 'mobilenet_v3_small'], 'Architectures to export.')
flags.DEFINE_integer('image_size', 224, 'Input resolution.')
flags.DEFINE_list('formats', ['tflite', 'tflite_int8', 'onnx'], 'Export formats.')


def main(argv):
    del argv
    import jax
    import mobilenets_jax as mj
    from mobilenets_jax.export import formats, runtime
    size, cores = FLAGS.image_size, os.cpu_count() or 1
    image = np.random.RandomState(0).uniform(-1, 1, (size, size, 3)).astype(np.float32)
    backend = jax.default_backend()   # the all-cores JAX column runs there; the 1-core column on the CPU
    where = f'{cores} cores' if backend == 'cpu' else backend
    print(f'| model | format | MB | ms 1 thread | ms {cores} threads | JAX ms (1 CPU core) | JAX ms ({where}) |')
    print('|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as directory:
        for name in FLAGS.models:
            model = mj.create_model(name)
            variables = mj.init_variables(model, 0, (1, size, size, 3))
            jax_ms = runtime.latency_ms(runtime.jax_logits_fn(model, variables), image)
            jax_one_core_ms = runtime.jax_latency_ms_one_core(model, variables, size)
            calibration = np.random.RandomState(1).uniform(-1, 1, (32, size, size, 3)).astype(np.float32)
            for fmt in FLAGS.formats:
                path = formats.export(model, variables, fmt, os.path.join(directory, f'{name}.{fmt}'),
                                      image_size=size, calibration_images=calibration, normalization='inception')
                row = {'model': name, 'format': fmt, 'bytes': runtime.file_size(path), 'image_size': size,
                       'ms_1_thread': runtime.latency_ms(runtime.load(path, fmt, 1), image),
                       'ms_all_cores': runtime.latency_ms(runtime.load(path, fmt, cores), image),
                       'jax_ms_1_core': jax_one_core_ms, 'jax_ms_all_cores': jax_ms, 'jax_backend': backend,
                       'cores': cores}
                print(f'| {name} | {fmt} | {row["bytes"] / 1e6:.2f} | {row["ms_1_thread"]:.2f} | '
                      f'{row["ms_all_cores"]:.2f} | {jax_one_core_ms or float("nan"):.2f} | {jax_ms:.2f} |', flush=True)
                print(json.dumps(row), flush=True)


if __name__ == '__main__':
    app.run(main)
