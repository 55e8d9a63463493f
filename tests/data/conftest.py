"""Fixtures of the data-pipeline tests: the generated demo set, one Ray cluster, a moto S3 server."""

from __future__ import annotations

import pytest

from data_prep.config import load_shard_config
from data_prep.samples import make_demo_set
from helpers import CONFIGS, free_port

DEMO_CONFIG = CONFIGS / "shard" / "demo.yaml"


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


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free 127.0.0.1 port, with the AWS env pointing at it; stopped at the end."""
    from moto.server import ThreadedMotoServer

    port = free_port()
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
