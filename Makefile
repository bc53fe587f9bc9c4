# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow lint bench-tiling bench-methods docker-test clean

$(BIN)/pathssl: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/pathssl

venv: $(BIN)/pathssl

# `pathssl demo` runs every stage (tiling, augmentation preview, SimCLR pretraining, kNN probe,
# nuclei head, slide prediction) and writes $(DEMO_OUT)/report.html. The sample folder holds a
# deliberately broken slide and one without a resolution: the demo reports them as failed and goes
# on (exit code 1); exit code 2 (bad arguments or data) stops make.
demo: venv
	$(BIN)/pathssl demo --out $(DEMO_OUT) --data $(DATA); \
	  test $$? -le 1
	@echo "Open $(DEMO_OUT)/report.html"

lint: venv
	$(BIN)/ruff check tiling pathssl tests benchmarks
	$(BIN)/ruff format --check tiling pathssl tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# Every registered SSL method after 3 CPU minutes (2 seeds): frozen-trunk nuclei PQ on held-apart
# hand-drawn images + kNN; writes the table into benchmarks/README.md (about 4 h on 2 cores;
# resumes from bench_out/all_methods/results.jsonl).
bench-methods: venv
	$(BIN)/python benchmarks/all_methods.py

bench-tiling: venv
	$(BIN)/python benchmarks/bench_tiling.py

# Not part of `make test`: builds docker/Dockerfile on a local Debian base (made if missing; needs
# root and debootstrap the first time) and runs tile, pretrain, nuclei predict and --version in
# the image as a non-root user, then checks the outputs here (docker/test.sh, docker/README.md).
docker-test: venv
	DATA=$(DATA) docker/test.sh

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache .mypy_cache .ruff_cache
