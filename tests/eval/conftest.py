"""Fixtures of the evaluation tests: a randomly initialised debug model saved as a training export,
and the embedded demo set sharded once (train + val splits) with data_prep directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised debug model saved as a training export would be."""
    import torch

    from pvq_model.config import load_config
    from pvq_model.vae import PVQVAE

    torch.manual_seed(0)
    return PVQVAE(load_config(ROOT / "configs" / "debug.yaml")).eval().save_pretrained(
        tmp_path_factory.mktemp("tiny") / "tiny_model")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """The embedded demo set sharded once with configs/shard/demo.yaml (one Ray CPU); the dataset path."""
    from pvq_common.env import missing_local_env

    os.environ.update(missing_local_env())  # before Ray starts: no usage stats, loopback only
    from data_prep.config import load_shard_config
    from data_prep.samples import make_demo_set
    from data_prep.shard import shard

    root = tmp_path_factory.mktemp("eval-data")
    demo = make_demo_set(root / "sources")
    shard([str(demo.csv), str(demo.coco_json)], str(root / "shards"),
          load_shard_config(ROOT / "configs" / "shard" / "demo.yaml",
                            ["ray.num_cpus=1", "ray.object_store_memory=1073741824"]))
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return str(root / "shards")
