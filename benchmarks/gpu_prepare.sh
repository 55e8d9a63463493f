#!/bin/bash
# Prepares, on this (CPU, networked) machine, what benchmarks/gpu_check.sh needs on a bare GPU
# machine that can reach nothing: .gpu/whl (the project's Python packages that the GPU image lacks,
# as cp312 x86-64 wheels, at the versions this venv runs) and .gpu/shards (the embedded demo set,
# sharded with configs/shard/demo.yaml, for the loader check). .gpu/ is git-ignored; carry it:
#
#   bash benchmarks/gpu_prepare.sh          # here, once
#   device run, carry [".gpu"]: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .gpu/whl
version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64
      --platform manylinux1_x86_64)
for pkg in pydantic pydantic_core annotated-types typing-inspection hjson webdataset braceexpand decord; do
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d .gpu/whl "$pkg==$(version "$pkg")"
done
# DeepSpeed publishes a source archive only: build its pure-Python wheel (ops compile at run time)
ls .gpu/whl/deepspeed-*.whl >/dev/null 2>&1 || DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps \
  --no-build-isolation -w .gpu/whl "deepspeed==$(version deepspeed)"
if [ ! -f .gpu/shards/LATEST ]; then
  RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled "$PY" - <<'PYEOF'
from pathlib import Path
from data_prep.config import load_shard_config
from data_prep.samples import make_demo_set
from data_prep.shard import shard
demo = make_demo_set(Path(".gpu/sources"))
shard([str(demo.csv), str(demo.coco_json)], ".gpu/shards", load_shard_config("configs/shard/demo.yaml"))
PYEOF
  rm -rf .gpu/sources
fi
du -sh .gpu/whl .gpu/shards
