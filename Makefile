# psma-stage: the two commands of the README are `make demo` and `make test`.
# Both create .venv, install the project into it, and need nothing else on the machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: demo test install install-test system-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# System components: headless Chromium renders the HTML report in a test; dcm2niix is the
# reference the loading benchmark is timed against. Installed when we can (root with apt-get);
# tests skip with a reason when Chromium is absent, and fail instead under CI=true.
system-deps:
	@bash tools/system-deps.sh chromium

# The main job, end to end, on a synthetic cohort generated here (no data download):
# 12 patients of mixed stage as DICOM -> staged in parallel into SQLite -> summary.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/psma-stage phantom -o $(DEMO_DIR)/cohort --patients 12 --seed 2026 --size small --format dicom
	$(BIN)/psma-stage run $(DEMO_DIR)/cohort -o $(DEMO_DIR)/results --jobs 2
	@echo "Reports: $(DEMO_DIR)/results/<patient>/<study>/report.html; database: $(DEMO_DIR)/results/results.db"

test: install-test system-deps
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check imaging staging fixtures tests benchmarks
	$(BIN)/mypy

# The speed and memory benchmarks whose figures are in docs/performance.md (a few minutes).
# The batch throughput and method comparison take longer: see docs/batch.md, docs/benchmarks.md.
BENCHMARKS := bench_load bench_anatomy bench_lesions bench_stage bench_phantom bench_metrics
bench: install-test
	@bash tools/system-deps.sh dcm2niix
	@for b in $(BENCHMARKS); do echo "== $$b"; $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
