# Two commands do everything on a fresh machine:
#   make demo   set up .venv, fetch Fashion-MNIST if needed, train a short DP-SGD run, check the theory
#   make test   set up .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test lint bench gpu-stage gpu-dry-run
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian's dataset-fashion-mnist puts the real IDX files in $(FASHION); otherwise the
# loader downloads them (SHA-256 verified) or says exactly where to put them.
data:
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
	  echo "note: apt could not install dataset-fashion-mnist; the loader will try to download"; \
	fi

demo: setup data
	rm -rf runs/demo
	$(BIN)/toolkit train --preset fashion-mnist-tanh --epochs 3 --out runs/demo
	$(BIN)/toolkit bound-check --json runs/bound-check.json --plot runs/bound-check --overwrite

# One pytest worker per core (pytest-xdist): the tests are mostly single-threaded XLA
# compiles, so workers on separate cores overlap them.
test: setup
	$(BIN)/pytest -n auto

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

# Optional comparisons (jax-privacy, torch CPU, opacus) are skipped with a note when absent.
bench: setup
	$(BIN)/pip install -q -e '.[bench]' || echo "note: the bench extra did not install; comparisons will be skipped"
	$(BIN)/python -m benchmarks.step_time
	$(BIN)/python -m benchmarks.breakdown

# The GPU check (benchmarks/README.md): stage the wheels the GPU image lacks and the
# Fashion-MNIST files into .gpu_stage/ (needs PyPI), then carry .gpu_stage to the GPU machine
# and run `bash benchmarks/gpu_check.sh run` there. gpu-dry-run runs it all on the CPU.
gpu-stage: setup
	$(BIN)/python -m benchmarks.gpu_check stage --dest .gpu_stage

gpu-dry-run: gpu-stage
	rm -rf runs/gpu_check_dry
	PY=$(CURDIR)/$(BIN)/python OUT=$(CURDIR)/runs/gpu_check_dry bash benchmarks/gpu_check.sh run --dry-run
