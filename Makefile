# Set up a virtual environment and run the demo or the tests.
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BENCH_BUDGET ?= 900
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup demo test lint bench quality clean

$(BIN)/a2vgen: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/a2vgen

# The tests also run the federation on Flower's simulation runtime (a2vgen[flower-sim], with Ray)
$(VENV)/.flower-sim: $(BIN)/a2vgen
	$(BIN)/pip install --quiet -e ".[dev,flower-sim]"
	touch $@

demo: setup
	$(BIN)/a2vgen fit --config configs/demo.yaml

test: setup $(VENV)/.flower-sim
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run_all.py --budget $(BENCH_BUDGET)

quality: setup
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) runs lightning_logs wandb
