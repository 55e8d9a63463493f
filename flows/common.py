"""Paths, environment and parameter checks shared by the flows (no work at import time).

Every default lives under ``PVQ_WORK_DIR`` (default ``<project>/.cache/work``): the embedded demo
set, the shard dataset, training runs, evaluation results and, without an MLflow server, the MLflow
sqlite store and its artifact folder (never ``./mlruns``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from data_prep.storage import NO_CREDENTIALS_PATTERN, has_credentials, redact
from pvq_common.env import is_remote, missing_local_env  # noqa: F401 - is_remote: the flows import it from here

ROOT = Path(__file__).resolve().parents[1]
DEMO_SOURCE = "demo"
"""The source name that stands for the embedded demo set (generated on first use)."""
MODEL_NAME = "pvq-vae"
EXPERIMENT = "pvq-vae"
EVAL_EXPERIMENT = "pvq-vae-reevaluation"
DEFAULT_SHARD_CONFIG = "configs/shard/demo.yaml"
DEFAULT_TRAIN_CONFIG = "configs/debug.yaml"

class ParameterError(ValueError):
    """A flow parameter is wrong (missing source, unknown config key, unreachable storage); the
    message says which parameter and what to do. Never retried."""


CREDENTIALS_HELP = ("give credentials through the environment instead: MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for an MLflow server, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) for s3://; download a list or file that needs "
                    "a password first and give its local path")


def refuse_credentials(value: str, what: str = "a parameter") -> str:
    """``value``, unless it holds a URI with a password, token or secret query value (``http://u:pw@h``,
    ``?X-Amz-Signature=``): then ValueError saying where credentials go instead.

    Flow parameters are stored by Prefect with the flow run and the ``pvq`` command's arguments end up
    in job files, so neither may carry a secret."""
    if has_credentials(value):
        raise ValueError(f"{what} {redact(value)!r} carries credentials in a URI, which would be stored "
                         f"(flow-run parameters, job files); {CREDENTIALS_HELP}")
    return value


ParamStr = Annotated[str, AfterValidator(refuse_credentials),
                     Field(json_schema_extra={"pattern": NO_CREDENTIALS_PATTERN})]
"""The type of every string parameter of a flow: no credentials in it. Prefect checks the pattern of
the deployment's parameter schema before it creates (and stores) a flow run, and the validator when
the flow starts (in-process calls)."""


def configure_env() -> None:
    """Set the local-only settings (:data:`pvq_common.env.LOCAL_ENV`, DESIGN.md §5) in this process,
    without overriding what the caller set.

    For flow entry points only (a flow run is its own process); library code passes
    :func:`pvq_common.env.local_env` to the subprocesses it starts instead."""
    os.environ.update(missing_local_env())
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def work_dir() -> Path:
    return Path(os.environ.get("PVQ_WORK_DIR") or ROOT / ".cache" / "work").resolve()


def default_shards() -> str:
    return str(work_dir() / "shards" / "demo")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow' / 'mlflow.db'}"


def local_artifact_root() -> Path:
    return work_dir() / "mlflow" / "artifacts"


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking *server* (http/https), as opposed to a local sqlite/file store."""
    return str(tracking_uri).startswith(("http://", "https://"))


def project_path(p: str | os.PathLike | None) -> str | None:
    """Absolute path for a local path (relative ones are relative to the project root, where the
    deployments run); remote URIs unchanged."""
    if p is None or is_remote(str(p)):
        return None if p is None else str(p)
    path = Path(str(p).removeprefix("file://"))
    return str(path if path.is_absolute() else (ROOT / path).resolve())


def fingerprint(*parts) -> str:
    """sha256 of the JSON of ``parts`` (a stable cache key)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
