# saln-exp: `make help` lists the targets. Every target creates .venv first if it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,lightning]'
	@touch $@

install: $(VENV)/.installed ## create .venv and install saln-exp with its pinned dependencies

train: install ## run the default config (digits + lenet + saln on CPU); extra overrides: ARGS="..."
	$(BIN)/saln-train $(ARGS)

compare: install ## selectors side by side on the offline default, one comparison table
	$(BIN)/saln-train -m experiment=compare_offline $(ARGS)
	$(BIN)/saln-report outputs/sweeps/latest --table compare

FRACTION_SELECTORS := uniform,saln,jest,rho,topk_loss,loss_weighted,loss_qsplit,hard_accuracy_topk,rs2,importance,divbs
OTHER_SELECTORS := none,accuracy,accuracy_epoch,soft_accuracy,topq_loss,infobatch,selective_backprop
compare-mnist: install mnist ## every selector on the real MNIST + LeNet, 3 seeds (about 100 min on 2 cores) -> outputs/compare_mnist
	$(BIN)/saln-train -m experiment=compare_mnist selector=$(FRACTION_SELECTORS) selector.filter_ratio=0.5,0.8 seed=0,1,2 hydra.sweep.dir=outputs/compare_mnist/fraction $(ARGS)
	$(BIN)/saln-train -m experiment=compare_mnist selector=$(OTHER_SELECTORS) seed=0,1,2 hydra.sweep.dir=outputs/compare_mnist/other $(ARGS)
	$(BIN)/saln-report outputs/compare_mnist/fraction outputs/compare_mnist/other --table compare --out outputs/compare_mnist/report

test: install ## the test suite (what CI runs; Slurm tests skip without a cluster)
	$(BIN)/pytest $(ARGS)

test-fast: install ## the test suite without the slow end-to-end runs
	$(BIN)/pytest -m "not slow and not slurm" $(ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

mnist: ## unpack the real MNIST (MNIST_SRC, default ../shared/data/mnist) into data/MNIST/raw, checksums checked
	bash scripts/unpack_mnist.sh $(or $(MNIST_SRC),../shared/data/mnist) $(or $(SALN_DATA_DIR),data)

bench: install ## speed and memory benchmark -> bench/results.json and bench/results.md (ARGS="--only saln,runner" for some sections)
	$(BIN)/saln-bench $(ARGS)

bench-gpu: install ## the prepared GPU measurement, under 8 min on one GPU -> bench/gpu/results.json and results.md
	$(BIN)/saln-bench --gpu $(ARGS)

report: install ## tables and figures from the newest sweep (or ARGS="<dirs>")
	$(BIN)/saln-report $(if $(ARGS),$(ARGS),outputs/sweeps/latest)

slurm-up: ## install and start a one-node Slurm cluster on localhost (root, no systemd)
	bash scripts/slurm_local_up.sh

slurm-down: ## stop the local Slurm cluster
	bash scripts/slurm_local_down.sh

clean: ## remove run outputs and caches (not the venv, not data/)
	rm -rf outputs/runs outputs/sweeps .cache .pytest_cache .ruff_cache

.PHONY: help install train compare compare-mnist test test-fast lint mnist bench bench-gpu report slurm-up slurm-down clean
