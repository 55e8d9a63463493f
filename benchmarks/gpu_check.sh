#!/bin/bash
# The GPU check of issue 12, part 3: one JSON (stdout, and $OUT/gpu_check.json when OUT is set), at
# most 8 minutes. Run benchmarks/gpu_prepare.sh here first, then on the GPU machine, carrying .gpu:
#
#   bash benchmarks/gpu_check.sh [--checks bf16_grads,zero3_256x16,...] [--peak-tflops N]
#
# The checks and what each number means: benchmarks/gpu_check.py's docstring.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
  RAY_USAGE_STATS_ENABLED=0 TORCH_EXTENSIONS_DIR=/tmp/pvq-torch-ext
need() {  # the packages gpu_check.py imports that a bare GPU image may lack
  "$PY" - <<'PYEOF'
import importlib.util
need = ["torch", "deepspeed", "pydantic", "yaml", "safetensors", "einops", "numpy", "webdataset", "decord"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PYEOF
}
missing=$(need)
if [ -n "$missing" ] && ls .gpu/whl/*.whl >/dev/null 2>&1; then  # carried wheels, only when needed
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pvq-site \
    .gpu/whl/*.whl || { echo '{"ok": false, "error": "installing .gpu/whl failed"}'; exit 1; }
  export PYTHONPATH="/tmp/pvq-site:$PYTHONPATH"
  missing=$(need)
fi
if [ -n "$missing" ]; then
  echo "{\"ok\": false, \"error\": \"missing Python packages: $missing (run benchmarks/gpu_prepare.sh here and carry .gpu)\"}"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
out=${OUT:-.gpu}
mkdir -p "$out"
timeout 480 "$PY" benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@"
