"""Export to TF SavedModel, TFLite (float, full-integer int8) and ONNX, and run the exported files.

    from mobilenets_jax import export
    export.export(model, variables, 'tflite', '/tmp/model.tflite', image_size=224, normalization='inception')
    logits = export.runtime.load('/tmp/model.tflite', 'tflite')(images)

`formats` converts, `runtime` runs and times exported files, `report` restores a checkpoint, exports it and
measures parity, accuracy and latency (what export.py prints). Routes and measurements: docs/export.md.
"""
from mobilenets_jax.export import runtime
from mobilenets_jax.export.formats import (FORMATS, PREPROCESSING_KEY, check_extras, check_format, export,
                                           export_form, inference_function, read_preprocessing)

__all__ = ['FORMATS', 'PREPROCESSING_KEY', 'check_extras', 'check_format', 'export', 'export_form',
           'inference_function', 'read_preprocessing', 'runtime']
