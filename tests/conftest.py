"""Shared fixtures. Real footage lives in ../shared/media (never copied into the project); tests on
it are marked ``media`` and skip with the reason when the folder is absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEDIA = Path(os.environ.get("PVQ_MEDIA_DIR", ROOT.parent / "shared" / "media"))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not (MEDIA / "videos").is_dir() or not (MEDIA / "images").is_dir():
        pytest.skip(f"real footage not found at {MEDIA} (set PVQ_MEDIA_DIR or provide ../shared/media); "
                    "the core tests use generated media instead")
    return MEDIA


@pytest.fixture(scope="session")
def configs() -> Path:
    return ROOT / "configs"
