"""Running an exported file on this CPU: LiteRT (with its default XNNPACK delegate), onnxruntime, or
TensorFlow for a SavedModel; and timing one image through it.

`load(path, format, num_threads)` returns a function images (N, H, W, 3) float32 → logits (N, classes)
float32, whatever the file's batch size or int8 input/output tensors (it feeds batch-1 models one image at
a time and quantizes/dequantizes with the tensors' own scale and zero point).
"""
from __future__ import annotations

import os
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
