"""The shard job's embedded executor: the same tasks as on Ray, on a local process pool.

A small job on one machine spends more on Ray's start-up (``ray.init`` 3-4 s, the executor's helper
actors and worker imports ~2.4 s) than on its ffmpeg work, so :func:`pick_executor` sends it here:
a ``ProcessPoolExecutor`` of ``ray.num_cpus`` workers forked from the driver (which has imported
everything a task needs, so a worker is ready in milliseconds). Each task is the very function Ray
Data runs (``map_batches`` on one group of rows), so both executors write the same bytes (tested).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import numpy as np

from data_prep.config import ShardConfig
from data_prep.ray_runtime import task_groups


def ray_running() -> bool:
    """Whether this process is connected to Ray already (a flow, a notebook, the tests started it)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def pick_executor(cfg: ShardConfig, n_sources: int) -> str:
    """``"local"`` or ``"ray"`` for a job over ``n_sources`` sources.

    ``executor: auto`` takes Ray when ``ray.address`` is set (a cluster was asked for), when this
    process is connected to Ray already, or above ``local_max_sources`` sources; else the local pool.
    """
    if cfg.executor != "auto":
        return cfg.executor
    if cfg.ray.address or ray_running() or n_sources > cfg.local_max_sources:
        return "ray"
    return "local"


def _context():
    # fork: the workers inherit the driver's imports (a spawned or forkserver worker re-imports
    # ~0.4 s of modules first). A driver connected to Ray holds gRPC threads that must not be
    # forked: then the workers come from a fresh fork server, which imports the main module as
    # multiprocessing does (a script needs its `if __name__ == "__main__":` guard; only an explicit
    # `executor: local` gets here, `auto` takes Ray in such a process).
    if not ray_running():
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["data_prep.transform"])  # imported once, in the server
    return ctx


def run_local(rows: list, fn: Callable, key: str, per_task: int, fn_kwargs: dict, workers: int,
              progress: Callable[[int], None] | None, on_crash: Callable[[dict], dict],
              on_start: Callable[[], None] | None = None) -> list[dict]:
    """``fn`` (a Ray Data ``map_batches`` function) over ``rows`` in groups of :func:`task_groups`
    sizes, ``workers`` at a time; returns the json-decoded rows of its output column, in
    completion order, calling ``progress(1)`` for each, as :func:`data_prep.ray_runtime.run_ray`.

    ``on_start()`` is called once the workers are forked: the driver may start threads from then on.
    A worker that dies (a crash in a library, the OOM killer) breaks the pool: the groups it had not
    finished run again one row per task in a fresh pool, and a row whose worker dies again gets
    ``on_crash(row)`` as its result, so one bad input never ends the job.
    """
    if not rows:
        return []
    groups, i = [], 0
    for g in task_groups(len(rows), per_task, workers):
        groups.append(rows[i:i + g])
        i += g
    out: list[dict] = []
    left = _run_groups(groups, fn, key, fn_kwargs, workers, progress, out, on_start)
    for row in (r for g in left for r in g):  # after a crash: alone, so a second crash names its row
        if _run_groups([[row]], fn, key, fn_kwargs, 1, progress, out, None):
            out.append(on_crash(row))
            if progress:
                progress(1)
    return out


def _run_groups(groups: list[list], fn: Callable, key: str, fn_kwargs: dict, workers: int,
                progress: Callable[[int], None] | None, out: list[dict],
                on_start: Callable[[], None] | None) -> list[list]:
    """Run ``groups`` on a fresh pool, appending results to ``out``; returns the groups a broken pool left."""
    ctx = _context()
    fork = ctx.get_start_method() == "fork"
    pool = ProcessPoolExecutor(max_workers=min(workers, len(groups)), mp_context=ctx,
                               initializer=_die_with_parent if fork else None, initargs=(os.getpid(),) if fork else ())
    pending = {pool.submit(_call, fn, key, json.dumps(g), fn_kwargs): g for g in groups}  # forks all workers
    broken: list[list] = []
    if on_start:
        on_start()
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                g = pending.pop(f)
                try:
                    results = f.result()
                except BrokenProcessPool:
                    broken.append(g)
                    continue
                for r in results:
                    out.append(json.loads(r))
                    if progress:
                        progress(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return broken


def _die_with_parent(parent: int) -> None:
    """Pool initializer of a forked worker: it dies with the driver, ``kill -9`` included
    (``PR_SET_PDEATHSIG``). It must not outlive the job: it shares the driver's open files, the
    ``flock`` on ``OUT/.lock`` among them, so a rerun would be refused until it finished its task."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before the line above
        os._exit(1)


def _call(fn: Callable, key: str, group_json: str, fn_kwargs: dict) -> list[str]:
    res = fn({key: np.array([group_json], dtype=object)}, **fn_kwargs)  # one batch, as Ray Data hands it
    return list(res[next(iter(res))])
