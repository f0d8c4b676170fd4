"""A released weight file → a workdir that `eval.py` evaluates: an orbax checkpoint and the config to use.

The checkpoint holds step 0 with the converted `{'params', 'batch_stats'}` (no optimizer state, no EMA);
its metadata records the model, α, dataset and the source's input normalization. Because `eval.py` takes
the model options and normalization from its `--config`, the workdir also gets `config.py`, the default
config with the source's build options and normalization set, so that

    python eval.py --config=<workdir>/config.py --workdir=<workdir>

evaluates the weights as their source ran them. `converted.json` says where they came from.
"""
from __future__ import annotations

import json
import os
from typing import Any

from mobilenets_jax import weights

_CONFIG_TEMPLATE = '''"""Written by convert.py: {source} weights {weights_file}, converted to {model} alpha={alpha}.

    python eval.py --config={config_path} --workdir={workdir}
"""
from mobilenets_jax import config_lib


def get_config():
    config = config_lib.default_config()
    config.model.name = {model!r}
    config.model.alpha = {alpha!r}
{model_lines}
    config.dataset = {dataset!r}
    config.normalization = {normalization!r}   # the source's input range
    config.ema_decay = 0.0                     # converted weights have no EMA twin
    return config
'''
# create_model options that are config.model fields; the rest are family options (config.model.options).
_MODEL_FIELDS = ('padding_style', 'bn_epsilon', 'bn_momentum', 'dropout_rate', 'depthwise_impl')


def eval_config_text(converted: weights.Converted, *, source: str, weights_file: str, dataset: str,
                     workdir: str, build_options: dict) -> str:
    lines = []
    for key, value in sorted(build_options.items()):
        where = 'config.model' if key in _MODEL_FIELDS else 'config.model.options'
        lines.append(f'    {where}.{key} = {value!r}')
    return _CONFIG_TEMPLATE.format(source=source, weights_file=weights_file, model=converted.model_name,
                                   alpha=converted.alpha, model_lines='\n'.join(lines), dataset=dataset,
                                   normalization=converted.normalization,
                                   config_path=os.path.join(workdir, 'config.py'), workdir=workdir)


def convert_to_workdir(weights_file: str, workdir: str, *, source: str, model: str, alpha: float,
                       dataset: str = 'imagenet2012', **options: Any) -> dict:
    """Converts `weights_file` and writes `<workdir>/checkpoints` (step 0), `config.py`, `converted.json`.

    Returns the record written to converted.json (with 'eval_command').
    """
    from mobilenets_jax import checkpoints, config_lib
    from mobilenets_jax.data import datasets
    info = datasets.get_dataset_info(dataset)
    converted = weights.load(weights_file, source=source, model=model, alpha=alpha, **options)
    if converted.num_classes != info.num_classes:
        raise ValueError(f'{weights_file} has a {converted.num_classes}-class classifier, dataset {dataset!r} '
                         f'{info.num_classes} classes; fine-tune it instead (config.init_from)')
    build_options = dict(weights.build_options(source, model), **options)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, 'config.py')
    with open(config_path, 'w') as handle:
        handle.write(eval_config_text(converted, source=source, weights_file=weights_file, dataset=dataset,
                                      workdir=workdir, build_options=build_options))
    config = config_lib.default_config()
    config.model.name, config.model.alpha, config.dataset = model, converted.alpha, dataset
    config.normalization, config.ema_decay = converted.normalization, 0.0
    metadata = checkpoints.CheckpointMetadata.from_config(config)
    directory = checkpoints.save_converted(workdir, converted.variables, metadata)
    record = {'source': source, 'weights_file': os.path.abspath(weights_file), 'model': model,
              'alpha': converted.alpha, 'num_classes': converted.num_classes, 'dataset': dataset,
              'normalization': converted.normalization, 'build_options': build_options,
              'preprocessing': converted.notes, 'checkpoints': directory, 'config': config_path,
              'eval_command': f'python eval.py --config={config_path} --workdir={workdir}'}
    with open(os.path.join(workdir, 'converted.json'), 'w') as handle:
        json.dump(record, handle, indent=2)
    return record
