"""Train-step and inference throughput of the zoo in JAX, per depthwise implementation, next to PyTorch.

    python benchmarks/throughput.py --models=mobilenet_v1,cifar_mobilenet_v1 --batch_size=32 --image_size=224

For each model and each `--impls` entry: the compile time of the JAX train step (`mobilenets_jax.steps`,
the step training runs, on one device: forward, backward, TF-RMSprop from
`mobilenets_jax.optim.create_optimizer`, BatchNorm statistics update, top-1/top-5; no EMA), then train and
inference images/sec as the median of `--repeats` synchronized timings after `--warmup` calls (each timed
call preceded by at least `--settle` untimed ones and `--settle_s` seconds of them, see
`_interleaved_rates`). When
`import torch` works (and not `--no_torch`), the same network (`benchmarks/torch_models.py`, same
parameter count, checked) with `torch.optim.RMSprop(alpha=0.9, momentum=0.9, eps=1.0)` is timed in the
same run, NCHW and/or channels-last. Inputs are synthetic arrays already in memory: these numbers
exclude the input pipeline. Prints a table and one JSON line per model (prefix `JSON `); the header
and every JSON line name the malloc in use (on CPU, preload tcmalloc: docs/performance.md). Each row
also gives the share of CPU time the hypervisor stole while it was timed (Linux's /proc/stat), with a
warning above 3%: on a shared VM such a row is not a measurement of the code.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mobilenets_jax as mj  # noqa: E402
from mobilenets_jax import cli_utils, compilation_cache, cost, ops, optim, steps  # noqa: E402
from mobilenets_jax.cost import machine  # noqa: E402


def _interleaved_rates(runners, batch_size, warmup, repeats, settle=1, settle_s=0.0, clock=time.perf_counter):
    """Median images/sec of each runner, timed round-robin so that load from other processes on the
    machine hits every contender alike (sequential blocks would turn load swings into fake ratios).

    Each turn first makes untimed "settle" calls: at least `settle` of them, and more until `settle_s`
    seconds have passed. The first calls after another framework's runs pay for that framework's
    still-spinning worker threads (libgomp, PyTorch's OpenMP runtime, spin-waits after each parallel
    region by default) and for the caches it evicted; for calls of a few milliseconds one settle call
    is not enough (docs/performance.md, "Method", has the measurements).

    `clock` returns seconds (tests pass a counter instead of the wall clock).
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in runners}
    for _ in range(repeats):
        for key, fn in runners.items():
            settle_end = clock() + settle_s
            for _ in range(settle):
                fn()
            while clock() < settle_end:
                fn()
            start = clock()
            fn()
            times[key].append(clock() - start)
    return {key: batch_size / statistics.median(t) for key, t in times.items()}


def print_row(line, row, what):
    """Prints a table line (with `row['steal']` appended), a warning if that steal is high, and the JSON line."""
    steal = row.get('steal')
    if steal is not None:
        line += f'  steal {100 * steal:.0f}%'
    print(line, flush=True)
    warning = machine.steal_warning(what, steal)
    if warning:
        print(f'# {warning}', flush=True)
    print('JSON ' + json.dumps(row), flush=True)


def best_rates(contenders: dict) -> dict:
    """{'train', 'infer'}: the best images/sec over one framework's contenders (impls or layouts) of a row."""
    return {mode: max(rates[mode] for rates in contenders.values()) for mode in ('train', 'infer')}


def non_negative_seconds(text):
    """argparse type of --settle_s: a number of seconds >= 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f'{text!r}: expected a number of seconds >= 0')
    return seconds


def jax_benchmark(name, impl, args, num_classes, groups, size, compile_only=False):
    model = mj.create_model(name, num_classes=num_classes, alpha=args.alpha, groups=groups, dtype=args.dtype,
                            depthwise_impl=impl)
    shape = (args.batch_size, size, size, 3)
    variables = mj.init_variables(model, seed=0, input_shape=shape)
    tx = optim.create_optimizer(learning_rate_fn=0.01, weight_decay=4e-5)
    rng = np.random.default_rng(0)
    batch = {'image': jnp.asarray(rng.uniform(-1, 1, size=shape), jnp.float32),
             'label': jnp.asarray(rng.integers(0, num_classes, size=args.batch_size), jnp.int32)}
    # The step train_lib trains with, on one device, with PyTorch's loss and update: cross-entropy without
    # label smoothing, no weight EMA. Each leaf gets its own buffer: the step donates the state.
    train_step = steps.make_train_step(model, tx, num_classes, steps.create_mesh(jax.devices()[:1]),
                                       label_smoothing=0.0, ema_decay=0.0)
    state = jax.tree.map(jnp.array, steps.state_from(variables, tx.init(variables['params']),
                                                      jax.random.key_data(jax.random.key(1))))

    start = time.perf_counter()
    with compilation_cache.CompileEvents() as events:
        train = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    if compile_only:
        return dict(compile_s=compile_s, from_cache=events.cache_hits > 0)
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, batch['image']).compile()
    n_params = cost.count_variables(variables)['params']
    current = [state]

    def run_train():
        current[0], metrics = train(current[0], batch)
        jax.block_until_ready(metrics)

    def run_infer():
        jax.block_until_ready(infer({'params': current[0]['params'], 'batch_stats': current[0]['batch_stats']},
                                    batch['image']))

    return dict(train=run_train, infer=run_infer, compile_s=compile_s, params=n_params)


def torch_benchmark(name, args, num_classes, groups, channels_last, size):
    import torch
    from benchmarks import torch_models
    torch.manual_seed(0)
    model = torch_models.create_torch_model(name, num_classes, args.alpha, groups)
    images = torch.rand(args.batch_size, 3, size, size) * 2 - 1
    labels = torch.randint(0, num_classes, (args.batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.9, eps=1.0, weight_decay=4e-5)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run_train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()

    def run_infer():
        model.eval()
        with torch.inference_mode():
            model(images)

    return dict(train=run_train, infer=run_infer, params=torch_models.count_params(model))


def compile_times(args):
    """Train-step compile seconds (tracing and lowering included) per model and depthwise implementation,
    one JSON line per model. With `--compilation_cache_dir`, a second run shows the time to load each step
    from JAX's persistent cache instead (marked '(cache)', `from_cache` in the JSON)."""
    impls = [i for i in args.impls.split(',') if i]
    host = machine.host_cpu()
    print(f'# {host}; JAX {jax.__version__} on {jax.default_backend()}; train-step compile seconds; '
          f'batch {args.batch_size}; '
          f'allocator: {cli_utils.preloaded_allocator() or "glibc malloc"}')
    print(f'{"model":22s} {"res":>4s} ' + ' '.join(f'{i:>18s}' for i in impls), flush=True)
    rows = []
    for name in args.models.split(','):
        spec = mj.get_spec(name)
        size = args.image_size or spec.base_resolution
        results = {impl: jax_benchmark(name, impl, args, spec.default_num_classes, spec.default_groups, size,
                                       compile_only=True) for impl in impls}
        seconds = {impl: r['compile_s'] for impl, r in results.items()}
        from_cache = {impl: r['from_cache'] for impl, r in results.items()}
        print(f'{name:22s} {size:4d} ' + ' '.join(
            f'{seconds[i]:.1f}s{" (cache)" if from_cache[i] else ""}'.rjust(18) for i in impls), flush=True)
        row = dict(model=name, image_size=size, batch_size=args.batch_size, compile_s=seconds,
                   from_cache=from_cache, host_cpu=host)
        print('JSON ' + json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', default=','.join(mj.list_models()))
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=None, help='default: the model\'s base resolution')
    parser.add_argument('--alpha', type=float, default=1.0)
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    parser.add_argument('--impls', default='xla,shifted,shifted_autodiff',
                        help=f'depthwise implementations to time ({", ".join(ops.DEPTHWISE_IMPLS)})')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--settle', type=int, default=1,
                        help='untimed calls at the start of each round-robin turn (see _interleaved_rates)')
    parser.add_argument('--settle_s', type=non_negative_seconds, default=0.2,
                        help='keep making untimed calls until this many seconds of the turn have passed')
    parser.add_argument('--no_torch', action='store_true')
    parser.add_argument('--torch_layouts', default='nchw,channels_last')
    parser.add_argument('--compile_only', action='store_true',
                        help='only compile each train step and report the compile seconds per --impls entry')
    parser.add_argument('--compilation_cache_dir', default='',
                        help='with --compile_only: JAX\'s persistent compilation cache, to time loading from it '
                             '(default: off, so every step is compiled)')
    args = parser.parse_args(argv)
    if args.compilation_cache_dir and not args.compile_only:
        parser.error('--compilation_cache_dir times loading from the cache: it needs --compile_only')
    compilation_cache.enable(args.compilation_cache_dir)
    if args.compile_only:
        return compile_times(args)

    try:
        if args.no_torch:
            raise ImportError
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    impls = [i for i in args.impls.split(',') if i]
    auto = ops.resolve_depthwise_impl('auto')
    allocator = cli_utils.preloaded_allocator() or 'glibc malloc'
    host = machine.host_cpu()
    print(f'# {host}; JAX {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); '
          f'auto -> {auto}; PyTorch {torch_version or "not installed"}; batch {args.batch_size}; {args.dtype}; '
          f'allocator: {allocator}')
    header = (f'{"model":22s} {"res":>4s} ' + ' '.join(f'{i + " tr/inf/comp":>28s}' for i in impls)
              + ('  torch ' + ' '.join(f'{l + " tr/inf":>22s}' for l in args.torch_layouts.split(','))
                 if torch_version else '') + '  ratio(best jax/best torch) tr, inf  steal')
    print(header, flush=True)
    rows = []
    for name in args.models.split(','):
        spec = mj.get_spec(name)
        size = args.image_size or spec.base_resolution
        groups = spec.default_groups
        num_classes = spec.default_num_classes
        result = dict(model=name, batch_size=args.batch_size, image_size=size, alpha=args.alpha,
                      dtype=args.dtype, backend=jax.default_backend(), auto=auto, allocator=allocator,
                      host_cpu=host, jax={}, torch={})
        for impl in impls:
            result['jax'][impl] = jax_benchmark(name, impl, args, num_classes, groups, size)
        if torch_version:
            for layout in args.torch_layouts.split(','):
                result['torch'][layout] = torch_benchmark(name, args, num_classes, groups, layout == 'channels_last', size)
                assert result['torch'][layout]['params'] == next(iter(result['jax'].values()))['params'], \
                    'PyTorch mirror has a different parameter count'
        with machine.record_steal(result):
            for mode in ('train', 'infer'):
                runners = {(fw, key): r[mode] for fw in ('jax', 'torch') for key, r in result[fw].items()}
                rates = _interleaved_rates(runners, args.batch_size, args.warmup, args.repeats, args.settle,
                                            args.settle_s)
                for (fw, key), rate in rates.items():
                    result[fw][key][mode] = rate
        best_jax = best_rates(result['jax'])
        line = f'{name:22s} {size:4d} ' + ' '.join(
            f'{r["train"]:8.2f}/{r["infer"]:8.2f}/{r["compile_s"]:5.1f}s'.rjust(28) for r in result['jax'].values())
        if result['torch']:
            best_torch = best_rates(result['torch'])
            result['ratio'] = {k: best_jax[k] / best_torch[k] for k in ('train', 'infer')}
            if auto in result['jax']:
                result['ratio_auto'] = {k: result['jax'][auto][k] / best_torch[k] for k in ('train', 'infer')}
            line += '  ' + ' '.join(f'{r["train"]:10.2f}/{r["infer"]:10.2f}' for r in result['torch'].values())
            line += f'  {result["ratio"]["train"]:5.2f}x {result["ratio"]["infer"]:5.2f}x'
        print_row(line, result, name)
        rows.append(result)
    return rows


if __name__ == '__main__':
    main()
