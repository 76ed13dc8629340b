#!/usr/bin/env bash
# Builds the venv of `make gpu-rehearsal`: Python 3.12 and the GPU image's packages (scripts/gpu_image.txt), and
# nothing of this project (on the GPU machine the project is a directory on PYTHONPATH, not an install).
# Rebuilt only when the list or this script changes (a stamp holds their hash); a build cut short leaves no
# stamp, so the next call starts it again. uv installs the list: the registry's torch wheel and the CUDA
# libraries it needs to import are ~1.9 GB, which pip downloads every time here (the registry sends no cache
# headers, so pip keeps no copy) and unpacks in ~3.5 minutes; uv keeps them in its cache (~/.cache/uv) and
# builds the venv again from there in seconds (measured: 67 s with an empty cache, 5 s with a warm one).
#   bash scripts/setup_gpu_rehearsal_venv.sh VENV          (PY312=/path/to/python3.12 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: setup_gpu_rehearsal_venv.sh VENV}
LIST=scripts/gpu_image.txt
UV=uv==0.13.9

# Python 3.12, as on the GPU image (3.12.3 there). A pyenv shim answers `python3.12` but refuses to run it
# unless that version is selected, so ask pyenv for its own 3.12 when the plain name does not run.
find_python312() {
    if [[ -n ${PY312:-} ]]; then echo "$PY312"; return; fi
    if python3.12 -c '' 2>/dev/null; then command -v python3.12; return; fi
    if command -v pyenv >/dev/null; then
        local version
        version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -1)
        if [[ -n $version ]]; then echo "$(pyenv root)/versions/$version/bin/python3.12"; return; fi
    fi
    return 1
}

key=$(sha256sum "$LIST" scripts/setup_gpu_rehearsal_venv.sh | sha256sum | cut -d' ' -f1)
STAMP=$VENV/.smolalign-gpu-rehearsal
if [[ -f $STAMP && "$(cat "$STAMP")" == "$key" ]]; then
    echo "gpu rehearsal: $VENV is up to date with $LIST"
    exit 0
fi
PYTHON=$(find_python312) || {
    echo "error: gpu rehearsal: Python 3.12 not found (the GPU image's Python); install it (pyenv install 3.12," \
         "apt-get install python3.12) or name it: make gpu-rehearsal PY312=/path/to/python3.12" >&2
    exit 2
}
# Ours to delete: a directory holding our stamp file (any version of it), or nothing at all.
if [[ -e $VENV && ! -f $STAMP ]] && [[ -n "$(ls -A "$VENV" 2>/dev/null)" ]] && [[ ! -f $VENV/.smolalign-building ]]; then
    echo "error: gpu rehearsal: $VENV exists and was not made by this script; name another (GPU_REHEARSAL_VENV=...)" >&2
    exit 2
fi
echo "gpu rehearsal: building $VENV from $LIST with $PYTHON (only when the list changes)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"  # with pip, as the image has: `make gpu-check` installs the carried wheels with it
touch "$VENV/.smolalign-building"
PY=$VENV/bin/python
"$PY" -m pip install -q "$UV"
"$VENV/bin/uv" pip install -q --python "$PY" -r "$LIST"
# What the image lacks must come from the carried wheels only: remove any that a dependency pulled in, and uv.
read -r -a absent <<< "$(sed -n 's/^# absent: *//p' "$LIST")"
"$VENV/bin/uv" pip uninstall -q --python "$PY" "${absent[@]}" uv
# Fails here, not in the rehearsal, when the install is broken.
"$PY" -c "import sys, torch, transformers, accelerate, pandas, pyarrow, matplotlib, xxhash
print('gpu rehearsal venv: python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
rm -f "$VENV/.smolalign-building"
echo "$key" > "$STAMP"
