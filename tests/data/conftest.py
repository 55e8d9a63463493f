"""Fixtures of the data-pipeline tests: the generated demo set, one Ray cluster, a moto S3 server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from data_prep.config import load_shard_config
from data_prep.samples import make_demo_set
from pvq_common.env import missing_local_env

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "shard" / "demo.yaml"

# the loopback-only settings (pvq_common.env.LOCAL_ENV) for this test process and the Ray cluster it starts
os.environ.update(missing_local_env())


def pytest_configure(config):
    # Ray Data's DataContext warns about its own deprecated fields whenever it is touched
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The embedded demo set (synthetic videos, images, broken inputs, CSV + COCO json)."""
    return make_demo_set(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def demo_cfg():
    def make(*overrides: str):
        return load_shard_config(DEMO_CONFIG, list(overrides))

    return make


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (ray.init takes 3-4 s); yields its address."""
    import ray

    ray.init(num_cpus=2, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free 127.0.0.1 port, with the AWS env pointing at it; stopped at the end."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
