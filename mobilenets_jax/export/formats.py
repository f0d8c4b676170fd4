"""A model and its variables → SavedModel, TFLite (float or full-integer int8) or ONNX.

Routes (docs/export.md says why each, and what failed on the way):
  saved_model   jax2tf (native serialization: the StableHLO of the inference function inside one TF
                `XlaCallModule` op; jax/experimental/jax2tf/jax2tf.py) → `tf.saved_model.save`.
  tflite        the same jax2tf function at batch 1 → `tf.lite.TFLiteConverter.from_concrete_functions`,
                which legalizes the StableHLO to TFLite builtins (CONV_2D, DEPTHWISE_CONV_2D, HARD_SWISH, ...).
  tflite_int8   as tflite, plus full-integer post-training quantization: `optimizations=[DEFAULT]`,
                a representative dataset of calibration images and `supported_ops=[TFLITE_BUILTINS_INT8]`
                (tensorflow/lite/python/lite.py, `TFLiteConverter` attributes).
  onnx          `jax2onnx.to_onnx` straight from the jaxpr (dynamic batch 'B'), no TensorFlow.

Every format is traced from the *export form* of the model (`export_form`): the same parameters,
inference mode, float32, depthwise convolutions and pools as `lax` ops and every dense convolution as
one `lax.conv_general_dilated`. The training-speed kernels of `mobilenets_jax.ops` (Winograd, im2col,
1×1 convolutions as matmuls, shifted depthwise taps) compute the same numbers but reach the converters
as gathers, slices and matmuls: the TFLite converter rejects the im2col stem under a dynamic batch
('vhlo.dynamic_gather_v1' op is not part of the vhlo support yet), and none of those forms becomes a
CONV_2D that XNNPACK and the int8 kernels run. For int8 only, GELU is traced in its tanh form, which the
converter fuses into its GELU builtin (`INT8_ACTIVATIONS`).

The preprocessing the model expects (normalization formula, image size, layout) is written into the file:
TFLite metadata entry `PREPROCESSING_KEY` (flatbuffer `Model.metadata`), ONNX `metadata_props`, and the
SavedModel's `preprocessing()` function; `read_preprocessing(path, format)` reads it back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging as std_logging
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_jax import ops
from mobilenets_jax.data import datasets
from mobilenets_jax.models import layers

FORMATS = ('saved_model', 'tflite', 'tflite_int8', 'onnx')
PREPROCESSING_KEY = 'mobilenets_jax.preprocessing'
INSTALL_EXTRA = 'pip install "mobilenets_jax[export]"'
# The Python modules each format needs, and the PyPI package that provides each.
_REQUIRED_MODULES = {
    'saved_model': {'tensorflow': 'tensorflow-cpu'},
    'tflite': {'tensorflow': 'tensorflow-cpu'},
    'tflite_int8': {'tensorflow': 'tensorflow-cpu'},
    'onnx': {'jax2onnx': 'jax2onnx', 'onnx': 'onnx'},
}
# What each normalization does to float32 RGB pixels in [0, 255] (mobilenets_jax/data/preprocessing.py).
NORMALIZATION_FORMULAS = {
    'inception': 'x / 127.5 - 1',
    'unit': 'x / 255',
    'imagenet': 'per channel (x / 255 - mean) / std, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)',
}


# ----------------------------------------------------------------------------------------------
# Checks that run before anything is traced
# ----------------------------------------------------------------------------------------------

def check_format(format: str) -> None:   # noqa: A002 — the user-facing name of the choice
    if format not in FORMATS:
        raise ValueError(f'unknown export format {format!r}; allowed: {", ".join(FORMATS)}')


def check_extras(format: str) -> None:   # noqa: A002
    """ValueError naming the pip command when a package the format needs is not installed."""
    missing = [package for module, package in _REQUIRED_MODULES[format].items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(f'--format={format} needs {", ".join(missing)}, which is not installed; run '
                         f'{INSTALL_EXTRA} (or pip install {" ".join(missing)})')


def check_runtime(format: str) -> None:   # noqa: A002
    """ValueError naming the pip command when the runtime that runs the exported file is missing."""
    module, package = (('ai_edge_litert', 'ai-edge-litert') if format.startswith('tflite') else
                       ('onnxruntime', 'onnxruntime') if format == 'onnx' else ('tensorflow', 'tensorflow-cpu'))
    if importlib.util.find_spec(module) is None:
        raise ValueError(f'running a {format} file needs {package}, which is not installed; run '
                         f'{INSTALL_EXTRA} (or pip install {package})')


def _check_calibration(format: str, calibration_images, image_size: int) -> None:   # noqa: A002
    if format != 'tflite_int8':
        return
    if calibration_images is None or len(calibration_images) == 0:
        raise ValueError('format tflite_int8 needs calibration_images: a few hundred preprocessed training '
                         'images (N, H, W, 3) to calibrate the activation ranges')
    shape = tuple(np.shape(calibration_images))
    if len(shape) != 4 or shape[1:] != (image_size, image_size, 3):
        raise ValueError(f'calibration_images has shape {shape}; expected (N, {image_size}, {image_size}, 3)')


# ----------------------------------------------------------------------------------------------
# The export form: same parameters, converter-friendly operations
# ----------------------------------------------------------------------------------------------

# Activations traced in another form for int8 only. jax2tf lowers the erf GELU to a polynomial (ABS, EXP,
# DIV, SELECT, ...) that the quantizer leaves in float between DEQUANTIZE ops and whose graph aborts LiteRT
# (2.3) in allocate_tensors; the converter fuses the tanh approximation into its GELU builtin, which has an
# int8 kernel. The two forms differ by < 5e-4 over [-10, 10] (jax.nn.gelu with approximate True vs False;
# tests/test_export.py), far below int8's rounding; float formats keep the erf form.
INT8_ACTIVATIONS = {'gelu': 'gelu_tanh'}


def export_form(model: nn.Module, int8: bool = False) -> nn.Module:
    """`model` in float32 with XLA's depthwise convolutions and pools (`lax` ops the converters map),
    and for int8 the activation forms of `INT8_ACTIVATIONS`."""
    model = model.clone(depthwise_impl='xla', dtype=jnp.float32)
    if int8 and getattr(model, 'activation', None) in INT8_ACTIVATIONS:
        model = model.clone(activation=INT8_ACTIVATIONS[model.activation])
    return model


def _plain_convolutions(next_fun, args, kwargs, context):
    """Flax method interceptor (flax/linen/module.py `intercept_methods`): every `layers.Conv2D` call is
    computed as one `lax.conv_general_dilated` from the parameters it owns, instead of `ops.conv2d`'s
    CPU training forms. Same parameters, padding and groups, so the same numbers."""
    module = context.module
    if not isinstance(module, layers.Conv2D) or context.method_name != '__call__':
        return next_fun(*args, **kwargs)
    (x,) = args
    params = module.variables['params']['conv']
    x, kernel, bias = nn.dtypes.promote_dtype(x, params['kernel'], params.get('bias'), dtype=module.dtype)
    y = ops.lax_conv(x, kernel, module.strides, layers.conv_padding(module.kernel_size, module.padding_style),
                     module.groups)
    return y if bias is None else y + bias


def inference_function(model: nn.Module, variables: dict, int8: bool = False) -> Callable:
    """images (N, H, W, 3) float32 → logits (N, classes) float32, in the export form, weights closed over."""
    model = export_form(model, int8)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    variables = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(variables))

    def logits(images):
        with nn.intercept_methods(_plain_convolutions):
            return model.apply(variables, images, train=False).astype(jnp.float32)
    return logits


def preprocessing_record(model: nn.Module, image_size: int, normalization: Optional[str]) -> dict:
    """What a user of the exported file must do to an image before calling it, as one JSON-able dict."""
    if normalization is not None and normalization not in datasets.NORMALIZATIONS:
        raise ValueError(f'normalization={normalization!r}; allowed: {", ".join(datasets.NORMALIZATIONS)}')
    return {
        'input': f'float32 NHWC RGB images, {image_size}x{image_size}',
        'normalization': normalization or 'unspecified',
        'formula': NORMALIZATION_FORMULAS.get(normalization, 'unspecified'),
        'output': f'logits ({model.num_classes} classes, no softmax)',
        'model': type(model).__name__, 'alpha': float(model.alpha), 'image_size': int(image_size),
    }


# ----------------------------------------------------------------------------------------------
# Converters
# ----------------------------------------------------------------------------------------------

def _tf_function(logits_fn: Callable, image_size: int, batch_size: Optional[int]):
    """The jax2tf-converted function as a `tf.function` with one named input; batch None: dynamic."""
    import tensorflow as tf
    from jax.experimental import jax2tf
    converted = jax2tf.convert(logits_fn, polymorphic_shapes=['(b, ...)'] if batch_size is None else None,
                               with_gradient=False)
    spec = tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32, name='images')
    return tf.function(lambda images: {'logits': converted(images)}, input_signature=[spec], autograph=False)


def _save_saved_model(logits_fn, output: str, image_size: int, record: dict) -> None:
    import tensorflow as tf
    module = tf.Module()
    module.serve = _tf_function(logits_fn, image_size, batch_size=None)
    text = json.dumps(record)
    module.preprocessing = tf.function(lambda: tf.constant(text), input_signature=[])
    tf.saved_model.save(module, output, signatures={'serving_default': module.serve.get_concrete_function()})


def _tflite_bytes(logits_fn, image_size: int, calibration_images=None, int8_io: bool = False) -> bytes:
    """Float TFLite, or full-integer int8 when `calibration_images` is given (batch 1: see docs/export.md)."""
    import tensorflow as tf
    module = tf.Module()
    module.serve = _tf_function(logits_fn, image_size, batch_size=1)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if calibration_images is not None:
        images = np.asarray(calibration_images, np.float32)

        def representative_dataset():
            for image in images:
                yield [image[None]]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


def _with_tflite_metadata(flatbuffer: bytes, name: str, text: str) -> bytes:
    """Adds a named metadata buffer (schema `Model.metadata`) via tensorflow/lite/tools/flatbuffer_utils.py."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _save_onnx(logits_fn, output: str, image_size: int, record: dict, model_name: str) -> None:
    import onnx
    from jax2onnx import to_onnx
    proto = to_onnx(logits_fn, [('B', image_size, image_size, 3)], model_name=model_name,
                    input_names=['images'], output_names=['logits'])
    entry = proto.metadata_props.add()
    entry.key, entry.value = PREPROCESSING_KEY, json.dumps(record)
    onnx.save(proto, output)


def export(model: nn.Module, variables: dict, format: str, output: str, *,   # noqa: A002
           image_size: int, calibration_images=None, int8_io: bool = False,
           normalization: Optional[str] = None) -> str:
    """Writes `model` with `variables` ({'params', 'batch_stats'}; EMA or raw: the caller's choice) to
    `output` in `format` and returns `output`.

    Args:
      model: a zoo model (`mobilenets_jax.create_model`); exported in inference mode, float32.
      variables: its {'params', 'batch_stats'}.
      format: 'saved_model' (a directory), 'tflite', 'tflite_int8' or 'onnx' (files).
      output: the path to write.
      image_size: input height and width. The input is float32 NHWC images already normalized as the
        model was trained; the output is logits. Batch: dynamic in SavedModel and ONNX, 1 in TFLite.
      calibration_images: tflite_int8 only: preprocessed images (N, H, W, 3) that calibrate the ranges.
      int8_io: tflite_int8 only: int8 input and output tensors (else float32 ones with (de)quantize ops).
      normalization: the config's normalization ('inception', 'unit', 'imagenet'), recorded in the file.

    Errors (ValueError, before anything is traced): unknown format, a missing package (naming the pip
    command), missing or misshaped calibration images, an image size too small for the model.
    """
    check_format(format)
    check_extras(format)
    _check_calibration(format, calibration_images, image_size)
    layers.check_images(jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32),
                        model_name=type(model).__name__, min_size=model.min_input_size)
    record = preprocessing_record(model, image_size, normalization)
    logits_fn = inference_function(model, variables, int8=format == 'tflite_int8')
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with _absl_verbosity_kept():
        if format == 'saved_model':
            _save_saved_model(logits_fn, output, image_size, record)
        elif format == 'onnx':
            _save_onnx(logits_fn, output, image_size, record, type(model).__name__)
        else:
            flatbuffer = _tflite_bytes(logits_fn, image_size,
                                       calibration_images if format == 'tflite_int8' else None, int8_io)
            with open(output, 'wb') as f:
                f.write(_with_tflite_metadata(flatbuffer, PREPROCESSING_KEY, json.dumps(record)))
    return output


@contextlib.contextmanager
def _absl_verbosity_kept():
    """TensorFlow's converters set absl's logger to WARNING as they run; the caller's INFO logs (a training
    run's, a test's) must not go silent because something was exported."""
    logger = std_logging.getLogger('absl')
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)


def read_preprocessing(path: str, format: str) -> dict:   # noqa: A002
    """The preprocessing record `export` wrote into the file."""
    check_format(format)
    if format == 'saved_model':
        import tensorflow as tf
        return json.loads(tf.saved_model.load(path).preprocessing().numpy().decode())
    if format == 'onnx':
        import onnx
        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props[PREPROCESSING_KEY])
    from tensorflow.lite.tools import flatbuffer_utils
    with open(path, 'rb') as f:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    entry = next((m for m in model.metadata or [] if m.name.decode() == PREPROCESSING_KEY), None)
    if entry is None:
        raise ValueError(f'{path}: no {PREPROCESSING_KEY!r} metadata entry (not written by mobilenets_jax.export)')
    return json.loads(bytes(model.buffers[entry.buffer].data).decode())
