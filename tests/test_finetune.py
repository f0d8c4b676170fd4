"""Fine-tuning (`config.init_from`, `reinit_classifier`, `freeze_backbone`) through the real training loop."""
import json
import logging
import os

import jax
import numpy as np
import optax
import pytest

from mobilenets_jax import checkpoints, optim, train_lib
from mobilenets_jax.weights import init_from


def _final_variables(workdir):
    return jax.tree.map(np.asarray, init_from._from_workdir(workdir))   # the newest step's (no EMA here)


def _backbone(variables):
    return {name: value for name, value in init_from._flat(variables).items()
            if name.split('/')[1] != optim.CLASSIFIER}


def _eval_top1(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r['split'] != 'train'][-1]['top1']


def test_frozen_backbone_transform_updates_only_the_classifier():
    params = {'stem': {'kernel': np.ones((3, 3, 3, 4))}, 'classifier': {'kernel': np.ones((4, 2)),
                                                                         'bias': np.zeros(2)}}
    transform = optim.frozen_backbone(optax.sgd(0.1))
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = transform.update(grads, transform.init(params), params)
    assert not np.any(updates['stem']['kernel'])
    np.testing.assert_allclose(updates['classifier']['kernel'], -0.1)


@pytest.mark.parametrize('prefix', ['', 'timm:'])
def test_missing_init_from_is_named_before_training(tiny_config, tmp_path, prefix):
    config = tiny_config(init_from=f'{prefix}{tmp_path / "nope.safetensors"}', num_train_steps=2)
    with pytest.raises(ValueError, match='config.init_from=.*nope.*no such file or directory'):
        train_lib.train_and_evaluate(config, str(tmp_path / 'work'))
    assert not (tmp_path / 'work').exists()


def test_a_source_prefixed_init_from_passes_the_existence_check(tmp_path):
    from mobilenets_jax.weights import init_from
    (tmp_path / 'model.bin').write_bytes(b'')
    init_from.check_exists(f'timm:{tmp_path / "model.bin"}')   # the file exists: no error
    with pytest.raises(ValueError, match='no such file'):
        init_from.check_exists(f'timm:{tmp_path / "other.bin"}')


@pytest.mark.slow
def test_fine_tuning_a_new_head_beats_scratch_and_resumes_its_own_weights(tiny_config, tmp_path, caplog):
    """Pretrain on digits, then train a fresh classifier on the frozen backbone; at equal steps it beats
    the same model trained from scratch. A resumed fine-tuning run continues from its own checkpoint."""
    common = {'model.alpha': 0.5, 'batch_size': 32, 'steps_per_eval': -1, 'eval_every_epochs': 1000.0,
              'ema_decay': 0.0, 'checkpoint_every_steps': 1000}
    pretrained = str(tmp_path / 'pretrained')
    train_lib.train_and_evaluate(tiny_config(num_train_steps=200, **common), pretrained)

    steps = 30
    scratch = str(tmp_path / 'scratch')
    train_lib.train_and_evaluate(tiny_config(num_train_steps=steps, **common), scratch)
    finetuned = str(tmp_path / 'finetuned')
    fine_tuning = tiny_config(num_train_steps=steps, init_from=pretrained, reinit_classifier=True,
                              freeze_backbone=True, **common)
    with caplog.at_level(logging.INFO, logger='absl'):
        train_lib.train_and_evaluate(fine_tuning, finetuned)
    assert 're-initialised (config.reinit_classifier): params/classifier/bias, params/classifier/kernel' in caplog.text

    start, end = _final_variables(pretrained), _final_variables(finetuned)
    for name, value in _backbone(start).items():     # frozen: every backbone parameter as loaded
        if name.startswith('params/'):
            np.testing.assert_array_equal(_backbone(end)[name], value, err_msg=name)
    assert not np.allclose(end['params']['classifier']['kernel'], start['params']['classifier']['kernel'])
    assert _eval_top1(finetuned) > _eval_top1(scratch) + 0.2, (_eval_top1(finetuned), _eval_top1(scratch))

    # Resuming: the run restores its own step-30 state instead of starting from `init_from` again, so it
    # no longer needs the pretrained run (moved away here).
    os.rename(pretrained, pretrained + '.moved')
    caplog.clear()
    fine_tuning.num_train_steps = steps + 2
    with caplog.at_level(logging.INFO, logger='absl'):
        result = train_lib.train_and_evaluate(fine_tuning, finetuned)
    assert result['step'] == steps + 2
    assert f'Resumed from the checkpoint at step {steps}' in caplog.text and 'Initialised from' not in caplog.text
    assert checkpoints.create_manager(finetuned, read_only=True).all_steps()[-1] == steps + 2
