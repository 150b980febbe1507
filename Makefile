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
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

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
	@echo "== 1/3 making a VOC/SBD-format dataset of $(DEMO_IMAGES) images in $(DEMO_DIR)/data"
	$(VENV)/bin/deeplab-tfx make-dataset --out $(DEMO_DIR)/data --num-images $(DEMO_IMAGES) --seed 0 --max-side 500
	@echo "== 2/3 ingesting it alone (deeplab-tfx ingest) into $(DEMO_DIR)/ingest"
	$(VENV)/bin/deeplab-tfx ingest --voc-root $(DEMO_DIR)/data --sbd-root $(DEMO_DIR)/data --output $(DEMO_DIR)/ingest
	@echo "== 3/3 running the pipeline with LocalDagRunner (config: tiny)"
	$(VENV)/bin/deeplab-tfx run --config tiny --set data.voc_root=$(abspath $(DEMO_DIR))/data \
	    --set data.sbd_root=$(abspath $(DEMO_DIR))/data --set pipeline_root=$(abspath $(DEMO_DIR))/pipeline

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
