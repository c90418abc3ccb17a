"""Independent models trained side by side on the CPU's cores: one Python thread per model.

A small network's ops are too small to split well across cores, so K models each on its own core
with single-threaded ops beat K models one after another with every op split across the cores:
on the 2-core machine, digits ConvNets at K = 20 trained 1.2-1.5x faster this way (IPC 2 to 5,
1.07-1.19x at IPC 10; benchmarks/README.md). torch releases the GIL inside its kernels and runs
a CPU backward on the calling thread, so plain threads get the cores without copying any data;
the per-step Python work still takes turns on the GIL, which is why tiny steps batch better
(dd.image.batched). Each job must own its model, optimiser and generator; the results are those
of running the jobs one after another with one thread each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager

import torch

from dd.errors import DDError


class Stopped(Exception):
    """Raised inside a job that saw the stop flag: another job failed, or the run was interrupted."""


def check_workers(value, key: str = "eval.workers") -> int | None:
    """`value` if it is null or a positive integer, else a one-line error naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DDError(f"{key}={value} is not allowed; give a positive number of models at once, or null (auto)")
    return value


def worker_count(setting: int | None, jobs: int, device) -> int:
    """Models trained at once: 1 off the CPU; on the CPU `setting`, or by default as many as torch has
    threads (the cores it would otherwise split each op across), never more than there are jobs."""
    if torch.device(device).type != "cpu":
        return 1
    wanted = torch.get_num_threads() if setting is None else setting
    return max(1, min(wanted, jobs))


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """torch ops on one thread each while the jobs run; the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_jobs(job: Callable[[int, threading.Event], object], count: int, workers: int,
             on_done: Callable[[int, object], None] | None = None) -> list:
    """[job(0, stop), ..., job(count - 1, stop)] in index order, `workers` at a time.

    A job should return early by raising Stopped when `stop` is set (checked, say, once per epoch):
    the first job to fail, or a KeyboardInterrupt, sets it, and its exception is the one raised.
    `on_done(i, result)` runs in the calling thread as each job finishes (a progress bar)."""
    stop = threading.Event()
    if workers <= 1:
        results = []
        for i in range(count):
            results.append(job(i, stop))
            if on_done:
                on_done(i, results[-1])
        return results

    def single_threaded_job(i: int):
        if stop.is_set():
            raise Stopped
        torch.set_num_threads(1)  # each thread keeps its own OpenMP setting
        try:
            return job(i, stop)
        except BaseException:
            stop.set()  # no job starts after a failure, and the running ones end early
            raise

    results: dict[int, object] = {}
    with single_threaded_ops(), ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(single_threaded_job, i): i for i in range(count)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                failed = [f.exception() for f in done if f.exception() is not None]
                if failed:  # the failure itself, not the Stopped it caused elsewhere
                    raise next((e for e in failed if not isinstance(e, Stopped)), failed[0])
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    if on_done:
                        on_done(i, results[i])
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise
    return [results[i] for i in range(count)]
