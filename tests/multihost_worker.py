"""Runs a few data-parallel train steps as one process of a (possibly multi-process) CPU job.

Usage: python tests/multihost_worker.py OUT.npy NUM_PROCESSES PROCESS_ID PORT
Every process feeds its slice of the same deterministic global batches, so the run is comparable
with a single process owning all 8 devices. Process 0 saves the flattened final params to OUT.npy.
"""
import os
import sys

out_path, num_processes, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ['JAX_NUM_CPU_DEVICES'] = str(8 // num_processes)
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402

if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=num_processes,
                               process_id=process_id)

import numpy as np  # noqa: E402

from mobilenets_jax import train_lib  # noqa: E402
from tests.tiny_config import tiny_digits_config  # noqa: E402

# TF RMSprop (eps 1.0) rather than the quickstart's Adam: Adam turns float-rounding noise in the
# near-zero gradients of pre-BatchNorm biases into full-size steps of either sign.
config = tiny_digits_config(**{'model.dropout_rate': 0.0, 'optimizer': 'rmsprop', 'learning_rate': 0.01,
                               'sync_batch_stats': True})
mesh = train_lib.create_mesh()
assert mesh.devices.size == 8, mesh
setup = train_lib.create_setup(config, num_train_examples=160)
state = train_lib.initial_state(setup, config, mesh)
step = train_lib.make_train_step(setup, config, mesh)
rng = np.random.default_rng(0)
per_process = config.batch_size // jax.process_count()
for _ in range(3):
    images = rng.uniform(size=(config.batch_size, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=(config.batch_size,)).astype(np.int32)
    start = jax.process_index() * per_process
    local = {'image': images[start:start + per_process], 'label': labels[start:start + per_process]}
    state, metrics = step(state, train_lib.shard_batch(local, mesh))
params = jax.tree.leaves(jax.device_get(state['params']))
if jax.process_index() == 0:
    np.save(out_path, np.concatenate([np.ravel(p) for p in params]))
print('worker done', jax.process_index(), float(metrics['loss']))
