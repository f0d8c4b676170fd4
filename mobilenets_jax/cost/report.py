"""Cost records as text: an aligned table, JSON lines, CSV or Markdown, with per-layer tables."""
from __future__ import annotations

import csv
import io
import json
from typing import Sequence

import numpy as np

from mobilenets_jax.cost import machine, macs


# The fields of one `analyze` record, in output order.
FIELDS = (
    'model', 'alpha', 'groups', 'resolution', 'num_classes', 'params', 'batch_stats', 'macs', 'flops',
    'train_flops', 'bytes_accessed', 'arithmetic_intensity', 'published_macs', 'published_params',
    'backend', 'compile_seconds', 'train_batch_size', 'train_cost_source',
)
MEASURE_FIELDS = ('batch_size', 'inference_images_per_sec', 'train_images_per_sec', 'steal')
LAYER_FIELDS = ('name', 'kind', 'kernel', 'output_shape', 'params', 'macs', 'flops', 'bytes')


def _rel(value, reference):
    if value is None or reference in (None, 0):
        return None
    return value / reference - 1.0


def _fmt_count(value, unit: float, digits: int = 2) -> str:
    return '-' if value is None else f'{value / unit:.{digits}f}'


def _fmt_rel(value, reference) -> str:
    rel = _rel(value, reference)
    return '-' if rel is None else f'{100 * rel:+.1f}%'


TABLE_COLUMNS = ('model', 'α', 'g', 'res', 'params M', 'vs pub', 'MACs M', 'pub M', 'vs pub', 'GFLOPs',
                 'train GFLOPs/img', 'MB accessed', 'flops/byte', 'compile s')


def _table_row(record: dict) -> list[str]:
    row = [record['model'], f"{record['alpha']:g}", '-' if record['groups'] is None else str(record['groups']),
           str(record['resolution']), _fmt_count(record['params'], 1e6, 3),
           _fmt_rel(record['params'], record['published_params']), _fmt_count(record['macs'], 1e6, 1),
           _fmt_count(record['published_macs'], 1e6, 0), _fmt_rel(record['macs'], record['published_macs']),
           _fmt_count(record['flops'], 1e9, 3), _fmt_count(record['train_flops'], 1e9, 3),
           _fmt_count(record['bytes_accessed'], 1e6, 1),
           '-' if record['arithmetic_intensity'] is None else f"{record['arithmetic_intensity']:.1f}",
           f"{record['compile_seconds']:.1f}"]
    if 'inference_images_per_sec' in record:
        steal = record.get('steal')
        row += [f"{record['inference_images_per_sec']:.1f}", f"{record['train_images_per_sec']:.1f}",
                '-' if steal is None else f'{100 * steal:.0f}%']
    return row


LAYER_COLUMNS = ('layer', 'kind', 'kernel', 'output', 'params', 'MACs', '% MACs', 'flops', 'bytes')


def _layer_table_rows(record: dict) -> list[list[str]]:
    total = sum(row['macs'] for row in record['layers']) or 1
    out = []
    for row in record['layers']:
        kernel = '-' if row['kernel'] is None else 'x'.join(str(k) for k in row['kernel'])
        out.append([row['name'], row['kind'], kernel, 'x'.join(str(d) for d in row['output_shape'][1:]),
                    str(row['params']), str(row['macs']), f"{100 * row['macs'] / total:.2f}",
                    '-' if row.get('flops') is None else str(int(row['flops'])),
                    '-' if row.get('bytes') is None else str(int(row['bytes']))])
    return out


def _kind_summary(record: dict) -> str:
    shares = macs.macs_by_kind(record['layers'])
    total = sum(shares.values()) or 1
    return ' · '.join(f'{kind} {100 * value / total:.2f}%'
                      for kind, value in sorted(shares.items(), key=lambda kv: -kv[1]))


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: '  '.join(str(c).rjust(w) if i >= 1 else str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(['-' * w for w in widths])] + [line(r) for r in rows]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    rule = '|' + '|'.join(':---' if i == 0 else '---:' for i in range(len(header))) + '|'
    out = ['| ' + ' | '.join(header) + ' |', rule]
    return out + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_records(records: Sequence[dict], fmt: str = 'table') -> str:
    """Renders `analyze` records as 'table', 'json' (one object per line), 'csv' or 'markdown'.

    'csv' has a header and one row per configuration (the `FIELDS`, plus `MEASURE_FIELDS` when
    measured); when the records have per-layer rows it is one row per layer instead, keyed by the
    configuration's model/alpha/groups/resolution.
    """
    if fmt == 'json':
        return '\n'.join(json.dumps(_json_ready(r)) for r in records)
    measured = any('inference_images_per_sec' in r for r in records)
    has_layers = any('layers' in r for r in records)
    if fmt == 'csv':
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator='\n')
        if has_layers:
            key_fields = ('model', 'alpha', 'groups', 'resolution')
            writer.writerow(key_fields + LAYER_FIELDS)
            for r in records:
                for row in r.get('layers', []):
                    writer.writerow([r[k] for k in key_fields] + [
                        'x'.join(map(str, row[f])) if f in ('kernel', 'output_shape') and row[f] is not None
                        else row.get(f) for f in LAYER_FIELDS])
        else:
            fields = FIELDS + (MEASURE_FIELDS if measured else ())
            writer.writerow(fields)
            for r in records:
                writer.writerow(['' if r.get(f) is None else r.get(f) for f in fields])
        return buffer.getvalue().rstrip('\n')
    if fmt not in ('table', 'markdown'):
        raise ValueError(f'format={fmt!r}; allowed: table, json, csv, markdown')
    header = list(TABLE_COLUMNS) + (['infer img/s', 'train img/s', 'steal'] if measured else [])
    render = _aligned if fmt == 'table' else _markdown
    lines = render(header, [_table_row(r) for r in records])
    steal_warnings = [machine.steal_warning(f"{r['model']} α={r['alpha']:g} {r['resolution']}", r.get('steal'))
                      for r in records]
    if any(steal_warnings):
        lines += [''] + [w for w in steal_warnings if w]
    for r in records:
        if 'layers' in r:
            title = (f"{r['model']} α={r['alpha']:g}" + (f" g={r['groups']}" if r['groups'] is not None else '')
                     + f" {r['resolution']}x{r['resolution']}")
            lines += ['', f'### {title}' if fmt == 'markdown' else f'{title}:', '']
            lines += render(LAYER_COLUMNS, _layer_table_rows(r))
            lines += ['', f'MACs by layer kind: {_kind_summary(r)}']
    return '\n'.join(lines)
