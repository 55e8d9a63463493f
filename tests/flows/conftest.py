"""Fixtures of the flow tests: a private PREFECT_HOME and PVQ_WORK_DIR, one Prefect test harness,
the demo set sharded once, and MLflow sqlite stores in temporary folders (never ./mlruns).

The environment is set here, before Prefect is imported by any test module, so Prefect's
settings (home, analytics) and MLflow's telemetry switch are the local-only ones (DESIGN.md §5)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pvq-flows-"))
for key, value in {
    "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "PVQ_WORK_DIR": str(_SESSION_DIR / "work"),
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions")),
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}.items():
    os.environ[key] = value
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


@pytest.fixture(scope="session")
def tiny_model(session_dir) -> Path:
    """A randomly initialised debug model saved as a training export would be."""
    import torch

    from pvq_model.config import load_config
    from pvq_model.vae import PVQVAE

    torch.manual_seed(0)
    return PVQVAE(load_config(ROOT / "configs" / "debug.yaml")).eval().save_pretrained(session_dir / "tiny_model")


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.data.context")


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def train_overrides() -> list[str]:
    return list(TRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def shard_overrides() -> list[str]:
    return list(SHARD_OVERRIDES)
