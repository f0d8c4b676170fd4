"""Test setup: 8 simulated CPU devices (multi-device tests use them; single-device code uses device 0).

This must run before anything imports JAX's backend.
"""
import os

os.environ.setdefault('JAX_NUM_CPU_DEVICES', '8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')


import pytest  # noqa: E402

from tests.tiny_config import tiny_digits_config  # noqa: E402


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: tiny_config(**overrides) -> the tiny digits config with data under tmp_path/tfds."""
    def make(**overrides):
        return tiny_digits_config(str(tmp_path / 'tfds'), **overrides)
    return make
