# Two set-up commands on a new machine (Python 3.11 + pip): `make test` and `make demo`.
# Both create .venv when missing, install torch==2.13.0 first (the CPU wheel; otherwise pip would
# pull a multi-GB CUDA build), then this project with its dev extras, and ffmpeg with apt-get when
# ffprobe is missing. A second run installs nothing (the stamp file tracks pyproject.toml).

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PYTHONWARNINGS := ignore:`torch.distributed.all_gather_into_tensor` is deprecated:FutureWarning,ignore:`torch.distributed.reduce_scatter_tensor` is deprecated:FutureWarning
export no_proxy := 127.0.0.1,localhost
export NO_PROXY := 127.0.0.1,localhost

.PHONY: install test test-fast demo serve down clean ffmpeg

install: $(STAMP) ffmpeg

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

ffmpeg:
	@command -v ffprobe >/dev/null 2>&1 || { \
	  echo "ffprobe missing: installing ffmpeg with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq ffmpeg; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq ffmpeg; fi; }

test: install
	$(PY) -m pytest tests -q --durations=25

test-fast: install
	$(PY) -m pytest tests -q -m "not slow"

# make demo trains on 2 CPU ranks inside a private network namespace (infra/local/isolated.sh) when
# it can (root + unshare), else in one process.
DEMO_LAUNCHER ?= $(shell [ "$$(id -u)" = 0 ] && unshare --net true 2>/dev/null && echo local || echo single)
DEMO_STEPS ?= 200

demo: install
	$(VENV)/bin/pvq demo --steps $(DEMO_STEPS) --launcher $(DEMO_LAUNCHER)

serve: install
	infra/local/up.sh

down:
	infra/local/down.sh

clean:
	rm -rf .demo .cache/work .pytest_cache
