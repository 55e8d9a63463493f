"""Flow ``shard-data``: sources -> Ray Data sharding -> a manifest version of a shard dataset."""

from __future__ import annotations

from prefect import flow

from flows.common import DEFAULT_SHARD_CONFIG, DEMO_SOURCE, ParamStr, configure_env, default_shards, project_path
from flows.tasks import prepare_sources, write_shards


@flow(name="shard-data", log_prints=True)
def shard_data(sources: list[ParamStr] | None = None, output: ParamStr | None = None,
               config: ParamStr = DEFAULT_SHARD_CONFIG, overrides: list[ParamStr] | None = None) -> dict:
    """Shard ``sources`` (CSV, COCO json, folders, s3:// prefixes; ``demo`` = the embedded demo set)
    into ``output`` (local or s3://; default PVQ_WORK_DIR/shards/demo) with the shard ``config``.
    An existing dataset at ``output`` is refreshed instead (nothing written when unchanged).
    Returns {"output", "version", "wrote", "message", "stats"}."""
    configure_env()
    items = prepare_sources(sources or [DEMO_SOURCE])
    return write_shards(items, project_path(output or default_shards()), config, list(overrides or []), "shard")
