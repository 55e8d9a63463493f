"""The upper layers import only what is below them (issue 11): each module is imported in a fresh
interpreter and the packages it pulled in are checked. Lower layers (data_prep, pvq_common, the
model core) have their own checks beside their tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
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
