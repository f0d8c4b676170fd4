"""mobilenets_jax: the MobileNet / ShuffleNet family in JAX and Flax.

    import mobilenets_jax as mj
    model = mj.create_model('mobilenet_v1', num_classes=1000, alpha=0.5)
"""
from mobilenets_jax.models import (MODELS, abstract_variables, check_image_size, create_model, get_spec, init_variables,
                                   list_models)

__version__ = '0.1.0'
__all__ = ['abstract_variables', 'init_variables', 'create_model', 'list_models', 'get_spec', 'check_image_size',
           'load_pretrained', 'MODELS', '__version__']


def load_pretrained(path: str, source: str = 'keras', *, model: str, alpha: float = 1.0, **options):
    """Reads a released weight file; returns `(module, {'params', 'batch_stats'})`.

    `source`: 'keras' (applications `.h5`), 'torchvision' (`.pth`, needs torch) or 'timm'
    (`model.safetensors`, with the hub's `config.json` beside it when available). The module is built with
    the options the source trained with (Keras: BatchNorm epsilon 1e-3, ReLU6 in MobileNet V1, TF SAME
    padding; torchvision and timm: symmetric padding, their epsilons); `options` go to `create_model` and
    override them (e.g. `dtype`). The classifier width is the file's. A file that does not fit raises
    ValueError naming the first layer that differs, both shapes and what probably differs. The input range
    the weights expect: `mobilenets_jax.weights.load(...).normalization` (docs/pretrained.md).
    """
    from mobilenets_jax import weights
    converted = weights.load(path, source=source, model=model, alpha=alpha, **options)
    return converted.model, converted.variables
