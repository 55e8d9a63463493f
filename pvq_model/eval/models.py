"""Where an evaluated model comes from: a local export directory (``PVQVAE.save_pretrained`` / the
training export) or an MLflow URI (``models:/pvq-vae@champion``, ``models:/pvq-vae/3``,
``runs:/RUN_ID/export``), downloaded with an explicit tracking URI.

:func:`model_version` is the one ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` parser; the flows'
registry (:mod:`flows.registry`) uses it too. It lives here, the lowest layer that resolves registry
URIs (``pvq eval --model models:/...``), so the model package never imports ``flows``. Nothing here
imports torch until a model is loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .summary import EvaluationError

def is_mlflow_uri(model: str) -> bool:
    return str(model).startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION).

    Raises ``ValueError`` for anything else."""
    if not str(model_uri).startswith("models:/"):
        raise ValueError(f"{model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    ref = str(model_uri).removeprefix("models:/").strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if name and alias:
            return name, alias, None
    else:
        name, _, version = ref.partition("/")
        if name and version:
            return name, None, version
    raise ValueError(f"{model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def model_version(client, model_uri: str):
    """The MLflow ``ModelVersion`` behind ``model_uri`` (see :func:`parse_models_uri`), looked up with
    ``client`` (an ``MlflowClient`` whose registry is the tracking store). Raises ``ValueError`` when
    the URI is malformed or no version has the alias."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(model_uri)
    if alias is None:
        return client.get_model_version(name, version)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise ValueError(f"{model_uri}: no model version has alias {alias!r}") from None


def _find_export(root: Path) -> Path:
    from ..vae import CONFIG_FILE, WEIGHTS_FILE

    for d in [root, *sorted(p.parent for p in root.rglob(WEIGHTS_FILE))]:
        if (d / WEIGHTS_FILE).is_file() and (d / CONFIG_FILE).is_file():
            return d
    raise EvaluationError(f"{root}: no {WEIGHTS_FILE} + {CONFIG_FILE} found in the downloaded model")


def resolve_model(model: str | Path, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local model directory for ``model`` (a directory, or an MLflow URI downloaded first).

    The tracking URI is ``tracking_uri`` or, when not given, ``MLFLOW_TRACKING_URI`` (read, never
    set: ``mlflow.set_tracking_uri`` would redirect every later run in the process)."""
    if not is_mlflow_uri(str(model)):
        from ..vae import WEIGHTS_FILE

        path = Path(model)
        if not (path / WEIGHTS_FILE).is_file():
            raise EvaluationError(f"{path}: not a model directory (no {WEIGHTS_FILE}); give the training "
                                  f"export (RUN/export) or an MLflow URI like models:/pvq-vae@champion")
        return path
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # MLflow's own default would create ./mlflow.db in the current directory
        raise EvaluationError(f"{model}: no MLflow tracking URI; set MLFLOW_TRACKING_URI or pass tracking_uri")
    dst = Path(cache_dir or tempfile.mkdtemp(prefix="pvq-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        if str(model).startswith("models:/"):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            mv = model_version(client, str(model))
            source = client.get_model_version_download_uri(mv.name, str(mv.version))
        else:
            source = str(model)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    except MlflowException as e:
        raise EvaluationError(f"{model}: cannot load from MLflow ({uri}): {e.message.splitlines()[0]}") from None
    return _find_export(Path(local))


def load_model(model: str | Path, tracking_uri: str | None = None):
    """(the :class:`pvq_model.vae.PVQVAE` in eval mode, where it came from); an MLflow download is
    removed after loading."""
    from ..vae import PVQVAE

    if not is_mlflow_uri(str(model)):
        path = resolve_model(model)
        return PVQVAE.from_pretrained(path), str(path)
    with tempfile.TemporaryDirectory(prefix="pvq-model-") as tmp:
        path = resolve_model(model, tracking_uri, tmp)
        return PVQVAE.from_pretrained(path), str(model)
