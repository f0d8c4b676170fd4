"""mobilenets_jax: the MobileNet / ShuffleNet family in JAX and Flax.

    import mobilenets_jax as mj
    model = mj.create_model('mobilenet_v1', num_classes=1000, alpha=0.5)
"""
from mobilenets_jax.models import (MODELS, abstract_variables, check_image_size, create_model, get_spec, init_variables,
                                   list_models)

__version__ = '0.1.0'
__all__ = ['abstract_variables', 'init_variables', 'create_model', 'list_models', 'get_spec', 'check_image_size',
           'MODELS', '__version__']
