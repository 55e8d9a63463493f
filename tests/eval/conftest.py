"""Fixtures of the evaluation tests: the embedded demo set sharded once (train + val splits) with
data_prep directly (the debug model, ``tiny_model``, is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from helpers import CONFIGS


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """The embedded demo set sharded once with configs/shard/demo.yaml (one Ray CPU); the dataset path."""
    from data_prep.config import load_shard_config
    from data_prep.samples import make_demo_set
    from data_prep.shard import shard

    root = tmp_path_factory.mktemp("eval-data")
    demo = make_demo_set(root / "sources")
    shard([str(demo.csv), str(demo.coco_json)], str(root / "shards"),
          load_shard_config(CONFIGS / "shard" / "demo.yaml",
                            ["ray.num_cpus=1", "ray.object_store_memory=1073741824"]))
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return str(root / "shards")
