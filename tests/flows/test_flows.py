"""The flows' wiring under ``prefect_test_harness``: train-pvq end to end in-process (the
shard-data subflow, training, evaluation, registry), a rerun that resumes from the cache,
bad parameters failing fast with nothing registered, reevaluate and refresh-shards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows import registry
from flows.common import MODEL_NAME
from helpers import ROOT


@pytest.fixture(scope="module")
def mlflow_uri(session_dir) -> str:
    return f"sqlite:///{session_dir / 'flows-mlflow' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(harness, session_dir, mlflow_uri, train_overrides):
    from flows.train_pvq import train_pvq

    (session_dir / "flows-mlflow").mkdir(exist_ok=True)
    data = str(session_dir / "flow-shards")
    state = train_pvq(overrides=train_overrides, data=data, sources=["demo"], tracking_uri=mlflow_uri,
                      return_state=True)
    assert state.is_completed(), state.message
    return state.result(), data


def test_train_pvq_registers_champion_with_provenance(trained, mlflow_uri, session_dir):
    res, data = trained
    c = registry.client(mlflow_uri)
    mv = c.get_model_version(MODEL_NAME, res["version"])
    assert res["promoted"] is True and res["champion"] == res["version"]  # the first version is champion
    assert str(c.get_model_version_by_alias(MODEL_NAME, "champion").version) == res["version"]
    assert set(mv.aliases) == {"challenger", "champion"}
    assert len(mv.tags["git_commit"]) == 40 and mv.tags["data_version"] == "v000001"
    assert mv.tags["data_path"] == data and mv.tags["seed"] == "42"
    run = c.get_run(res["run_id"])
    assert run.data.params["train.steps"] == "4" and run.data.params["train.data_path"] == data
    assert run.data.tags["git_commit"] == mv.tags["git_commit"]
    assert float(mv.tags["eval_score"]) == pytest.approx(run.data.metrics["eval/overall/psnr"])
    assert run.data.metrics["eval/videos/clips"] >= 1 and run.data.metrics["eval/images/clips"] >= 1
    assert "eval/overall/lpips" not in run.data.metrics  # no LPIPS weights: absent
    artifacts = {f.path for f in c.list_artifacts(res["run_id"])}
    assert {"config.json", "deepspeed_config.json", "export", "evaluation", "report"} <= artifacts
    assert Path(res["report"]).is_file() and "<html" in Path(res["report"]).read_text().lower()
    # artifacts went to the store's folder under PVQ_WORK_DIR, never ./mlruns
    assert run.info.artifact_uri.startswith((session_dir / "work" / "mlflow" / "artifacts").as_uri())


def test_rerun_resumes_from_cache_without_new_run_or_version(trained, mlflow_uri, train_overrides):
    from flows.train_pvq import train_pvq

    res, data = trained
    again = train_pvq(overrides=train_overrides, data=data, tracking_uri=mlflow_uri)
    assert again["run_id"] == res["run_id"] and again["version"] == res["version"]
    c = registry.client(mlflow_uri)
    assert len(c.search_model_versions(f"name='{MODEL_NAME}'")) == 1
    assert len(c.search_runs([c.get_experiment_by_name("pvq-vae").experiment_id])) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": ["train.stepz=3"]}, r"train\.stepz"),
    ({"data": "/nonexistent/shards"}, "no shard dataset at /nonexistent/shards"),
    ({"launcher": "mpi"}, "launcher 'mpi' is unknown"),
    ({"sources": ["/nonexistent/webvid.csv"], "data": "/tmp/pvq-no-such-shards"}, "does not exist"),
])
def test_bad_parameters_fail_fast_and_register_nothing(harness, trained, mlflow_uri, kwargs, message):
    from flows.train_pvq import train_pvq

    c = registry.client(mlflow_uri)
    before = len(c.search_model_versions(f"name='{MODEL_NAME}'"))
    state = train_pvq(**{"tracking_uri": mlflow_uri, "data": trained[1], **kwargs}, return_state=True)
    assert state.is_failed()
    assert re.search(message, state.message), state.message  # the reason is in the flow run's state
    with pytest.raises(Exception, match=message):
        state.result()
    assert len(c.search_model_versions(f"name='{MODEL_NAME}'")) == before


def test_reevaluate_logs_linked_run(trained, mlflow_uri):
    from flows.reevaluate import reevaluate

    res, data = trained
    out = reevaluate(data=data, tracking_uri=mlflow_uri)
    assert out["model_version"] == res["version"] and out["regression"] is False
    assert out["score"] == pytest.approx(out["recorded_score"], abs=1e-5)  # deterministic evaluation
    c = registry.client(mlflow_uri)
    run = c.get_run(out["run_id"])
    assert run.data.tags["model_version"] == res["version"] and run.data.tags["model_run_id"] == res["run_id"]
    assert run.info.status == "FINISHED"


def test_shard_and_refresh_flows_write_nothing_when_unchanged(trained, shard_overrides):
    from flows.refresh_shards import refresh_shards
    from flows.shard_data import shard_data

    _, data = trained
    for flow in (refresh_shards, shard_data):
        out = flow(sources=["demo"], output=data, overrides=shard_overrides)
        assert out["wrote"] is False and out["version"] == "v000001" and "nothing written" in out["message"]


def test_reproduce_dry_run_prints_checkout_and_launch_command(trained, mlflow_uri, tmp_path, capsys):
    from flows.reproduce import reproduce_command, reproduce_plan
    from pvq_model.config import load_config

    res, data = trained
    plan = reproduce_plan("models:/pvq-vae@champion", mlflow_uri, tmp_path)
    cfg = load_config(plan["config_path"])  # the exact resolved config of the run, loadable as is
    assert cfg.train.steps == 4 and cfg.train.data_path == data and cfg.train.world_size == 1
    assert plan["launcher"] == "single" and plan["data_version"] == "v000001" and plan["seed"] == 42
    assert plan["command"].endswith(f"-m pvq_model.train --config {plan['config_path']} --out {tmp_path / 'run'}")
    assert reproduce_command(f"models:/pvq-vae/{res['version']}", True, out=str(tmp_path), tracking_uri=mlflow_uri) == 0
    printed = capsys.readouterr().out
    assert f"checkout {plan['commit']}" in printed and plan["command"] in printed
    assert not (tmp_path / "run").exists()  # a dry run trains nothing
    assert reproduce_command("models:/pvq-vae@nope", True, tracking_uri=mlflow_uri) == 2


def test_ablate_flow_runs_each_variant_as_a_task(harness, trained, session_dir, tmp_path):
    from flows.ablate import ablate_flow

    _, data = trained
    state = ablate_flow(configs=[str(ROOT / "configs" / "ablations" / "lfq.yaml")], data=data, steps=2,
                        out=str(tmp_path / "abl"), limit=1, return_state=True)
    assert state.is_completed(), state.message
    res = state.result()
    assert res["failed"] == []
    rows = [line for line in res["table"].splitlines() if line.startswith("| ") and "Method" not in line]
    # the variant's row, then the two baselines of the same validation clips
    assert len(rows) == 3 and rows[0].startswith("| LFQ | 65536 | 16 |")
    assert all("(same clips)" in r for r in rows[1:])
    assert (tmp_path / "abl" / "ablation.md").is_file() and (tmp_path / "abl" / "ablation.json").is_file()


def test_ablate_flow_fails_fast_on_a_bad_config(harness, trained, tmp_path):
    from flows.ablate import ablate_flow

    _, data = trained
    broken = tmp_path / "broken.yaml"
    broken.write_text("quantizer:\n  typo_key: 1\n")
    state = ablate_flow(configs=[str(ROOT / "configs" / "ablations" / "lfq.yaml"), str(broken)], data=data,
                        steps=2, out=str(tmp_path / "abl"), return_state=True)
    assert state.is_failed() and "quantizer.typo_key" in state.message
    assert not (tmp_path / "abl" / "runs").exists()  # nothing trained
