# README command 1: `make demo`; README command 2: `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1

.PHONY: setup services demo test bench

$(BIN)/nearwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch pinned: 2.13.0 is the CPU wheel on this disk; anything else pulls a CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

setup: $(BIN)/nearwatch

# Test-only system services: Redis (normally already running) and the Debian
# Prometheus/Alertmanager binaries that the service tests scrape with.
services:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""
	@command -v prometheus >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null)

demo: setup
	$(BIN)/nearwatch demo

test: setup services
	$(BIN)/ruff check nearwatch detector worker scheduler bench tests
	@# mypy checks the packages by import name; it cannot follow the folder mapping of the
	@# editable install, so the folders are linked under build/typecheck/nearwatch/ first.
	@mkdir -p build/typecheck/nearwatch && ln -sf ../../../nearwatch/__init__.py build/typecheck/nearwatch/ \
		&& for d in detector worker scheduler; do ln -sfn ../../../$$d build/typecheck/nearwatch/$$d; done
	$(BIN)/mypy
	$(BIN)/pytest

# Quality benchmark (needs ../shared/data/adbench); commands as in bench/results/README.md.
bench: setup
	$(BIN)/nearwatch bench --data-dir ../shared/data/adbench --seeds 5 --peers knn,lof,iforest,ecod,copod,autoencoder --out bench/results/adbench29
	$(BIN)/nearwatch bench --data-dir ../shared/data/adbench --seeds 5 --labelled-anomalies 10 --out bench/results/adbench29-labelled10
	$(BIN)/python -m bench.readme_table bench/results/adbench29 bench/results/adbench29-labelled10
