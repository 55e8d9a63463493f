"""Flow ``refresh-shards``: the weekly incremental refresh (new version with only the changes)."""

from __future__ import annotations

from prefect import flow

from flows.common import DEFAULT_SHARD_CONFIG, DEMO_SOURCE, ParamStr, configure_env, default_shards, project_path
from flows.tasks import prepare_sources, write_shards


@flow(name="refresh-shards", log_prints=True)
def refresh_shards(sources: list[ParamStr] | None = None, output: ParamStr | None = None,
                   config: ParamStr = DEFAULT_SHARD_CONFIG, overrides: list[ParamStr] | None = None) -> dict:
    """Compare ``sources`` with the dataset's latest version and write a new version with new and
    changed sources processed and removed ones dropped (nothing written when nothing changed)."""
    configure_env()
    items = prepare_sources(sources or [DEMO_SOURCE])
    return write_shards(items, project_path(output or default_shards()), config, list(overrides or []), "refresh")
