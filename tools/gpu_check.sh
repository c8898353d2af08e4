#!/usr/bin/env bash
# Every GPU check in one go, for a lent H100/H200. Refuses to run without CUDA (the benchmarks would otherwise run
# their CPU paths and overwrite the committed GPU results).
#
#   bash tools/gpu_check.sh                      # sampler, loss, generate: CUDA tests, then each benchmark
#   bash tools/gpu_check.sh sampler loss         # only those parts
#
# Per part, its CUDA tests at full size, then its benchmark at full size:
#   sampler   tests/test_sampling_cuda.py          tools/bench_sampler.py  (R = 8,192, V in {32,000, 128,256,
#             262,144}, bf16 and fp32, then a kernel-configuration sweep cut short by --time-budget)
#   loss      tests/test_loss_cuda.py              tools/bench_loss.py     (T = 16,384, H = 2,048, V = 128,256)
#   generate  tests/test_pipeline_generate_cuda.py tools/bench_generate.py (~1.2B Llama-style teacher)
# Each step has its own time limit, cut to what is left of a whole-run budget (GPU_CHECK_BUDGET_S, default 540 s,
# under the device tool's 600 s per command), so one step that hangs cannot starve the rest; the full run took
# ~4 minutes on an H200. Results go to $OUT when it is set (the device tool brings that folder back, at most 8
# files), else to tools/results/: gpu_check.log (everything printed), bench_sampler.json, bench_loss.json,
# bench_generate.json and gpu_check.json (GPU, software versions, each step's exit code and seconds; rewritten
# after every step, so a run cut short still says how far it got).
set -uo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(sampler loss generate)
for part in "${parts[@]}"; do
    case $part in
        sampler | loss | generate) ;;
        *) echo "gpu_check: unknown part '$part' (sampler, loss, generate)" >&2; exit 2 ;;
    esac
done
PY=$(command -v python3 || command -v python)
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch; nothing run" >&2
    exit 2
fi
DEST="${OUT:-tools/results}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
STEPS=$(mktemp)
trap 'rm -f "$STEPS"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
deadline=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-540} ))
: >"$LOG"

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
versions=$(for module in torch triton numba transformers; do
    "$PY" -c "import $module; print('$module', $module.__version__)" 2>/dev/null || echo "$module missing"
done | paste -sd' ')
echo "GPU: ${gpu:-none}; $versions" | tee -a "$LOG"

summary() {  # gpu_check.json from the steps so far; exit code 1 when any step failed
    "$PY" - "$STEPS" "$DEST/gpu_check.json" "${gpu:-none}" "$versions" <<'PY'
import json, sys
steps_file, path, gpu, versions = sys.argv[1:]
steps = {}
for line in open(steps_file):
    name, rc, seconds = line.rstrip("\n").split("\t")
    steps[name] = {"exit_code": int(rc), "seconds": int(seconds)}
failed = [name for name, s in steps.items() if s["exit_code"] != 0]
json.dump({"gpu": gpu, "software": versions, "steps": steps, "passed": not failed}, open(path, "w"), indent=2)
print(f"gpu_check: {len(steps) - len(failed)} of {len(steps)} steps passed" + (f"; failed: {failed}" if failed else ""))
sys.exit(1 if failed else 0)
PY
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log everything, record exit code and seconds
    local name=$1 limit=$2
    shift 2
    local left=$(( deadline - $(date +%s) - 15 ))  # 15 s for --kill-after and the summary
    (( left < limit )) && limit=$left
    if (( limit < 10 )); then
        echo "===== $name: skipped, the run's time budget is spent =====" | tee -a "$LOG"
        echo -e "$name\t124\t0" >>"$STEPS"
        return
    fi
    echo -e "\n===== $name (limit ${limit} s) =====" | tee -a "$LOG"
    local t0 rc seconds
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    seconds=$(( $(date +%s) - t0 ))
    echo -e "$name\t$rc\t$seconds" >>"$STEPS"
    echo "===== $name: exit $rc in $seconds s =====" | tee -a "$LOG"
    summary >/dev/null
}

pytest_cmd=("$PY" -m pytest -q -p no:cacheprovider -rA -o faulthandler_timeout=60)
for part in "${parts[@]}"; do
    case $part in
        sampler)
            step test_sampling_cuda 110 "${pytest_cmd[@]}" tests/test_sampling_cuda.py
            step bench_sampler 150 "$PY" tools/bench_sampler.py --time-budget 100 --out "$DEST/bench_sampler.json" ;;
        loss)
            step test_loss_cuda 70 "${pytest_cmd[@]}" tests/test_loss_cuda.py
            step bench_loss 70 "$PY" tools/bench_loss.py --out "$DEST/bench_loss.json" ;;
        generate)
            step test_pipeline_generate_cuda 70 "${pytest_cmd[@]}" tests/test_pipeline_generate_cuda.py
            step bench_generate 120 "$PY" tools/bench_generate.py --out "$DEST/bench_generate.json" ;;
    esac
done
summary 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
