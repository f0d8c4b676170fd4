"""Running an exported file on this CPU: LiteRT (with its default XNNPACK delegate), onnxruntime, or
TensorFlow for a SavedModel; and timing one image through it.

`load(path, format, num_threads)` returns a function images (N, H, W, 3) float32 → logits (N, classes)
float32, whatever the file's batch size or int8 input/output tensors (it feeds batch-1 models one image at
a time and quantizes/dequantizes with the tensors' own scale and zero point).

`jax_latency_ms_one_core` times the JAX model itself on one core, in a child process pinned to that core.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np

from mobilenets_jax.export import formats


def _litert(path: str, num_threads: Optional[int]) -> Callable:
    """ai_edge_litert.interpreter.Interpreter (the successor of the deprecated tf.lite.Interpreter)."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = int(source['shape'][0])

    def quantize(x):
        scale, zero = source['quantization']
        if source['dtype'] == np.float32:
            return x
        return np.clip(np.round(x / scale + zero), -128, 127).astype(source['dtype'])

    def dequantize(y):
        scale, zero = target['quantization']
        return y.astype(np.float32) if target['dtype'] == np.float32 else (y.astype(np.float32) - zero) * scale

    def run(images):
        images = np.asarray(images, np.float32)
        outputs = []
        for start in range(0, len(images), batch):
            interpreter.set_tensor(source['index'], quantize(images[start:start + batch]))
            interpreter.invoke()
            outputs.append(dequantize(interpreter.get_tensor(target['index'])))
        return np.concatenate(outputs)
    return run


def _onnxruntime(path: str, num_threads: Optional[int]) -> Callable:
    import onnxruntime as ort
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]


def _tensorflow(path: str, num_threads: Optional[int]) -> Callable:
    import tensorflow as tf
    if num_threads:  # only possible before TensorFlow starts its thread pools
        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        except RuntimeError as error:
            raise ValueError(f'a SavedModel cannot be timed with {num_threads} threads in this process: TensorFlow '
                             'has started its thread pools already (time it in a fresh process)') from error
    serve = tf.saved_model.load(path).signatures['serving_default']
    return lambda images: serve(images=tf.constant(np.asarray(images, np.float32)))['logits'].numpy()


def load(path: str, format: str, num_threads: Optional[int] = None) -> Callable:   # noqa: A002
    """images → logits through the exported file; num_threads None: the runtime's default (all cores)."""
    formats.check_format(format)
    formats.check_runtime(format)
    if format.startswith('tflite'):
        return _litert(path, num_threads)
    if format == 'onnx':
        return _onnxruntime(path, num_threads)
    return _tensorflow(path, num_threads)


def file_size(path: str) -> int:
    """Bytes of a file, or of everything under a directory (a SavedModel)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def latency_ms(run: Callable, image: np.ndarray, *, warmup: int = 3, min_runs: int = 10,
               min_seconds: float = 1.0) -> float:
    """Median milliseconds of `run` on one image (batch 1), after `warmup` calls."""
    image = np.asarray(image, np.float32)[None]
    for _ in range(warmup):
        np.asarray(run(image))
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        np.asarray(run(image))
        times.append(time.perf_counter() - begin)
    return 1000.0 * float(np.median(times))


def jax_logits_fn(model, variables: dict) -> Callable:
    """images → logits of `model` in JAX (jit, inference mode): what the exported files are compared with.
    The weights are an argument of the compiled program, not closed over (closed-over arrays would be
    baked in as constants)."""
    import jax
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return lambda images: apply(variables, images)


def jax_latency_ms_one_core(model, variables: dict, image_size: int, timeout_s: float = 900.0) -> Optional[float]:
    """Median ms per image of `model.apply` (jit, batch 1, CPU) with every XLA thread on one CPU core; None
    where the OS cannot pin a process (no `os.sched_setaffinity`: macOS, Windows). RuntimeError if the
    timing process fails, runs elsewhere or outlives `timeout_s`.

    JAX has no per-call or per-process thread setting (jax-ml/jax issues 1539 and 6790, both open), so
    the model is timed in a child process that pins itself to one core before it imports JAX; all its
    threads then share that core.
    """
    if not hasattr(os, 'sched_setaffinity'):
        return None
    core = min(os.sched_getaffinity(0))
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, 'model.pkl')
        with open(path, 'wb') as f:
            pickle.dump({'model': model, 'variables': _host(variables), 'image_size': int(image_size)}, f)
        code = (f'import os; os.sched_setaffinity(0, {{{core}}}); '
                f'from mobilenets_jax.export import runtime; runtime._time_pickled_model({path!r})')
        env = dict(os.environ, JAX_PLATFORMS='cpu',
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get('PYTHONPATH')])))
        try:
            result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                                    timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f'timing JAX on one core took over {timeout_s:.0f} s') from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ['(no output)'])[-1]
        raise RuntimeError(f'timing JAX on one core failed (exit {result.returncode}): {last}')
    timed = json.loads(lines[-1])
    if timed['cores'] != [core]:
        raise RuntimeError(f'the timing process ran on cores {timed["cores"]}, not on core {core} alone')
    return float(timed['latency_ms'])


def _host(variables: dict) -> dict:
    import jax
    return jax.tree.map(np.asarray, jax.device_get(variables))


def _time_pickled_model(path: str) -> None:
    """The child of `jax_latency_ms_one_core`: prints {"latency_ms", "cores"} as its last line."""
    with open(path, 'rb') as f:
        saved = pickle.load(f)
    size = saved['image_size']
    milliseconds = latency_ms(jax_logits_fn(saved['model'], saved['variables']), np.zeros((size, size, 3), np.float32))
    print(json.dumps({'latency_ms': milliseconds, 'cores': sorted(os.sched_getaffinity(0))}), flush=True)
