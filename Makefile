# The two commands a user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision are pinned to the builds available offline on the reference machines.
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/dd-distill experiment=digits_coreset_table

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m ''

lint: install
	$(VENV)/bin/ruff check dd tests benchmarks

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache .ruff_cache *.egg-info
