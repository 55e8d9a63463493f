"""The flows' tasks: verbs, each a thin call into ``data_prep`` / ``pvq_model`` / the registry.

Retries only where a retry can help (storage I/O, job submission): a ``ParameterError``,
``ConfigError`` or a failed training run is deterministic and never retried. Long tasks
(sharding, training, evaluation) are cached by a hash of their inputs *and* of the state of their
output, so rerunning a flow after a failure resumes after the last finished long task, while a
deleted output is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from pvq_common.env import missing_local_env

from flows import registry
from flows.common import (DEMO_SOURCE, ROOT, ParameterError, configure_env, file_digest, fingerprint,
                          is_remote, is_server, local_artifact_root, project_path, work_dir)

ISOLATED = ROOT / "infra" / "local" / "isolated.sh"
DETERMINISTIC = (ParameterError, ValueError, TypeError, KeyError, FileNotFoundError)


def _log():
    try:
        return get_run_logger()
    except Exception:  # called through .fn outside a run
        import logging

        return logging.getLogger("flows")


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry I/O and submission errors, never a deterministic failure."""
    try:
        state.result()
    except DETERMINISTIC:
        return False
    except Exception:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _check_uri(uri: str, what: str) -> None:
    from data_prep import storage

    if is_remote(uri):
        try:
            storage.exists(uri)
        except Exception as e:  # noqa: BLE001 - any storage failure is reported as unreachable
            raise ParameterError(f"{what} {uri} is unreachable: {type(e).__name__}: {e}; check the endpoint "
                                 f"(AWS_ENDPOINT_URL) and credentials") from None
    elif not Path(uri.split("::", 1)[0]).exists():
        raise ParameterError(f"{what} {uri} does not exist (relative paths are relative to {ROOT})")


@task(name="prepare-sources")
def prepare_sources(sources: list[str]) -> list[str]:
    """Expand ``demo`` into the embedded demo set (generated under PVQ_WORK_DIR/demo_data) and check
    every source exists / is reachable."""
    configure_env()
    if not sources:
        raise ParameterError("sources is empty: give at least one CSV, COCO json, folder or s3:// prefix, or 'demo'")
    out: list[str] = []
    for s in sources:
        if s == DEMO_SOURCE:
            root = work_dir() / "demo_data"
            csv, coco = root / "webvid.csv", root / "captions_demo.json"
            if not (csv.is_file() and coco.is_file()):  # generate once: rewriting moves mtimes (a refresh)
                from data_prep.samples import make_demo_set

                make_demo_set(root)
            out += [str(csv), str(coco)]
            continue
        s = project_path(s.split("::", 1)[0]) + ("::" + s.split("::", 1)[1] if "::" in s else "")
        _check_uri(s, "source")
        out.append(s)
    return out


def load_shard_cfg(config: str, overrides: list[str] | None):
    from data_prep.config import load_shard_config

    path = project_path(config)
    if not Path(path).is_file():
        raise ParameterError(f"shard config {config} does not exist")
    try:
        return load_shard_config(path, list(overrides or []))
    except ValueError as e:
        raise ParameterError(f"shard config {config}: {e}") from None


def _shard_key(context, parameters) -> str:
    from data_prep import manifest

    out = parameters["output"]
    latest = manifest.latest_version(out) if not is_remote(out) else None
    cfg = project_path(parameters["config"])
    return fingerprint("write-shards", parameters["sources"], out, file_digest(cfg), parameters.get("overrides"),
                       parameters.get("mode"), latest)


@task(name="write-shards", retries=2, retry_delay_seconds=5, retry_condition_fn=transient_only,
      cache_key_fn=_shard_key, cache_expiration=timedelta(days=7), persist_result=True)
def write_shards(sources: list[str], output: str, config: str, overrides: list[str] | None = None,
                 mode: str = "shard") -> dict:
    """``mode="shard"``: the first version of a dataset (an existing dataset is refreshed
    instead, which writes nothing when no source changed); ``mode="refresh"``: a new version with
    the changed sources. Returns {"output", "version", "wrote", "message", "stats"}."""
    configure_env()
    from data_prep import manifest
    from data_prep.shard import ShardJobError, refresh, shard

    cfg = load_shard_cfg(config, overrides)
    if not is_remote(output):
        Path(output).mkdir(parents=True, exist_ok=True)
    else:
        _check_uri(output, "output")
    try:
        if mode == "refresh" or manifest.latest_version(output) is not None:
            if manifest.latest_version(output) is None:
                raise ParameterError(f"{output}: no dataset to refresh; run the shard-data flow first")
            res = refresh(sources, output, cfg)
        else:
            res = shard(sources, output, cfg)
    except ShardJobError as e:
        raise ParameterError(str(e)) from None
    _log().info(res.message)
    return {"output": output, "version": res.version, "wrote": res.wrote, "message": res.message,
            "stats": {k: v for k, v in res.stats.items() if k in ("samples", "shards", "errors")}}


@task(name="check-dataset", retries=2, retry_delay_seconds=5, retry_condition_fn=transient_only)
def check_dataset(data: str, version: str | None = None) -> dict:
    """The dataset's version (default LATEST) with its sizes; ParameterError when missing/incomplete
    or without train/val shards."""
    configure_env()
    from data_prep import manifest, storage

    try:
        info = manifest.read_version(data, version)
    except FileNotFoundError as e:
        raise ParameterError(str(e)) from None
    splits = {s: sum(r["count"] for r in info["shards"] if r["split"] == s) for s in ("train", "val")}
    buckets = sorted({r["bucket"] for r in info["shards"] if r["split"] == "train" and r["count"] > 0})
    if not splits["train"] or not splits["val"]:
        raise ParameterError(f"{data} ({info['version']}) has {splits['train']} train and {splits['val']} val "
                             "samples; training needs both (raise shards.val_fraction or add sources)")
    index = storage.join(data, info["version"], "index.parquet")
    digest = hashlib.sha256(storage.read_bytes(index)).hexdigest()
    return {"data": data, "version": info["version"], "train": splits["train"], "val": splits["val"],
            "train_buckets": buckets, "index_sha256": digest}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@task(name="validate-training")
def validate_training(config: str, overrides: list[str], launcher: str) -> dict:
    """Load the training config with the overrides (unknown keys are errors naming the key)."""
    from pvq_model.config import ConfigError, load_config
    from pvq_model.launch.geometry import LAUNCHERS

    if launcher not in LAUNCHERS:
        raise ParameterError(f"launcher {launcher!r} is unknown: choose one of {', '.join(LAUNCHERS)}")
    path = project_path(config)
    if not Path(path).is_file():
        raise ParameterError(f"training config {config} does not exist")
    try:
        cfg = load_config(path, list(overrides))
    except ConfigError as e:
        raise ParameterError(f"training config {config}: {e}") from None
    return cfg.to_dict()


def _result(run_dir: Path, steps: int) -> dict | None:
    """result.json of a finished run directory (all steps done and exported), else None."""
    f = run_dir / "result.json"
    if not f.is_file():
        return None
    res = json.loads(f.read_text())
    if res.get("step", 0) < steps or not res.get("export") or not (Path(res["export"]) / "model.safetensors").is_file():
        return None
    return res


def _train_key(context, parameters) -> str:
    run_dir = Path(parameters["run_dir"])
    cfg = project_path(parameters["config"])
    done = file_digest(run_dir / "result.json")
    return fingerprint("launch-training", file_digest(cfg), parameters["overrides"], str(run_dir),
                       parameters["launcher"], parameters.get("nproc"), parameters.get("nnodes"),
                       parameters["tracking_uri"], done)


def submission_only(task, task_run, state) -> bool:
    """retry_condition_fn of launch-training: retry a failed job *submission* or poll (a
    ``LaunchError`` escaping ``launch.run``: sbatch / scontrol failed), never a failed training."""
    from pvq_model.launch.geometry import LaunchError

    try:
        state.result()
    except LaunchError:
        return True
    except Exception:
        return False
    return False


@task(name="launch-training", cache_key_fn=_train_key, cache_expiration=timedelta(days=30), persist_result=True,
      retries=2, retry_delay_seconds=30, retry_condition_fn=submission_only)
def launch_training(config: str, overrides: list[str], run_dir: str, launcher: str = "single",
                    tracking_uri: str = "", nproc: int | None = None, nnodes: int | None = None,
                    timeout_s: float | None = None) -> dict:
    """Run :func:`pvq_model.launch.cli.run` (a subprocess / torchrun / sbatch job that this task waits
    for; training never runs inside the worker process) and return the run's result.json.

    A run directory that already holds a finished run is reused (no second MLflow run). The MLflow
    tracking URI reaches the ranks through MLFLOW_TRACKING_URI; for a local store the experiment is
    created first with its artifact folder under PVQ_WORK_DIR (never ./mlruns)."""
    configure_env()
    from pvq_model.config import load_config
    from pvq_model.launch.cli import run as launch_run
    from pvq_model.launch.plan import LaunchRequest
    from pvq_model.train.tracking import ensure_experiment

    config = project_path(config)
    cfg = load_config(config, list(overrides))
    run = Path(run_dir)
    done = _result(run, cfg.train.steps)
    if done is not None:
        _log().info(f"{run}: already trained to step {done['step']}; reusing it")
        return done
    c = registry.client(tracking_uri)
    ensure_experiment(c, cfg.train.mlflow_experiment,
                               None if is_server(tracking_uri) else local_artifact_root())
    env = {**missing_local_env(), "MLFLOW_TRACKING_URI": tracking_uri,  # added to the ranks' env
           "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"], "PYTHONUNBUFFERED": "1"}
    run.mkdir(parents=True, exist_ok=True)
    if launcher == "local":
        code = _run_isolated(config, list(overrides), run, nproc, env, timeout_s, tracking_uri)
    else:
        req = LaunchRequest(config, list(overrides), run, launcher, nproc, nnodes, env=env,
                            gpu=False if launcher == "slurm" and not _has_gpu() else None)
        code = launch_run(req, timeout_s=timeout_s)
    if code != 0:
        raise RuntimeError(f"training ({launcher}) exited with code {code}; see the output above and {run}")
    res = _result(run, cfg.train.steps)
    if res is None:
        raise RuntimeError(f"{run}: training exited 0 but left no finished result.json/export")
    return res


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_isolated(config: str, overrides: list[str], run: Path, nproc: int | None, env: dict,
                  timeout_s: float | None, tracking_uri: str) -> int:
    """torchrun with several ranks on this machine, inside ``infra/local/isolated.sh`` (a private
    network namespace: torch's c10d name lookups never leave the machine). The namespace cannot
    reach an MLflow *server* on the host, so with an http tracking URI the ranks log to a sqlite
    store in the run directory and :func:`flows.registry.import_run` copies that run to the server afterwards."""
    from pvq_model.launch.cli import stop_group
    from pvq_model.launch.plan import LaunchRequest, format_plan, plan

    p = plan(LaunchRequest(Path(config), overrides, run, "local", nproc, None, gpu=_has_gpu(), env=env))
    inner_env = dict(p.env)
    remote = is_server(tracking_uri)
    if remote:
        inner_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{(run / 'mlflow.db').resolve()}"
    print(format_plan(p), flush=True)
    proc = subprocess.Popen([str(ISOLATED), *p.argv], env={**os.environ, **inner_env}, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return 124
    if code == 0 and remote:
        res_file = run / "result.json"
        res = json.loads(res_file.read_text())
        res["mlflow_run_id"] = registry.import_run(inner_env["MLFLOW_TRACKING_URI"], res["mlflow_run_id"], tracking_uri)
        res_file.write_text(json.dumps(res))
    return code


# ---------------------------------------------------------------------------------------------
# evaluation and registry
# ---------------------------------------------------------------------------------------------
def _eval_key(context, parameters) -> str:
    model = parameters["model"]
    weights = file_digest(Path(model) / "model.safetensors") if Path(model).is_dir() else model
    out = Path(parameters["out"])
    return fingerprint("evaluate", weights, parameters["data"], parameters.get("version"), str(out),
                       file_digest(out / "summary.json"))


@task(name="evaluate-model", cache_key_fn=_eval_key, cache_expiration=timedelta(days=30), persist_result=True)
def evaluate_model(model: str, data: str, out: str, version: str | None = None, tracking_uri: str | None = None) -> dict:
    """PSNR/SSIM/LPIPS (images and videos separately) and codebook stats of ``model`` (the EMA
    export directory or an MLflow model URI) on the validation shards; returns the summary."""
    configure_env()
    from pvq_model.eval.evaluate import evaluate
    from pvq_model.eval.summary import EvaluationError, format_summary

    try:
        res = evaluate(model, data, out, split="val", version=version, tracking_uri=tracking_uri)
    except EvaluationError as e:
        raise ParameterError(str(e)) from None
    _log().info("\n" + format_summary(res.summary))
    return res.summary


@task(name="log-evaluation", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def log_evaluation(tracking_uri: str, run_id: str, summary: dict, eval_dir: str) -> dict[str, float]:
    """Evaluation metrics and files (summary.json, clips.parquet) on the training run."""
    from pvq_model.eval.summary import flat_metrics

    c = registry.client(tracking_uri)
    metrics = flat_metrics(summary)
    registry.log_metrics(c, run_id, metrics)
    c.log_artifacts(run_id, eval_dir, "evaluation")
    return metrics


@task(name="write-report", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def write_report(tracking_uri: str, run_id: str, eval_dir: str, run_dir: str) -> str:
    """The HTML report (frames, errors, per-frame PSNR, training curves, codebook usage) of the
    evaluated export, written beside the run and logged on it as ``report/``. Returns the page."""
    from pvq_model.eval.report import build_report

    page = build_report(eval_dir, Path(run_dir) / "report", run_dir=run_dir)
    registry.client(tracking_uri).log_artifacts(run_id, str(page.parent), "report")
    return str(page)


@task(name="register-model", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def register_model(tracking_uri: str, name: str, run_id: str, summary: dict, dataset: dict,
                   train_config: dict) -> str:
    """A model version from the training run's export with alias ``challenger``; tagged with the git
    commit, data version, seed and evaluation score. Returns the version number."""
    from pvq_model.eval.summary import primary_score

    c = registry.client(tracking_uri)
    run = c.get_run(run_id)
    rt = run.data.tags
    score = primary_score(summary)
    tags = {
        "git_commit": rt.get("git_commit", "unknown"), "git_dirty": rt.get("git_dirty", "unknown"),
        "data_path": dataset["data"], "data_version": dataset["version"],
        "data_index_sha256": dataset["index_sha256"], "seed": str(train_config["train"]["seed"]),
        "config_name": train_config["name"], "quantizer": train_config["quantizer"]["type"],
        "train_steps": str(train_config["train"]["steps"]), registry.SCORE_TAG: f"{score:.6f}",
        "eval_psnr_images": str(summary["images"]["psnr"]), "eval_psnr_videos": str(summary["videos"]["psnr"]),
        "lpips_available": str(summary["lpips_available"]).lower(),
    }
    if rt.get("git_dirty") == "true":
        _log().warning(f"run {run_id} was trained from a dirty git tree ({rt.get('git_commit')}): the commit "
                       "alone does not rebuild it; the exact resolved config is in the run's config.json")
    mv = registry.register_version(c, name, run_id, tags, description=f"{train_config['name']} on "
                                   f"{dataset['data']}@{dataset['version']}, score {score:.3f} dB")
    _log().info(f"registered {name} version {mv.version} (alias {registry.CHALLENGER})")
    return str(mv.version)


@task(name="promote-if-better", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def promote_if_better(tracking_uri: str, name: str, version: str, dataset: dict, eval_root: str) -> dict:
    """Alias ``champion`` moves to ``version`` only if it scores higher than the current champion on
    the same data (the champion is re-evaluated on this data version when its recorded score is
    from another one). The first version becomes champion."""
    from pvq_model.eval.evaluate import evaluate

    def rescore(champion: str) -> float:
        return evaluate(f"models:/{name}/{champion}", dataset["data"], Path(eval_root) / f"champion-v{champion}",
                        version=dataset["version"], tracking_uri=tracking_uri).score

    return registry.promote(registry.client(tracking_uri), name, version, dataset, rescore, log=_log().info)


@task(name="resolve-model-version", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def resolve_model_version(tracking_uri: str, model_uri: str) -> dict:
    """``models:/name@alias`` or ``models:/name/version`` -> {name, version, run_id, tags}."""
    try:
        return registry.resolve_version(registry.client(tracking_uri), model_uri)
    except ValueError as e:
        raise ParameterError(f"{e} (in {tracking_uri})") from None


@task(name="log-reevaluation", retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def log_reevaluation(tracking_uri: str, mv: dict, dataset: dict, summary: dict, eval_dir: str,
                     tolerance_db: float) -> dict:
    """A new MLflow run (experiment pvq-vae-reevaluation) linked to the model version and its
    training run, with the metrics, the evaluation files and a regression flag (score dropped by
    more than ``tolerance_db`` from the score recorded at registration)."""
    from pvq_model.eval.summary import flat_metrics, primary_score
    from pvq_model.train.tracking import ensure_experiment

    from flows.common import EVAL_EXPERIMENT

    c = registry.client(tracking_uri)
    exp = ensure_experiment(c, EVAL_EXPERIMENT, None if is_server(tracking_uri) else local_artifact_root())
    score = primary_score(summary)
    recorded = float(mv["tags"].get(registry.SCORE_TAG, "nan"))
    regression = bool(recorded == recorded and score < recorded - tolerance_db)
    same_data = mv["tags"].get("data_index_sha256") == dataset["index_sha256"]
    tags = {"model_name": mv["name"], "model_version": mv["version"], "model_run_id": mv["run_id"],
            "data_path": dataset["data"], "data_version": dataset["version"], "same_data_as_registration": str(same_data).lower(),
            "regression": str(regression).lower(), "mlflow.runName": f"reevaluate-{mv['name']}-v{mv['version']}"}
    run = c.create_run(exp, tags=tags)
    rid = run.info.run_id
    try:
        registry.log_metrics(c, rid, {**flat_metrics(summary), "eval/score": score, "eval/recorded_score": recorded,
                                      "eval/score_delta": score - recorded})
        c.log_artifacts(rid, eval_dir, "evaluation")
        c.set_terminated(rid, "FINISHED")
    except BaseException:
        c.set_terminated(rid, "FAILED")
        raise
    c.set_model_version_tag(mv["name"], mv["version"], "last_reevaluation_run", rid)
    if regression:
        c.set_model_version_tag(mv["name"], mv["version"], "regression", f"{score:.3f} < {recorded:.3f} - {tolerance_db}")
        _log().warning(f"REGRESSION: {mv['name']} v{mv['version']} scores {score:.3f} dB on {dataset['version']}, "
                       f"{recorded:.3f} dB at registration")
    return {"run_id": rid, "score": score, "recorded_score": recorded, "regression": regression}

