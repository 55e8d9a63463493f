"""Fixtures of the flow tests: a private PREFECT_HOME and PVQ_WORK_DIR, one Prefect test harness,
the demo set sharded once, and MLflow sqlite stores in temporary folders (never ./mlruns).

The Prefect home and work dir are set here, before Prefect is imported by any test module; the
loopback-only settings (analytics, telemetry: DESIGN.md §5) come from tests/conftest.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pvq-flows-"))
# on top of the loopback-only settings tests/conftest.py applies: a private Prefect home and work dir
os.environ.update({
    "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PVQ_WORK_DIR": str(_SESSION_DIR / "work"),
})
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

SHARD_OVERRIDES = ["ray.num_cpus=1", "ray.object_store_memory=1073741824"]
TRAIN_OVERRIDES = ["train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=1000", "data.frames=[16]"]


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shards(session_dir) -> dict:
    """The embedded demo set sharded once with configs/shard/demo.yaml (task functions, no Prefect run)."""
    from flows.common import DEFAULT_SHARD_CONFIG
    from flows.tasks import prepare_sources, write_shards

    sources = prepare_sources.fn(["demo"])
    res = write_shards.fn(sources, str(session_dir / "shards"), DEFAULT_SHARD_CONFIG, SHARD_OVERRIDES)
    yield res
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def train_overrides() -> list[str]:
    return list(TRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def shard_overrides() -> list[str]:
    return list(SHARD_OVERRIDES)
