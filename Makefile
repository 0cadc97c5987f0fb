# Two entry points, both working in a fresh clone with only Python 3.11 and pip:
#   make demo   - set up .venv, fetch MNIST, run the TSSL-BP, KE and AdaShare demos, one report
#   make test   - set up .venv with [dev], run ruff and pytest
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e .

setup-dev: $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"

DEMO_PARTS := $(RUN_DIR)/snn $(RUN_DIR)/ke $(RUN_DIR)/adashare

demo: setup
	$(BIN)/efficientdl data fetch mnist
	$(BIN)/efficientdl data fetch digits
	rm -rf $(DEMO_PARTS)
	$(BIN)/efficientdl snn train --config configs/snn/demo.yaml --run-dir $(RUN_DIR)/snn
	$(BIN)/efficientdl ke train --config configs/ke/demo.yaml --run-dir $(RUN_DIR)/ke
	$(BIN)/efficientdl adashare pipeline --config configs/adashare/procedural_demo.yaml \
		--run-dir $(RUN_DIR)/adashare
	$(BIN)/efficientdl report --out $(RUN_DIR)/report.md $(DEMO_PARTS)

test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
