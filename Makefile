# deeplab-tfx: `make demo` and `make test` are the two commands a fresh machine needs.
# Both create .venv (Python 3.10) and install the pinned stack when it is missing or stale.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Python 3.10: TFX 1.16 supports 3.9-3.10. pyenv's shim honours .python-version.
PYTHON310 ?= $(shell command -v python3.10 2>/dev/null || ls -d $(HOME)/.pyenv/versions/3.10*/bin/python3.10 2>/dev/null | tail -n 1)
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_IMAGES ?= 120
DEMO_PORT ?= 8500
PYTEST_ARGS ?=
# apt needs root; sudo where we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test lint bench clean

setup: $(STAMP)

# Reinstalls when the pins or the package definition change.
# uv installs the stack: from an empty .venv on 2 shared cores with cold caches, pip took 10 min 20 s
# and uv 1 min 43 s (1 min 4 s with uv's cache warm; the whole of `make setup` 2 min 17 s), for the
# same `pip freeze`: README, "Two commands".
# uv reads neither pip.conf nor PIP_*, so it resolves from PyPI alone: the pins make that the same set.
# It builds the stack's few sdists (kfp, rouge-score, ...) in isolated environments, with the build
# backend pyproject.toml pins rather than the newest setuptools. pip is the fallback where uv cannot
# be installed or fails (e.g. an index that only pip.conf names).
WHEEL_PIN := wheel==0.45.1
UV_PIN := uv==0.13.9
UV_BUILD_PINS := setuptools==75.3.0 $(WHEEL_PIN)
# pip warns about each package missing from this machine's extra file:// indexes; the status is pip's.
PIP_INSTALL := set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
PIP_STACK := $(PIP_INSTALL) -c constraints.txt -e ".[all]" $(QUIET_PIP)
$(STAMP): constraints.txt setup.py
	@test -n "$(PYTHON310)" || { echo "Python 3.10 not found: install it (e.g. 'pyenv install 3.10.13') or pass PYTHON310=/path/to/python3.10" >&2; exit 1; }
	@echo "== creating $(VENV) with $(PYTHON310) and installing the pinned stack with uv (about 2 minutes the first time)"
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	@$(PIP_INSTALL) "$(WHEEL_PIN)" $(QUIET_PIP)
	@if ! { $(PIP_INSTALL) "$(UV_PIN)" $(QUIET_PIP); }; then \
	  echo "== uv could not be installed: pip installs the stack instead (about 10 minutes)"; $(PIP_STACK); \
	elif ! $(VENV)/bin/uv pip install -q --python $(PY) -c constraints.txt \
	    --build-constraints <(printf '%s\n' $(UV_BUILD_PINS)) -e ".[all]"; then \
	  echo "== uv failed (above): pip installs the stack instead (about 10 minutes)"; $(PIP_STACK); \
	fi
	@touch $(STAMP)

# Quiet: each command prints what a person follows and names its full log file (-v on a
# deeplab-tfx command puts everything back on the terminal). Ends by writing the run's figures
# to $(DEMO_DIR)/figures.json, from which `python -m benchmarks.demo_figures` writes the README's.
demo: $(STAMP)
	@mkdir -p $(DEMO_DIR); date +%s > $(DEMO_DIR)/.started
	@echo "== 1/5 deeplab-tfx make-dataset: a VOC/SBD-format dataset of $(DEMO_IMAGES) images in $(DEMO_DIR)/data"
	@$(VENV)/bin/deeplab-tfx make-dataset --out $(DEMO_DIR)/data --num-images $(DEMO_IMAGES) --seed 0 --max-side 500
	@echo "== 2/5 deeplab-tfx ingest: the ingestion Beam job alone, into $(DEMO_DIR)/ingest"
	@$(VENV)/bin/deeplab-tfx ingest --voc-root $(DEMO_DIR)/data --sbd-root $(DEMO_DIR)/data --output $(DEMO_DIR)/ingest
	@echo "== 3/5 deeplab-tfx run --config tiny: the pipeline on LocalDagRunner, under $(DEMO_DIR)/pipeline"
	@$(VENV)/bin/deeplab-tfx run --config tiny --set data.voc_root=$(abspath $(DEMO_DIR))/data \
	    --set data.sbd_root=$(abspath $(DEMO_DIR))/data --set pipeline_root=$(abspath $(DEMO_DIR))/pipeline
	@echo "== 4/5 deeplab-tfx serve (127.0.0.1:$(DEMO_PORT), log in $(DEMO_DIR)/serve.log) and predict: 4 eval images over gRPC"
	@set -eo pipefail; \
	  $(VENV)/bin/deeplab-tfx --log-dir $(DEMO_DIR)/logs serve --model-base-path $(DEMO_DIR)/pipeline/serving/deeplab \
	    --model-name deeplab --port $(DEMO_PORT) > $(DEMO_DIR)/serve.log 2>&1 & server=$$!; \
	  trap "kill $$server 2>/dev/null" EXIT; \
	  images=$$(head -n 4 $(DEMO_DIR)/data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt \
	    | sed 's|.*|$(DEMO_DIR)/data/VOCdevkit/VOC2012/JPEGImages/&.jpg|'); \
	  $(VENV)/bin/deeplab-tfx --log-dir $(DEMO_DIR)/logs predict --server 127.0.0.1:$(DEMO_PORT) \
	    --model-name deeplab --deadline 120 --out $(DEMO_DIR)/predictions $$images
	@echo "== 5/5 deeplab-tfx infer: the pushed model's masks for every image of the dataset, as a Beam job, in $(DEMO_DIR)/inferred"
	@$(VENV)/bin/deeplab-tfx infer --model $(DEMO_DIR)/pipeline/serving/deeplab \
	    --input $(DEMO_DIR)/data/VOCdevkit/VOC2012/JPEGImages --output $(DEMO_DIR)/inferred --overlay
	@$(PY) -m benchmarks.demo_figures collect --pipeline-root $(DEMO_DIR)/pipeline \
	    --started $$(cat $(DEMO_DIR)/.started) --finished $$(date +%s) --out $(DEMO_DIR)/figures.json
	@echo "== done: report $(DEMO_DIR)/pipeline/report/index.html; masks and overlays in $(DEMO_DIR)/predictions and $(DEMO_DIR)/inferred"

# Headless Chromium renders the run report in the tests (Debian's chromium, chromium-driver).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "== installing Debian's chromium and chromium-driver for the report tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }; }

# Two pytest-xdist workers, a test module to a worker (its module-scoped pipeline runs and
# servers are built once), the slowest modules first (tests/conftest.py): 2 cores spend much of
# the suite waiting on subprocesses, Beam workers and servers. TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope) $(PYTEST_ARGS)

# Every benchmark writes benchmarks/results/<name>.json and one line; the README table is then
# regenerated from the JSON. keras_hub (the train-step reference) is not one of our pins: it goes
# into .bench-site, which only that benchmark's worker imports; without it the floor is used.
BENCHMARKS := ingest_throughput palette_decode transform_materialization input_pipeline train_step \
	iou_metric serving_latency serving_memory batch_inference scaling learning
bench: $(STAMP)
	@test -d .bench-site/keras_hub || $(PY) -m pip install -q --disable-pip-version-check --target .bench-site \
	    --no-deps keras-hub==0.18.1 kagglehub==1.0.2 2>&1 | grep -v "is ignored" || true
	@mkdir -p benchmarks/.work/logs; start=$$(date +%s); for b in $(BENCHMARKS); do \
	  echo "== benchmarks/$$b.py ($$(( $$(date +%s) - start )) s so far; log in benchmarks/.work/logs/$$b.log)"; \
	  $(PY) -m benchmarks.$$b 2> benchmarks/.work/logs/$$b.log || \
	    { tail -n 20 benchmarks/.work/logs/$$b.log >&2; echo "benchmarks/$$b.py failed" >&2; exit 1; }; \
	done; echo "== all benchmarks in $$(( $$(date +%s) - start )) s"
	$(PY) -m benchmarks.summary --write README.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
