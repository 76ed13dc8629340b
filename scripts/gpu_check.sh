#!/usr/bin/env bash
# `make gpu-check`, the one command on a GPU machine: when .whl/ holds the wheels of `make gpu-wheels`, installs
# them into a private target (.gpu-site/, the image's own packages untouched) and runs scripts/gpu_check.py with
# that target first on PYTHONPATH, then this repository; without carried wheels, runs it as it is.
# `make gpu-rehearsal` runs this same script on CPU with --rehearsal, so what the GPU machine does here is
# rehearsed in CI.
#   bash scripts/gpu_check.sh PYTHON [scripts/gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: gpu_check.sh PYTHON [options]}
shift
WHEELS=${GPU_WHEELS:-.whl}
SITE=$(realpath -m "${GPU_SITE:-.gpu-site}")
MARKER=.smolalign-gpu-site  # what this script deletes and replaces holds it; nothing else is touched

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
path=$PWD
if [[ ${#wheels[@]} -gt 0 ]]; then
    # Wheels with compiled code are for one Python (cp312 for the GPU image): say so in one line, before pip
    # refuses them one by one.
    have=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
    for wheel in "${wheels[@]}"; do
        tag=$(basename "$wheel" .whl | rev | cut -d- -f3 | rev)  # name-version[-build]-PYTHON-abi-platform
        if [[ $tag =~ ^(cp|py)3([0-9]+)$ && ${BASH_REMATCH[2]} != "${have:1}" ]]; then
            echo "error: gpu-check: $wheel is for Python 3.${BASH_REMATCH[2]} and $PY is Python ${have:0:1}.${have:1}:" \
                 "run it with that Python (make gpu-check GPU_PYTHON=python3.${BASH_REMATCH[2]}), or remake the wheels" \
                 "for this one (make gpu-wheels GPU_PYVER=${have:0:1}.${have:1})" >&2
            exit 2
        fi
    done
    for dir in "$SITE" "$SITE.tmp"; do
        if [[ -e $dir && ! -f $dir/$MARKER ]]; then
            echo "error: gpu-check: $dir exists and was not made by this script; move it away or set GPU_SITE" >&2
            exit 2
        fi
    done
    # A fresh target each time (the wheels may have changed), renamed into place only once complete.
    rm -rf "$SITE.tmp"
    mkdir -p "$SITE.tmp"
    touch "$SITE.tmp/$MARKER"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE.tmp" "${wheels[@]}"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    echo "gpu-check: ${#wheels[@]} carried wheels from $WHEELS installed into $SITE, first on PYTHONPATH"
    path=$SITE:$PWD
    export SMOLALIGN_GPU_SITE=$SITE
fi
PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH} exec "$PY" scripts/gpu_check.py "$@"
