"""Flow logic through ``task.fn``: parameter checks fail fast with clear messages, retries only for
transient errors, cache keys follow inputs and outputs, registry (challenger / champion, rollback)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import registry, tasks
from flows.common import DEFAULT_TRAIN_CONFIG, ParameterError
from pvq_model.train.tracking import ensure_experiment


def test_prepare_sources_expands_demo_and_rejects_missing(session_dir):
    items = tasks.prepare_sources.fn(["demo"])
    assert [Path(p).name for p in items] == ["webvid.csv", "captions_demo.json"]
    assert all(Path(p).is_file() for p in items)
    with pytest.raises(ParameterError, match=r"source .*/nope\.csv does not exist"):
        tasks.prepare_sources.fn([str(session_dir / "nope.csv")])
    with pytest.raises(ParameterError, match="sources is empty"):
        tasks.prepare_sources.fn([])


def test_unreachable_s3_fails_fast(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ParameterError, match=r"s3://bucket/videos is unreachable"):
        tasks.prepare_sources.fn(["s3://bucket/videos"])


def test_validate_training_names_unknown_key_and_launcher():
    cfg = tasks.validate_training.fn(DEFAULT_TRAIN_CONFIG, ["train.steps=3"], "single")
    assert cfg["train"]["steps"] == 3 and cfg["name"] == "pvq-vae-debug"
    with pytest.raises(ParameterError, match=r"train\.stepz"):
        tasks.validate_training.fn(DEFAULT_TRAIN_CONFIG, ["train.stepz=3"], "single")
    with pytest.raises(ParameterError, match="launcher 'mpi' is unknown"):
        tasks.validate_training.fn(DEFAULT_TRAIN_CONFIG, [], "mpi")
    with pytest.raises(ParameterError, match="does not exist"):
        tasks.validate_training.fn("configs/none.yaml", [], "single")


def test_shard_config_errors_are_parameter_errors(session_dir):
    with pytest.raises(ParameterError, match=r"clips\.lenghts"):
        tasks.load_shard_cfg("configs/shard/demo.yaml", ["clips.lenghts=[16]"])


def test_check_dataset(shards, session_dir):
    info = tasks.check_dataset.fn(shards["output"])
    assert info["version"] == shards["version"] == "v000001"
    assert info["train"] >= 1 and info["val"] >= 1 and len(info["index_sha256"]) == 64
    assert "96x64" in info["train_buckets"]
    with pytest.raises(ParameterError, match="no dataset here"):
        tasks.check_dataset.fn(str(session_dir / "empty"))


def test_retry_only_transient_errors():
    def state(exc):
        def result():
            raise exc
        return SimpleNamespace(result=result)

    assert tasks.transient_only(None, None, state(ConnectionError("reset"))) is True
    assert tasks.transient_only(None, None, state(OSError("s3 timeout"))) is True
    assert tasks.transient_only(None, None, state(ParameterError("bad"))) is False
    assert tasks.transient_only(None, None, state(FileNotFoundError("x"))) is False
    from pvq_model.launch.geometry import LaunchError

    assert tasks.submission_only(None, None, state(LaunchError("sbatch failed"))) is True
    assert tasks.submission_only(None, None, state(RuntimeError("training exited with code 1"))) is False


def test_cache_keys_follow_inputs_and_outputs(tmp_path, tiny_model):
    p = {"model": str(tiny_model), "data": "d", "version": "v1", "out": str(tmp_path)}
    k1 = tasks._eval_key(None, p)
    assert k1 == tasks._eval_key(None, dict(p))
    assert k1 != tasks._eval_key(None, {**p, "version": "v2"})
    (tmp_path / "summary.json").write_text("{}")  # the output changed (e.g. was deleted or rewritten)
    assert k1 != tasks._eval_key(None, p)
    t = {"config": DEFAULT_TRAIN_CONFIG, "overrides": ["a=1"], "run_dir": str(tmp_path / "run"), "launcher": "single",
         "tracking_uri": "sqlite:///x"}
    assert tasks._train_key(None, t) != tasks._train_key(None, {**t, "overrides": ["a=2"]})


def _logged_run(c, tiny_model, exp, tags=None, export=True):
    run = c.create_run(exp, tags={"git_commit": "abc123", "git_dirty": "false", **(tags or {})})
    if export:
        c.log_artifacts(run.info.run_id, str(tiny_model), "export")
    c.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def registry_env(tracking_uri, tmp_path, shards):
    c = registry.client(tracking_uri)
    exp = ensure_experiment(c, "t", tmp_path / "artifacts")
    dataset = tasks.check_dataset.fn(shards["output"])
    return c, exp, dataset


def _summary(psnr):
    agg = {"clips": 1, "frames": 1, "psnr": psnr, "ssim": 0.5, "lpips": None}
    return {"overall": agg, "images": agg, "videos": agg, "by_bucket": {}, "by_frames": {}, "codebook": {},
            "lpips_available": False}


TRAIN_CFG = {"name": "pvq-vae-debug", "quantizer": {"type": "pvq"}, "train": {"seed": 42, "steps": 4}}


def test_register_and_promote_only_when_better(registry_env, tiny_model, tracking_uri, tmp_path):
    c, exp, dataset = registry_env
    first = _logged_run(c, tiny_model, exp)
    v1 = tasks.register_model.fn(tracking_uri, "m", first, _summary(10.0), dataset, TRAIN_CFG)
    mv = c.get_model_version("m", v1)
    assert mv.tags["git_commit"] == "abc123" and mv.tags["data_version"] == dataset["version"]
    assert mv.tags["seed"] == "42" and float(mv.tags["eval_score"]) == 10.0
    assert str(c.get_model_version_by_alias("m", "challenger").version) == v1
    assert tasks.promote_if_better.fn(tracking_uri, "m", v1, dataset, str(tmp_path))["promoted"] is True
    assert str(c.get_model_version_by_alias("m", "champion").version) == v1
    # the same run again (a flow rerun): no second version
    assert tasks.register_model.fn(tracking_uri, "m", first, _summary(10.0), dataset, TRAIN_CFG) == v1

    worse = tasks.register_model.fn(tracking_uri, "m", _logged_run(c, tiny_model, exp), _summary(9.0), dataset, TRAIN_CFG)
    res = tasks.promote_if_better.fn(tracking_uri, "m", worse, dataset, str(tmp_path))
    assert res == {"promoted": False, "champion": v1, "score": 9.0, "previous": v1, "previous_score": 10.0}
    assert str(c.get_model_version_by_alias("m", "champion").version) == v1
    assert str(c.get_model_version_by_alias("m", "challenger").version) == worse

    better = tasks.register_model.fn(tracking_uri, "m", _logged_run(c, tiny_model, exp), _summary(11.0), dataset, TRAIN_CFG)
    assert tasks.promote_if_better.fn(tracking_uri, "m", better, dataset, str(tmp_path))["promoted"] is True
    assert str(c.get_model_version_by_alias("m", "champion").version) == better


def test_champion_from_other_data_is_reevaluated_on_this_data(registry_env, tiny_model, tracking_uri, tmp_path):
    from pvq_model.eval.evaluate import evaluate

    c, exp, dataset = registry_env
    old = tasks.register_model.fn(tracking_uri, "m", _logged_run(c, tiny_model, exp), _summary(99.0),
                                  {**dataset, "index_sha256": "other-data"}, TRAIN_CFG)
    tasks.promote_if_better.fn(tracking_uri, "m", old, dataset, str(tmp_path))
    actual = evaluate(tiny_model, dataset["data"]).score  # what the old champion really scores here
    new = tasks.register_model.fn(tracking_uri, "m", _logged_run(c, tiny_model, exp), _summary(actual + 0.01),
                                  dataset, TRAIN_CFG)
    res = tasks.promote_if_better.fn(tracking_uri, "m", new, dataset, str(tmp_path / "ev"))
    assert res["previous_score"] == pytest.approx(actual) and res["promoted"] is True


def test_nothing_half_registered(registry_env, tiny_model, tracking_uri, monkeypatch):
    c, exp, dataset = registry_env
    no_export = _logged_run(c, tiny_model, exp, export=False)
    with pytest.raises(ValueError, match="no export/model.safetensors"):
        tasks.register_model.fn(tracking_uri, "h", no_export, _summary(1.0), dataset, TRAIN_CFG)
    assert c.search_model_versions("name='h'") == []

    def broken_alias(*a, **k):
        raise ConnectionError("registry went away")

    run = _logged_run(c, tiny_model, exp)
    monkeypatch.setattr(type(c), "set_registered_model_alias", broken_alias)
    with pytest.raises(ConnectionError):
        tasks.register_model.fn(tracking_uri, "h", run, _summary(1.0), dataset, TRAIN_CFG)
    assert c.search_model_versions("name='h'") == []  # the version was rolled back


def test_reevaluation_run_and_regression_flag(registry_env, tiny_model, tracking_uri, tmp_path):
    c, exp, dataset = registry_env
    v = tasks.register_model.fn(tracking_uri, "r", _logged_run(c, tiny_model, exp), _summary(50.0), dataset, TRAIN_CFG)
    mv = tasks.resolve_model_version.fn(tracking_uri, "models:/r@challenger")
    assert mv["version"] == v
    summary = tasks.evaluate_model.fn("models:/r/" + v, dataset["data"], str(tmp_path / "e"), dataset["version"],
                                      tracking_uri)
    res = tasks.log_reevaluation.fn(tracking_uri, mv, dataset, summary, str(tmp_path / "e"), 0.5)
    assert res["regression"] is True and res["score"] < 50.0 - 0.5  # an untrained model is far below 50 dB
    run = c.get_run(res["run_id"])
    assert run.data.tags["model_version"] == v and run.data.tags["regression"] == "true"
    assert run.data.metrics["eval/score"] == pytest.approx(res["score"])
    assert {f.path for f in c.list_artifacts(res["run_id"], "evaluation")} == {"evaluation/clips.parquet",
                                                                               "evaluation/summary.json"}
    assert c.get_model_version("r", v).tags["last_reevaluation_run"] == res["run_id"]
    with pytest.raises(ParameterError, match="no model version has alias 'champion'"):
        tasks.resolve_model_version.fn(tracking_uri, "models:/r@champion")


def test_import_run_copies_params_tags_metrics_and_artifacts(tmp_path, tiny_model):
    src_uri, dst_uri = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    src = registry.client(src_uri)
    exp = ensure_experiment(src, "pvq-vae", tmp_path / "src-artifacts")
    ensure_experiment(registry.client(dst_uri), "pvq-vae", tmp_path / "dst-artifacts")
    run = src.create_run(exp, tags={"git_commit": "abc"}).info.run_id
    src.log_param(run, "train.steps", "3")
    for step, v in enumerate([1.0, 0.5, 0.25]):
        src.log_metric(run, "loss", v, step=step)
    src.log_artifacts(run, str(tiny_model), "export")
    src.set_terminated(run)
    new = registry.import_run(src_uri, run, dst_uri)
    dst = registry.client(dst_uri)
    got = dst.get_run(new)
    assert got.data.params == {"train.steps": "3"} and got.data.tags["git_commit"] == "abc"
    assert [m.value for m in dst.get_metric_history(new, "loss")] == [1.0, 0.5, 0.25]
    assert {f.path for f in dst.list_artifacts(new, "export")} == {"export/config.yaml", "export/model.safetensors"}
    assert got.info.status == "FINISHED" and got.info.artifact_uri.startswith((tmp_path / "dst-artifacts").as_uri())


@pytest.mark.slow
def test_local_launcher_trains_two_ranks_in_isolated_namespace(shards, tmp_path, monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 ranks on 2 cores

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("prerequisite missing: infra/local/isolated.sh needs root and unshare (private network namespace)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = tasks.launch_training.fn(DEFAULT_TRAIN_CONFIG, ["train.steps=2", "train.warmup_steps=1",
                                                          "train.checkpoint_every=1000", "data.frames=[16]",
                                                          f"train.data_path={shards['output']}"],
                                   str(tmp_path / "run"), "local", uri, 2, None, 400)
    assert res["step"] == 2 and len(res["losses"]) == 2
    run = registry.client(uri).get_run(res["mlflow_run_id"])
    assert run.data.tags["world_size"] == "2" and run.data.params["train.world_size"] == "2"
    assert (Path(res["export"]) / "model.safetensors").is_file()
