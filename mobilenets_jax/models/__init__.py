"""Every architecture of the zoo; see `registry.MODELS` for what each name means."""
from mobilenets_jax.models.init import abstract_variables, init_variables
from mobilenets_jax.models.layers import channel_shuffle, hard_sigmoid, hard_swish, make_divisible
from mobilenets_jax.models.registry import (MODELS, ModelSpec, check_image_size, create_model, get_spec,
                                            list_models)
