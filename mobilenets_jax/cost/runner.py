"""Many configurations: `analyze` for each, in a process pool, with a progress line per configuration."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue as queue_lib
import time
from typing import Callable, Optional, Sequence

from mobilenets_jax.cost.analysis import analyze
from mobilenets_jax.cost.configs import Config


_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _run_task(task: tuple) -> list:
    """Worker side: analyze the configurations of one group (they share one traced parameter tree)."""
    indexed_configs, options = task
    results = []
    for index, config in indexed_configs:
        start = time.perf_counter()
        try:
            record = analyze(config.model, config.alpha, config.groups, config.resolution, config.num_classes,
                             **options)
            results.append((index, record, None))
        except Exception as error:  # noqa: BLE001 — reported by the parent with the configuration
            results.append((index, None, f'{type(error).__name__}: {error}'))
        if _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put((index, time.perf_counter() - start))
    return results


def _describe(config: Config) -> str:
    groups = f' g={config.groups}' if config.groups is not None else ''
    return f'{config.model} α={config.alpha:g}{groups} {config.resolution}'


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f'{seconds // 60}:{seconds % 60:02d}'


def run_configs(configs: Sequence[Config], *, workers: Optional[int] = None,
                progress: Optional[Callable[[str], None]] = None, **options) -> list[dict]:
    """`analyze` for every configuration, in order; with more than one worker, in a process pool.

    Configurations that differ only in resolution go to the same worker (their parameter shapes are
    traced once). `progress` receives one line per finished configuration ("[n/N] ..., ETA m:ss").
    Raises RuntimeError naming the configuration if one of them fails.
    """
    configs = list(configs)
    total = len(configs)
    groups: dict = {}
    for index, config in enumerate(configs):
        groups.setdefault(config.group_key, []).append((index, config))
    if workers is None:
        workers = 1 if total < 4 or options.get('measure') else min(os.cpu_count() or 1, len(groups), 8)
    workers = max(1, min(int(workers), len(groups)))
    start = time.perf_counter()
    done = 0
    records: list = [None] * total

    def report(index: int, seconds: float) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            progress(f'[{done}/{total}] {_describe(configs[index])}: {seconds:.1f} s · '
                     f'elapsed {_format_duration(elapsed)} · ETA {_format_duration(eta)}')

    def collect(results: list) -> None:
        for index, record, error in results:
            if error is not None:
                raise RuntimeError(f'{_describe(configs[index])} failed: {error}')
            records[index] = record

    # Biggest groups first, so that the last task to finish is a short one.
    tasks = sorted(groups.values(), key=len, reverse=True)
    if workers == 1:
        for task in tasks:
            for item in task:
                t0 = time.perf_counter()
                collect(_run_task(([item], options)))
                report(item[0], time.perf_counter() - t0)
        return records

    context = multiprocessing.get_context('spawn')   # never fork a process that has started XLA threads
    progress_queue = context.Queue()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                                initargs=(progress_queue,)) as pool:
        futures = [pool.submit(_run_task, (task, options)) for task in tasks]
        pending = set(futures)
        while pending or done < total:
            try:
                index, seconds = progress_queue.get(timeout=0.2)
                report(index, seconds)
            except queue_lib.Empty:
                pass
            finished = {f for f in pending if f.done()}
            for future in finished:
                collect(future.result())
            pending -= finished
            if not pending and done < total:
                # Every task has returned: drain what is left of the progress messages.
                try:
                    index, seconds = progress_queue.get(timeout=5.0)
                    report(index, seconds)
                except queue_lib.Empty:
                    break
    return records
