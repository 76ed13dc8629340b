#!/usr/bin/env bash
# Time CI's test tiers from a fresh clone, installs excluded (README's "Two commands" numbers come from here):
#
#   bash scripts/time_tiers.sh [REPO] [REF] [TARGETS...]     default: this checkout, HEAD, test test-e2e test-vllm
#
# Clones REPO at REF into a temporary directory, installs first (make setup; the vLLM venv when test-vllm is
# timed), then runs each target once and prints its wall time, its CPU time and the load average around it.
# Each target's log stays in the printed directory. Run it on idle cores: the goals are for 2 idle cores.
set -uo pipefail
repo="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
ref="${2:-HEAD}"
shift $(( $# < 2 ? $# : 2 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(test test-e2e test-vllm)

work="$(mktemp -d /tmp/smolalign-tiers.XXXXXX)"
git clone -q "$repo" "$work/clone" && git -C "$work/clone" checkout -q "$ref" || exit 2
cd "$work/clone"
echo "timing ${targets[*]} of $(git log --oneline -1 | cut -c1-60) on $(nproc) cores; logs in $work"
make setup > "$work/setup.log" 2>&1 || { echo "make setup failed: $work/setup.log"; exit 1; }
if [[ " ${targets[*]} " == *" test-vllm "* ]]; then
    bash scripts/setup_vllm_venv.sh .venv-vllm > "$work/setup-vllm.log" 2>&1 || { echo "vLLM venv failed"; exit 1; }
fi

failed=0
for target in "${targets[@]}"; do
    load_before="$(cut -d' ' -f1 /proc/loadavg)"
    /usr/bin/time -f "%e %U %S" -o "$work/$target.time" make "$target" > "$work/$target.log" 2>&1
    rc=$?
    read -r wall user sys < "$work/$target.time"
    summary="$(grep -E '^[0-9]+ (passed|failed)|[0-9]+ (passed|failed)' "$work/$target.log" | tail -n1)"
    printf 'make %-10s exit %d  %4.0f s wall (%d min %02d s), %5.0f s CPU, load %s -> %s  %s\n' "$target" "$rc" \
        "$wall" "$(( ${wall%.*} / 60 ))" "$(( ${wall%.*} % 60 ))" "$(awk "BEGIN {print $user + $sys}")" "$load_before" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$summary"
    [ "$rc" -eq 0 ] || failed=1
done
echo "the clone, its venvs and the logs stay in $work (rm -rf it when done)"
exit $failed
