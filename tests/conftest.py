"""Test setup: 8 simulated CPU devices (multi-device tests use them; single-device code uses device 0).

This must run before anything imports JAX's backend.
"""
import os

os.environ.setdefault('JAX_NUM_CPU_DEVICES', '8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
