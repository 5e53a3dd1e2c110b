# The two commands of the README: `make train` and `make test`. Each creates .venv and
# installs the project into it on first use (and again when pyproject.toml changes).
#   make train ARGS="experiment=smoke"        extra Hydra overrides go in ARGS
#   make test PYTEST_ARGS="-m 'not slow'"     extra pytest arguments

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test lint format tensorboard clean gpu-check gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

# The GPU checks (tools/gpu_check.py): pytest -m gpu and the benchmark, on the machine's own
# Python where there is no .venv (the lent GPU machine); one line and exit 0 without a GPU.
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) tools/gpu_check.py $(ARGS)

# The wheels gpu-check installs on a GPU machine that lacks them, into .whl/ (git-excluded).
gpu-wheels: $(STAMP)
	$(BIN)/python tools/gpu_check.py --download-wheels
