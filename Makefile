# The two commands of the set-up contract are `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo bench clean

install: $(BIN)/m3leo-tiles

$(BIN)/m3leo-tiles: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,train]"
	@touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python bench/bench_grid.py
	$(BIN)/python bench/bench_fetch.py
	$(BIN)/python bench/bench_chip_steps.py
	$(BIN)/python bench/bench_remote.py
	$(BIN)/python bench/bench_loader.py

clean:
	rm -rf $(VENV) build dist demo-output .pytest_cache
