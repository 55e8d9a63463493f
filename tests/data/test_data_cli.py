"""``pvq data`` commands through typer's CliRunner on data_prep.cli.app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from data_prep.cli import app
from helpers import CONFIGS

pytestmark = pytest.mark.slow
CONFIG = str(CONFIGS / "shard" / "demo.yaml")


def test_shard_stats_refresh_and_errors(demo, ray_cluster, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "ds")
    src = ["-s", str(demo.csv), "-s", str(demo.coco_json)]
    r = runner.invoke(app, ["shard", *src, "-o", out, "-c", CONFIG, "--set", "shards.maxcount=2"])
    assert r.exit_code == 0, r.output
    assert "wrote v000001" in r.output and "errors by reason: missing" in r.output
    r = runner.invoke(app, ["stats", out, "--json"])
    assert r.exit_code == 0
    stats = json.loads(r.stdout)
    assert stats["samples"] == sum(stats["clips_per_bucket"].values()) > 0
    assert stats["errors"] == len(demo.broken)
    r = runner.invoke(app, ["stats", out])
    assert r.exit_code == 0 and "v000001" in r.stdout
    r = runner.invoke(app, ["refresh", *src, "-o", out, "-c", CONFIG, "--set", "shards.maxcount=2"])
    assert r.exit_code == 0 and "nothing written" in r.output
    # clear errors, non-zero exit codes
    r = runner.invoke(app, ["shard", "-s", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "x"), "-c", CONFIG])
    assert r.exit_code == 1 and "source not found" in r.output
    r = runner.invoke(app, ["shard", *src, "-o", out, "-c", CONFIG, "--set", "shards.maxcount=2"])
    assert r.exit_code == 1 and "already holds a dataset" in r.output
    r = runner.invoke(app, ["shard", *src, "-o", str(tmp_path / "y"), "-c", CONFIG, "--set", "clips.lenghts=[16]"])
    assert r.exit_code == 2 and "clips.lenghts: unknown key" in r.output
    r = runner.invoke(app, ["stats", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no dataset here" in r.output
