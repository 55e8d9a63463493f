"""Each layer imports only what is below it (issue 11, docs/architecture.md): each module is imported
in a fresh interpreter and the packages it pulled in are checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

_ABOVE_DATA = ["torch", "pvq_model", "flows", "ray", "mlflow", "prefect"]
_ABOVE_MODEL = ["data_prep", "flows", "deepspeed", "ray", "prefect", "mlflow"]
CASES = [
    # layer 1: the torch-free shared package and the data pipeline (no torch in the shard job)
    *((m, _ABOVE_DATA + ["data_prep"]) for m in ("pvq_common.config", "pvq_common.env", "pvq_common.media",
                                                  "pvq_common.paper")),
    *((m, _ABOVE_DATA) for m in ("data_prep.shard", "data_prep.cli", "data_prep.config")),
    ("data_prep.loader", ["pvq_model", "flows", "mlflow", "prefect"]),
    # layer 2: the model core
    *((m, _ABOVE_MODEL) for m in ("pvq_model.vae", "pvq_model.losses", "pvq_model.metrics", "pvq_model.alignment",
                                  "pvq_model.rates", "pvq_model.demo")),
    ("pvq_model.config", _ABOVE_MODEL + ["torch"]),
    # layer 3: the trainer and the launchers
    ("pvq_model.train.fit", ["deepspeed", "data_prep", "flows", "mlflow", "prefect", "ray"]),
    ("pvq_model.train.loop", ["flows", "prefect"]),
    ("pvq_model.launch.plan", ["torch", "deepspeed", "flows", "mlflow", "prefect"]),
    ("pvq_model.launch.cli", ["deepspeed", "flows", "mlflow", "prefect"]),
    # layer 4: evaluation
    ("pvq_model.eval.evaluate", ["deepspeed", "flows", "mlflow", "prefect", "ray"]),
    ("pvq_model.eval.report", ["deepspeed", "flows", "prefect", "pvq_model.eval.ablate"]),
    ("pvq_model.eval.ablate", ["deepspeed", "flows", "prefect"]),
    ("pvq_model.eval.tables", ["torch", "flows", "mlflow"]),
    ("pvq_model.eval.curves", ["torch", "flows", "mlflow"]),
    ("pvq_model.eval.summary", ["torch", "flows", "mlflow"]),
    ("pvq_model.eval.models", ["torch", "flows", "mlflow"]),
    # layer 5: flows; layer 6: the CLI, whose --help must stay fast
    ("flows.registry", ["torch", "prefect", "pvq_model"]),
    ("flows.tasks", ["torch", "deepspeed"]),
    ("flows.cli", ["torch", "deepspeed", "mlflow", "prefect", "ray", "pvq_model.vae", "pvq_model.eval"]),
]


@pytest.mark.parametrize("module, forbidden", CASES, ids=[c[0] for c in CASES])
def test_module_imports_nothing_from_above(module, forbidden):
    code = (f"import sys, {module}; f = {forbidden!r}; "
            f"print(sorted(x for x in f if any(m == x or m.startswith(x + '.') for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    last = out.strip().splitlines()[-1]  # DeepSpeed prints its accelerator warning to stdout first
    assert last == "[]", f"{module} pulled in {last}"
