#!/usr/bin/env bash
# Build smolalign's wheel, install it (not editable) into a scratch venv and run the installed CLI
# from outside the checkout on every shipped recipe: what `pip install .` users get must work, not
# only the editable install the tests use. (`make test` runs this.)
#
# The scratch venv takes its dependencies from the test venv through a .pth line (a second 1.6 GB
# install would test pip, not us); the smolalign code itself comes only from the wheel, checked below.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$repo/.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$repo" 2>&1 | grep -v '^WARNING: Location' || true
rm -rf "$repo/build"
"$py" -m venv --without-pip "$tmp/venv"
deps="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
site="$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$site/zz_smolalign_test_deps.pth"   # sorted last: the wheel's own files come first
"$py" -m pip --python "$tmp/venv/bin/python" install -q --no-deps --no-index "$tmp"/dist/smolalign-*.whl \
  2>&1 | grep -v '^WARNING: Location' || true

cd "$tmp"  # away from the checkout, so nothing is imported from it
"$tmp/venv/bin/python" - "$tmp" <<'PY'
import sys
import eval.tasks, pipeline, pipeline.core.chat, synth, merge
for module in (pipeline, eval.tasks, synth, merge):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} imported from {module.__file__}, not the wheel"
assert pipeline.core.chat.TEMPLATE_PATH.is_file(), "the chat template is missing from the wheel"
from eval.tasks.ifeval import SHIPPED
assert SHIPPED.is_file(), "eval/data is missing from the wheel"
PY
"$tmp/venv/bin/smolalign" validate "$repo"/recipes/smollm3/*.yaml "$repo"/recipes/demo/*.yaml
# plan reads the published config from the wheel and, without recipes/accelerate/ beside it, names the launcher
"$tmp/venv/bin/smolalign" plan "$repo"/recipes/smollm3/sft.yaml --out "$tmp/plan.json" > "$tmp/plan.txt"
grep -q "packing_strategy" "$tmp/plan.txt"
echo "wheel: installed $(basename "$tmp"/dist/*.whl), validated every shipped recipe and planned the SFT one with it"
