# stable-snn: `make demo` runs the whole system locally, `make test` runs the whole test suite.
# Both create the environment (.venv) from nothing on first use.

PYTHON_BIN ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed-stamp

# CIFAR-10: an offline Parquet copy in ../shared/data/cifar10 beside the clone when there is one,
# otherwise torchvision's copy, downloaded into ./data on first use.
OFFLINE_CIFAR10 := $(abspath ../shared/data/cifar10)
ifneq ($(wildcard $(OFFLINE_CIFAR10)/train.parquet),)
DATA_ROOT     ?= $(OFFLINE_CIFAR10)
DATA_DOWNLOAD ?= false
else
DATA_ROOT     ?= $(abspath data)
DATA_DOWNLOAD ?= true
endif

LOCAL          := $(abspath .local)
RAY_DASHBOARD  ?= 8265
MLFLOW_PORT    ?= 5000
RAY_ADDRESS_HTTP := http://127.0.0.1:$(RAY_DASHBOARD)
MLFLOW_URI     := http://127.0.0.1:$(MLFLOW_PORT)
DEMO_MODEL     ?= stable-snn-cifar10-vgg5
PYTEST_ARGS    ?=

export RAY_AUTH_MODE ?= disabled

.PHONY: help venv lock bytecode test test-fast demo stop stack-up stack-status benchmark benchmark-gpu gpu-epoch gpu-check figures ui-check clean

help:
	@echo "make demo       local Ray head + MLflow server, quick training job, registration, attack evaluation"
	@echo "make test       the whole test suite (unit + slow integration tests)"
	@echo "make test-fast  unit tests only (-m 'not slow')"
	@echo "make lock       re-resolve pyproject.toml into infra/local/environment.lock (after changing a pin)"
	@echo "make stop       stop the local Ray head and MLflow server"
	@echo "make benchmark  the training step as a quick-preset worker runs it vs the reference path (VGG5, T=8, batch 32)"
	@echo "make benchmark-gpu  the same on CUDA for VGG11, T=8, batch 64 in the paper presets' settings, then PGD-10"
	@echo "make gpu-epoch  one epoch of the paper's VGG11 T=8 CIFAR-10 at rho=1 preset on one GPU worker"
	@echo "make gpu-check  benchmark-gpu then gpu-epoch, dated, into gpu-check.log"
	@echo "make ui-check   a tiny search and an evaluation, their MLflow views rendered in headless Chromium"

# The versions of infra/local/environment.lock, installed by two pip processes at once on the platform the
# lock was made on (the CUDA torch stack and the rest), or pyproject.toml resolved elsewhere; then pip check.
# pip byte-compiles what it installs: without it (--no-compile), where PYTHONDONTWRITEBYTECODE is set every
# Python process, each Ray worker included, compiles torch, Ray and MLflow from source at import (make test
# took 1,025 s instead of about 620 s on 2 cores).
LOCK := infra/local/environment.lock

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m infra.local.environment install
	touch $(STAMP)

venv: $(STAMP)

# After changing a pin in pyproject.toml: resolve it in a scratch venv and write what it installs to the lock.
lock:
	$(PYTHON_BIN) -m infra.local.environment lock

# The whole suite on pytest-xdist workers, one per core up to four: the slow tests first, each group of
# tests that reads one session-wide run on one worker (tests/conftest.py), then the unit tests. The
# workers share one Ray head and one MLflow server, started when a test first needs them.
PYTEST := STABLE_SNN_CIFAR10_PARQUET=$(OFFLINE_CIFAR10) $(PY) -m pytest

test: $(STAMP) bytecode
	$(PYTEST) -n auto --maxprocesses 4 --dist loadgroup $(PYTEST_ARGS)

test-fast: $(STAMP) bytecode
	$(PYTEST) -m "not slow" -n auto $(PYTEST_ARGS)

# The project's own modules byte-compiled once (a second or two; unchanged files are skipped): where
# PYTHONDONTWRITEBYTECODE is set, every process the tests start (job drivers, Ray workers) would
# otherwise compile them again at import.
bytecode: $(STAMP)
	$(PY) -m compileall -q jobs stable_snn infra

stack-up: $(STAMP)
	$(PY) -m infra.local.stack up --root $(LOCAL) --dashboard-port $(RAY_DASHBOARD) --mlflow-port $(MLFLOW_PORT)

stack-status: $(STAMP)
	$(PY) -m infra.local.stack status --root $(LOCAL)

stop: $(STAMP)
	$(PY) -m infra.local.stack down --root $(LOCAL)

demo: stack-up
	@RUN=quick-$$($(PY) -c 'import secrets; print(secrets.token_hex(3))'); \
	COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown); \
	ENV='{"env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_URI)", "STABLE_SNN_DATA_ROOT": "$(DATA_ROOT)", "STABLE_SNN_STORAGE_PATH": "$(LOCAL)/checkpoints", "STABLE_SNN_GIT_COMMIT": "'$$COMMIT'", "RAY_AUTH_MODE": "disabled"}}'; \
	echo "== training run $$RUN (jobs/configs/quick.yaml) on $(RAY_ADDRESS_HTTP)"; \
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS_HTTP) --working-dir . --runtime-env-json "$$ENV" -- \
		python -m jobs.train --config jobs/configs/quick.yaml --set run.name=$$RUN --set data.download=$(DATA_DOWNLOAD) \
		|| exit 1; \
	echo "== promotion: models:/$(DEMO_MODEL)@candidate on its run's validation split (protocol quick)"; \
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS_HTTP) --working-dir . --runtime-env-json "$$ENV" -- \
		python -m jobs.evaluate --model-uri models:/$(DEMO_MODEL)@candidate --protocol quick --split validation \
		--limit 500 --dataset-root $(DATA_ROOT) --workers 2 --promote champion || exit 1; \
	echo "== report: models:/$(DEMO_MODEL)@candidate on the test split (protocol quick)"; \
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS_HTTP) --working-dir . --runtime-env-json "$$ENV" -- \
		python -m jobs.evaluate --model-uri models:/$(DEMO_MODEL)@candidate --protocol quick --limit 500 \
		--dataset-root $(DATA_ROOT) --workers 2 || exit 1; \
	echo; \
	echo "MLflow UI:        $(MLFLOW_URI)  (experiment stable-snn, run $$RUN)"; \
	MLFLOW_TRACKING_URI=$(MLFLOW_URI) $(PY) -c "from mlflow import MlflowClient; from jobs.tracking.views import EVALUATION_VIEW, runs_link; e = MlflowClient().get_experiment_by_name('stable-snn').experiment_id; print(f'  training runs:  {runs_link(\"$(MLFLOW_URI)\", e)}'); print(f'  evaluations:    {runs_link(\"$(MLFLOW_URI)\", e, EVALUATION_VIEW)}')"; \
	echo "Ray dashboard:    $(RAY_ADDRESS_HTTP)"; \
	MLFLOW_TRACKING_URI=$(MLFLOW_URI) $(PY) -c "from mlflow import MlflowClient; mv = MlflowClient().get_model_version_by_alias('$(DEMO_MODEL)', 'candidate'); print(f'Registered model: models:/{mv.name}/{mv.version} (alias candidate; tags {dict(mv.tags)})')"; \
	echo "Stop the services with: make stop"

# A tiny Tune search (interrupted and resumed) and an attack evaluation on fresh services, then the MLflow UI's runs and compare
# pages rendered in headless Chromium; the screenshots go to $(UI_SCREENSHOTS).
UI_SCREENSHOTS ?= tests/ui/screenshots
ui-check: $(STAMP)
	STABLE_SNN_CIFAR10_PARQUET=$(OFFLINE_CIFAR10) STABLE_SNN_UI_SCREENSHOTS=$(abspath $(UI_SCREENSHOTS)) \
		$(PY) -m pytest tests/ui $(PYTEST_ARGS)

BENCH_CONFIG ?= jobs/configs/quick.yaml
GPU_PRESET   := jobs/configs/paper-vgg11-cifar10-at-rho1.yaml

benchmark: $(STAMP)
	$(PY) -m jobs.tools.benchmark --config $(BENCH_CONFIG) --arch vgg5 --timesteps 8 --batch-size 32 --mode at --rho 1.0 --peaks

benchmark-gpu: $(STAMP)
	$(PY) -m jobs.tools.benchmark --config $(GPU_PRESET) --arch vgg11 --timesteps 8 --batch-size 64 --mode at --rho 1.0 \
		--device cuda --backend compiled --steps 10 --warmup 3 --peaks
	$(PY) -m jobs.tools.benchmark --config $(GPU_PRESET) --arch vgg11 --timesteps 8 --batch-size 64 --eval \
		--device cuda --backend compiled --precision fp32 --steps 5 --warmup 2 --peaks

# One training epoch of the paper's VGG11 preset on one GPU worker (validation of its checkpoint
# follows as Ray Train's validation task); the epoch line gives images/s and the epoch's seconds.
gpu-epoch: stack-up
	@ENV='{"env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_URI)", "STABLE_SNN_DATA_ROOT": "$(DATA_ROOT)", "STABLE_SNN_STORAGE_PATH": "$(LOCAL)/checkpoints", "RAY_AUTH_MODE": "disabled"}}'; \
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS_HTTP) --working-dir . --runtime-env-json "$$ENV" -- \
		python -m jobs.train --config $(GPU_PRESET) --set run.name=gpu-epoch-$$(date -u +%Y%m%d-%H%M%S) \
		--set optim.epochs=1 --set run.num_workers=1 --set model.backend=compiled \
		--set data.download=$(DATA_DOWNLOAD) --no-register

gpu-check:
	@{ date -u; $(MAKE) --no-print-directory benchmark-gpu && $(MAKE) --no-print-directory gpu-epoch; } 2>&1 | tee gpu-check.log

clean:
	rm -rf $(VENV) .pytest_cache .cache build *.egg-info
