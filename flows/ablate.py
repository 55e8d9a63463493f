"""Flow ``ablate``: the Table-1 / FFT-DWT ablation harness (``pvq_model.eval.ablate``), each variant a task.

Every variant trains at the debug width with the same data, seed and step budget, then its EMA
export is evaluated. Every config is validated first (a bad key fails the run before anything
trains); a variant whose training or evaluation fails is a row of the table with its error, not
the end of the run. Outputs as ``pvq ablate``: ``ablation.md``, ``ablation.json``, curves and the HTML report.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import flow, task

from flows.common import ROOT, ParamStr, configure_env, default_shards, project_path, work_dir


@task(name="run-variant", task_run_name="variant-{variant}")
def run_variant(variant: str, config: str, data: str, steps: int, out: str, common: list[str], split: str,
                limit: int | None) -> dict:
    """Train and evaluate one variant (no retries: a failure is deterministic and is recorded)."""
    from pvq_model.eval import ablate

    return dataclasses.asdict(ablate.run_variant(config, data, steps, out, common, split=split, limit=limit))


@flow(name="ablate", log_prints=True)
def ablate_flow(configs: list[ParamStr] | None = None, data: ParamStr | None = None, steps: int = 40,
                out: ParamStr | None = None, split: ParamStr = "val", seed: int = 42, limit: int | None = None) -> dict:
    """Run the ablation over ``configs`` (default every file in configs/ablations/) on the shard
    dataset ``data`` (default the demo shards, built by the shard-data subflow when missing).
    Returns {"table", "out", "failed"}."""
    configure_env()
    from data_prep import manifest
    from pvq_model.eval import ablate

    data = project_path(data or default_shards())
    if manifest.latest_version(data) is None:
        from flows.shard_data import shard_data

        shard_data(sources=["demo"], output=data)
    files = ablate.expand_configs(configs or [str(ROOT / "configs" / "ablations" / "*.yaml")])
    files, data = ablate.prepare(files, data, steps)
    out = project_path(out or str(work_dir() / "ablation"))
    buckets = ablate.small_buckets(data)
    common = ablate.common_overrides(data, steps, buckets, seed)
    from pvq_model.config import load_config

    for f in files:  # a bad config fails the run before any variant trains
        load_config(ablate.DEBUG_CONFIG, ablate.variant_overrides(f)[1] + list(common))
    t0 = time.perf_counter()
    results = [ablate.VariantResult(**run_variant(Path(f).stem, str(f), data, steps, out, common, split, limit))
               for f in files]
    table = ablate.write_outputs(results, out, steps=steps, seed=seed, data=data, split=split, buckets=buckets,
                                 wall_s=time.perf_counter() - t0)
    print(table)
    return {"table": table, "out": str(out), "failed": [r.variant for r in results if r.error]}
