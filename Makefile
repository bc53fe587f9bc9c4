# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow lint bench-tiling clean

$(BIN)/pathssl: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/pathssl

venv: $(BIN)/pathssl

# The sample folder holds a deliberately broken slide and one without a resolution: the tiler
# reports them as failed (exit code 1) and goes on; exit code 2 (bad arguments) stops the demo.
demo: venv
	$(BIN)/pathssl tile $(DATA)/slides --out $(DEMO_OUT)/tiles --mpp 0.5 --size 224 --workers 2; \
	  test $$? -le 1
	$(BIN)/python -c "from tiling import open_store; print(open_store('$(DEMO_OUT)/tiles/CMU-1-Small-Region.zarr'))"
	$(BIN)/pathssl augment-preview $(DEMO_OUT)/tiles/CMU-1-Small-Region.zarr --recipe simclr \
	  --out $(DEMO_OUT)/augment-simclr.png
	$(BIN)/python benchmarks/demo_pipeline.py --out $(DEMO_OUT) --data $(DATA) \
	  --pretrain-steps 300 --nuclei-steps 300
	@echo "Open $(DEMO_OUT)/report.html"

lint: venv
	$(BIN)/ruff check tiling pathssl tests benchmarks
	$(BIN)/ruff format --check tiling pathssl tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

bench-tiling: venv
	$(BIN)/python benchmarks/bench_tiling.py

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache .mypy_cache .ruff_cache
