# Two entry points, both working in a fresh clone with only Python 3.11 and pip:
#   make demo   - set up .venv, fetch MNIST, run the TSSL-BP, KE and AdaShare demos, one report
#   make test   - set up .venv with [dev,tensorboard,triton,nir-simulators], run ruff and pytest
#                 (the wheel test, the Triton interpreter tests and the snnTorch / Norse checks too)
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test lint setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install "$(TORCH)" -e .

setup-dev: $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install "$(TORCH)" -e ".[dev,tensorboard,triton,nir-simulators]"

DEMO_PARTS := $(RUN_DIR)/snn $(RUN_DIR)/ke $(RUN_DIR)/adashare

demo: setup
	$(BIN)/efficientdl data fetch mnist
	$(BIN)/efficientdl data fetch digits
	rm -rf $(DEMO_PARTS)
	$(BIN)/efficientdl snn train --config snn/demo --run-dir $(RUN_DIR)/snn
	$(BIN)/efficientdl ke train --config ke/demo --run-dir $(RUN_DIR)/ke
	$(BIN)/efficientdl adashare pipeline --config adashare/procedural_demo \
		--run-dir $(RUN_DIR)/adashare
	$(BIN)/efficientdl report --out $(RUN_DIR)/report.md $(DEMO_PARTS)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest's exit code 5 (no test collected) is reported, not hidden
test: lint
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$status

clean:
	rm -rf $(VENV) runs
