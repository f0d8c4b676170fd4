"""Defaults every config starts from (the MobileNet papers' ImageNet recipe on one host).

The fields and their meaning are defined once, in `mobilenets_jax.config_lib.default_config`.
Configs override a few fields: `config = default.get_config(); config.model.name = ...`. Any field can
be changed from the command line: `--config.model.alpha=0.5 --config.rho=0.714`.
"""
from mobilenets_jax import config_lib


def get_config():
    return config_lib.default_config()
