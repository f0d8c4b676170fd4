"""The one tiny training config the tests start from: digits at 16×16, a few steps, logs every step.

A plain module (no pytest, no JAX side effects) so that subprocess workers can import it too; tests get
it through the `tiny_config` fixture in conftest.py.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from configs import digits  # noqa: E402


def tiny_digits_config(data_dir=None, **overrides):
    """configs/digits.py shrunk for tests; `overrides` use dotted names, e.g. **{'model.alpha': 0.25}."""
    config = digits.get_config()
    config.data_dir = data_dir
    config.model.name = 'cifar_mobilenet_v2'
    config.batch_size = 16
    config.log_every_steps = 1
    config.eval_every_epochs = 1000.0
    config.steps_per_eval = 2
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split('.')
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config
