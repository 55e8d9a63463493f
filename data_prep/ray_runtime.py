"""Ray for the shard job: start or join a cluster that stays on 127.0.0.1, and run one function
over groups of rows as Ray Data tasks, sized by guided self-scheduling."""

from __future__ import annotations

import json
from typing import Callable

from data_prep.config import ShardConfig
from pvq_common.env import missing_local_env, scoped_env

RAY_ENV_KEYS = ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
"""The settings of :data:`pvq_common.env.LOCAL_ENV` that Ray's own processes must start with."""


def ensure_ray(cfg: ShardConfig) -> None:
    """Start (or join) Ray with the settings that keep it on 127.0.0.1 (DESIGN §5).

    The loopback-only Ray settings (:data:`RAY_ENV_KEYS` of :data:`pvq_common.env.LOCAL_ENV`) that the
    caller's environment lacks are set only while ``ray`` is imported and ``ray.init`` starts the
    cluster's processes (which inherit them); ``os.environ`` is restored afterwards.
    """
    keys = RAY_ENV_KEYS if not cfg.ray.address else RAY_ENV_KEYS[:2]  # joining: the cluster binds itself
    with scoped_env(missing_local_env(keys=keys)):
        import ray
        import ray._private.ray_constants as ray_constants

        if not ray.is_initialized():
            r = cfg.ray
            kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            if r.address:  # a cluster started elsewhere: its workers have its environment, not ours
                ray.init(address=r.address, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}, **kwargs)
            else:  # the processes it starts inherit the settings above; a runtime_env would cost ~1 s (measured)
                ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the env was set
                ray.init(num_cpus=r.num_cpus, object_store_memory=r.object_store_memory, **kwargs)
    # also when the caller started Ray itself (a flow, a notebook, the tests)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data reserves part of the CPUs per operator by default; with a single map stage on a
    # small node that holds one of two slots idle for about a second at the start and between
    # tasks (measured: 12 tasks of 0.5 s on 2 CPUs take 4.7 s with it, 3.2 s without)
    ctx.op_resource_reservation_enabled = False


def task_groups(n: int, per_task: int, slots: int) -> list[int]:
    """Sizes of the consecutive groups of ``n`` cost-sorted sources that become Ray tasks.

    Guided self-scheduling: each group takes about 1/(2 x slots) of what is left, at most
    ``per_task`` and at least 1, so the early tasks amortise the per-task overhead and the last
    ones are single (small) sources that fill the idle slots at the end instead of leaving one
    slot busy with a large group while the others wait.
    """
    sizes, left = [], n
    while left > 0:
        g = max(1, min(per_task, -(-left // (2 * max(1, slots)))))
        sizes.append(g)
        left -= g
    return sizes


def run_ray(rows: list, fn: Callable, key: str, per_task: int, fn_kwargs: dict,
            progress: Callable[[int], None] | None) -> list[dict]:
    """``fn`` (a Ray Data ``map_batches`` function) over ``rows``, json-encoded in groups of
    :func:`task_groups` sizes under column ``key``; returns the json-decoded rows of its output
    column, in completion order, calling ``progress(1)`` for each."""
    import ray

    if not rows:
        return []
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups, i = [], 0
    for g in task_groups(len(rows), per_task, slots):
        groups.append({key: json.dumps(rows[i:i + g])})
        i += g
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    ds = ds.map_batches(fn, batch_size=1, fn_kwargs=fn_kwargs, batch_format="numpy")
    out = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for r in batch[next(iter(batch))]:
            out.append(json.loads(r))
            if progress:
                progress(1)
    return out
