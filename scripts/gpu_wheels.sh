#!/usr/bin/env bash
# What `make gpu-check` needs on a GPU machine that has torch, transformers, accelerate, pyarrow, pandas and
# triton but no internet: wheels of the packages its image lacks (or has at another version), at our pins,
# for its Python, plus the embedded tokenizer the stage runs use. About 24 MB, into .whl/ (git-ignored).
#   bash scripts/gpu_wheels.sh [PYTHON] [DEST] [PYTHON_VERSION]      # make gpu-wheels
# Then, on the GPU machine, from the repository root (--target: the image's own packages stay untouched):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_check.py
# An image whose pyarrow is older than 24 (datasets 5.2's floor) needs `pyarrow` added to the list (~45 MB).
set -euo pipefail
PY=${1:-.venv/bin/python}
DEST=${2:-.whl}
PYVER=${3:-3.12}

# DEST is the user's to name (`.` or `~` by mistake): only ever delete what this script wrote there. A
# DEST it made holds its marker; one that exists without it, or holds anything but wheels, the
# tokenizer and the marker, is refused before anything runs.
MARKER=.smolalign-gpu-wheels
refuse() { echo "error: gpu wheels: $DEST $1; name an empty or new directory (default .whl)" >&2; exit 2; }
if [ -e "$DEST" ] || [ -L "$DEST" ]; then
    [ -d "$DEST" ] && [ ! -L "$DEST" ] || refuse "is not a directory"
    shopt -s nullglob dotglob
    entries=("$DEST"/*)
    shopt -u nullglob dotglob
    if [ ${#entries[@]} -gt 0 ]; then
        [ -f "$DEST/$MARKER" ] || refuse "exists and was not made by this script (no $MARKER in it)"
        for entry in "${entries[@]}"; do
            case "${entry##*/}" in
                "$MARKER" | *.whl) [ -f "$entry" ] && [ ! -L "$entry" ] || refuse "holds $entry, not a wheel file" ;;
                tokenizer) [ -z "$(find "$entry" -mindepth 1 ! -name tokenizer.json ! -name tokenizer_config.json)" ] \
                               || refuse "holds files of its own in $entry" ;;
                *) refuse "holds $entry, which this script did not write" ;;
            esac
        done
    fi
fi

pin() { "$PY" -c "from importlib.metadata import version; print('$1==' + version('$1'))"; }

# trl, datasets (+ dill, multiprocess), liger-kernel and pydantic (+ its three) are missing there;
# transformers and peft at our pins (the image's transformers is older); typing-extensions for pydantic's
# floor and regex for the floor transformers checks when it is imported (regex>=2025.10.22).
PACKAGES=(trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 transformers==5.23.0 peft==0.21.2
          "$(pin pydantic)" "$(pin pydantic-core)" "$(pin annotated-types)" "$(pin typing-inspection)"
          "$(pin typing-extensions)" "$(pin dill)" "$(pin multiprocess)" "$(pin regex)")

# Last time's wheels go (another version of a package beside this one would break the install); nothing else.
mkdir -p "$DEST"
touch "$DEST/$MARKER"
rm -f "$DEST"/*.whl "$DEST/tokenizer/tokenizer.json" "$DEST/tokenizer/tokenizer_config.json"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${PACKAGES[@]}"

# The stage runs tokenize generated rows: the embedded model's tokenizer (SmolLM2's), built by `make setup`.
TOKENIZER=$("$PY" -c "from pipeline.core.models import resolve_model; print(resolve_model('embedded:tiny-smollm3'))")
mkdir -p "$DEST/tokenizer"
cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json "$DEST/tokenizer/"
echo "gpu wheels: $(ls "$DEST"/*.whl | wc -l) wheels and a tokenizer in $DEST ($(du -sh "$DEST" | cut -f1))"
