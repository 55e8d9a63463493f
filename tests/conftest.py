"""Shared fixtures (plain helpers are in tests/helpers.py). Real footage lives in ../shared/media
(never copied into the project); tests on it are marked ``media`` and skip with the reason when the
folder is absent (a user's fresh clone).

The loopback-only settings (``pvq_common.env.LOCAL_ENV``: no telemetry, no usage stats, no proxy for
127.0.0.1) are applied here once, before any test module imports Ray, MLflow or Prefect."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import ISOLATED, ROOT, TORCH_EXTENSIONS, Isolated, debug_model
from pvq_common.env import missing_local_env

MEDIA = Path(os.environ.get("PVQ_MEDIA_DIR", ROOT.parent / "shared" / "media"))

os.environ.update(missing_local_env())
os.environ.setdefault("TORCH_EXTENSIONS_DIR", TORCH_EXTENSIONS)


def pytest_configure(config):
    # Ray Data's DataContext warns about its own deprecated fields whenever it is touched
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not (MEDIA / "videos").is_dir() or not (MEDIA / "images").is_dir():
        pytest.skip(f"real footage not found at {MEDIA} (set PVQ_MEDIA_DIR or provide ../shared/media); "
                    "the core tests use generated media instead")
    return MEDIA


@pytest.fixture(scope="session")
def configs() -> Path:
    return ROOT / "configs"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised debug model saved as a training export would be (tests/eval, tests/flows)."""
    return debug_model().save_pretrained(tmp_path_factory.mktemp("tiny") / "tiny_model")


@pytest.fixture(scope="session")
def isolated() -> Isolated:
    """Runs commands in infra/local/isolated.sh (tests/train, tests/launch). Checks that it can make
    its namespace (root or user namespaces, unshare and ip; CI runs as root) and that the c10d names
    resolve inside it without DNS; skips with the reason otherwise."""
    res = subprocess.run([str(ISOLATED), "bash", "-c", "getent hosts ::ffff:127.0.0.1 ::1; ip -o addr show"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"infra/local/isolated.sh cannot create a private network namespace here "
                    f"(needs root + unshare): {res.stderr.strip()}")
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["::ffff:127.0.0.1", "localhost"] and lines[1].startswith("::1 ")
    assert all(" lo " in ln for ln in lines[2:]), "the namespace must hold loopback only"
    return Isolated()


@pytest.fixture
def netns_pair(request):
    """Two private network namespaces joined by a veth pair (:class:`helpers.NetnsPair`), removed
    with every process in them when the test ends, also when it fails. Skips without root / ``ip``."""
    import shutil

    from helpers import NetnsPair

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) to make the test's private network")
    NetnsPair.remove_stale("pvqt")
    pair = NetnsPair(f"pvqt{os.getpid()}x{abs(hash(request.node.nodeid)) % 1000}")
    try:
        yield pair.open()
    finally:
        pair.close()
