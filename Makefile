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
$(STAMP): constraints.txt setup.py
	@test -n "$(PYTHON310)" || { echo "Python 3.10 not found: install it (e.g. 'pyenv install 3.10.13') or pass PYTHON310=/path/to/python3.10" >&2; exit 1; }
	@echo "== creating $(VENV) with $(PYTHON310) and installing the pinned stack (about 5 minutes the first time)"
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "wheel==0.45.1"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" ; test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

demo: $(STAMP)
	@echo "== 1/4 making a VOC/SBD-format dataset of $(DEMO_IMAGES) images in $(DEMO_DIR)/data"
	$(VENV)/bin/deeplab-tfx make-dataset --out $(DEMO_DIR)/data --num-images $(DEMO_IMAGES) --seed 0 --max-side 500
	@echo "== 2/4 ingesting it alone (deeplab-tfx ingest) into $(DEMO_DIR)/ingest"
	$(VENV)/bin/deeplab-tfx ingest --voc-root $(DEMO_DIR)/data --sbd-root $(DEMO_DIR)/data --output $(DEMO_DIR)/ingest
	@echo "== 3/4 running the pipeline with LocalDagRunner (config: tiny)"
	$(VENV)/bin/deeplab-tfx run --config tiny --set data.voc_root=$(abspath $(DEMO_DIR))/data \
	    --set data.sbd_root=$(abspath $(DEMO_DIR))/data --set pipeline_root=$(abspath $(DEMO_DIR))/pipeline
	@echo "== 4/4 serving the pushed model (deeplab-tfx serve, 127.0.0.1:$(DEMO_PORT)) and segmenting 4 eval images over gRPC"
	@set -eo pipefail; \
	  $(VENV)/bin/deeplab-tfx serve --model-base-path $(DEMO_DIR)/pipeline/serving/deeplab --model-name deeplab \
	    --port $(DEMO_PORT) > $(DEMO_DIR)/serve.log 2>&1 & server=$$!; trap "kill $$server 2>/dev/null" EXIT; \
	  images=$$(head -n 4 $(DEMO_DIR)/data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt \
	    | sed 's|.*|$(DEMO_DIR)/data/VOCdevkit/VOC2012/JPEGImages/&.jpg|'); \
	  $(VENV)/bin/deeplab-tfx predict --server 127.0.0.1:$(DEMO_PORT) --model-name deeplab --deadline 120 \
	    --out $(DEMO_DIR)/predictions $$images 2>&1 | grep -v -E "^[0-9-]+ [0-9:.]+: [IWE] |Warning|warn"; \
	  echo "== done: report $(DEMO_DIR)/pipeline/report/index.html; masks and overlays in $(DEMO_DIR)/predictions"

# Headless Chromium renders the run report in the tests (Debian's chromium, chromium-driver).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "== installing Debian's chromium and chromium-driver for the report tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Every benchmark writes benchmarks/results/<name>.json and one line; the README table is then
# regenerated from the JSON. keras_hub (the train-step reference) is not one of our pins: it goes
# into .bench-site, which only that benchmark's worker imports; without it the floor is used.
BENCHMARKS := ingest_throughput palette_decode transform_materialization input_pipeline train_step \
	iou_metric serving_latency scaling
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
