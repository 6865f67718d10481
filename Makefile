# The two commands of the set-up contract are `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install browser test lint demo bench clean

install: $(BIN)/m3leo-tiles browser

# The map's browser test drives Debian's chromium (no browser download at run time). As root
# (CI, containers) it is installed here; elsewhere install it yourself or that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found; run 'sudo apt-get install chromium' for the map test"; fi; }

$(BIN)/m3leo-tiles: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,train,bench]"
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
	$(BIN)/python bench/bench_runmap.py
	$(BIN)/python bench/bench_codec.py
	$(BIN)/python bench/bench_ee_cpu.py
	$(BIN)/python bench/bench_catalog.py --quick
	$(BIN)/python bench/bench_scale.py --aoi demo

clean:
	rm -rf $(VENV) build dist demo-output .pytest_cache
