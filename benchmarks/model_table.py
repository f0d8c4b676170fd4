"""Prints the README's model table: parameters at alpha=1 and mult-adds (from layer shapes) at 224 and 32.

    python benchmarks/model_table.py
"""
import mobilenets_jax as mj
from mobilenets_jax import cost, published
rows = ['| model | α (width) | params (α=1) | mult-adds at 224 (α=1) | mult-adds at 32 (α=1) | paper / reference |', '|---|---|---|---|---|---|']
for name in mj.list_models():
    spec = mj.get_spec(name)
    groups = spec.default_groups
    m = mj.create_model(name, alpha=1.0, groups=groups)
    v = mj.abstract_variables(m, (1, 32, 32, 3))
    params = cost.count_variables(v)['params']
    macs224 = cost.count_macs(m, 224) if spec.base_resolution == 224 else None
    macs32 = cost.count_macs(m, 32)
    alphas = 'any > 0' if spec.allowed_alphas is None else ', '.join(f'{a:g}' for a in spec.allowed_alphas)
    pub = published.published_macs(name, 1.0, groups, 224)
    f = lambda x: '—' if x is None else f'{x/1e6:.1f}M'
    rows.append(f'| `{name}`{" (g=3)" if groups else ""} | {alphas} | {params:,} | {f(macs224)} | {f(macs32)} | {spec.summary}{"; published " + f(pub) if pub else ""} |')
print('\n'.join(rows))
