#!/usr/bin/env bash
# Every GPU check in one go, for a lent H100/H200 (a machine without CUDA skips the tests and fails the benchmarks).
#
#   bash tools/gpu_check.sh                      # sampler, loss, generate: CUDA tests, then each benchmark
#   bash tools/gpu_check.sh sampler loss         # only those parts
#
# Per part, its CUDA tests at full size, then its benchmark at full size:
#   sampler   tests/test_sampling_cuda.py          tools/bench_sampler.py  (R = 8,192, V in {32,000, 128,256,
#             262,144}, bf16 and fp32, then a kernel-configuration sweep cut short by --time-budget)
#   loss      tests/test_loss_cuda.py              tools/bench_loss.py     (T = 16,384, H = 2,048, V = 128,256)
#   generate  tests/test_pipeline_generate_cuda.py tools/bench_generate.py (~1.2B Llama-style teacher)
# Each step has its own time limit, so one that hangs cannot starve the rest; all of it fits in ~9 minutes, and
# takes ~5 when nothing hangs. Results go to $OUT when it is set (the device tool brings that folder back, at most
# 8 files), else to tools/results/: gpu_check.log (everything printed), bench_sampler.json, bench_loss.json,
# bench_generate.json and gpu_check.json (GPU, software versions, each step's exit code and seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-tools/results}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
SUMMARY="$DEST/gpu_check_steps.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=$(command -v python3 || command -v python)
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(sampler loss generate)
: >"$LOG"
: >"$SUMMARY"

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
versions=$("$PY" -c 'import torch, triton, numba, transformers as t; print("torch", torch.__version__, "triton",
triton.__version__, "numba", numba.__version__, "transformers", t.__version__)' 2>&1 | tail -1)
echo "GPU: ${gpu:-none}; $versions" | tee -a "$LOG"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log everything, record exit code and seconds
    local name=$1 limit=$2
    shift 2
    echo -e "\n===== $name (limit ${limit} s) =====" | tee -a "$LOG"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo -e "$name\t$rc\t$(( $(date +%s) - t0 ))" >>"$SUMMARY"
    echo "===== $name: exit $rc in $(( $(date +%s) - t0 )) s =====" | tee -a "$LOG"
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
        *)
            echo "unknown part '$part' (sampler, loss, generate)" | tee -a "$LOG"
            exit 2 ;;
    esac
done

"$PY" - "$SUMMARY" "$DEST/gpu_check.json" "${gpu:-none}" "$versions" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
summary, path, gpu, versions = sys.argv[1:]
steps = {}
for line in open(summary):
    name, rc, seconds = line.rstrip("\n").split("\t")
    steps[name] = {"exit_code": int(rc), "seconds": int(seconds)}
json.dump({"gpu": gpu, "software": versions, "steps": steps,
           "passed": all(s["exit_code"] == 0 for s in steps.values())}, open(path, "w"), indent=2)
failed = [name for name, s in steps.items() if s["exit_code"] != 0]
print(f"gpu_check: {len(steps) - len(failed)} of {len(steps)} steps passed" + (f"; failed: {failed}" if failed else ""))
sys.exit(1 if failed else 0)
PY
rc=${PIPESTATUS[0]}
rm -f "$SUMMARY"
exit $rc
