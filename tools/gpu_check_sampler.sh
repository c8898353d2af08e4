#!/usr/bin/env bash
# GPU checks of the sampler (issue 4) in one go, for a lent H100/H200: the CUDA tests at full size, then the
# benchmark (R = 8,192, V in {32,000, 128,256, 262,144}, bf16 and fp32, plus a kernel-configuration sweep).
# Budget: <= 4 minutes; the first run compiles ~12 kernel variants (~5-10 s each), the sweep stops early if time
# runs short. Results go to $OUT when it is set (the device tool brings that folder back), else tools/results/.
# Writes three files: gpu_check_sampler.log (tests and benchmark output), bench_sampler.json,
# gpu_check_sampler.json (exit codes, GPU, seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-tools/results}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check_sampler.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
start=$(date +%s)
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none}; $($PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')" | tee "$LOG"

timeout 140 "$PY" -m pytest -q -p no:cacheprovider -rA -s tests/test_sampling_cuda.py 2>&1 | tee -a "$LOG"
tests_rc=${PIPESTATUS[0]}

timeout 110 "$PY" tools/bench_sampler.py --time-budget 70 --out "$DEST/bench_sampler.json" 2>&1 | tee -a "$LOG"
bench_rc=${PIPESTATUS[0]}

"$PY" - "$DEST/gpu_check_sampler.json" "$tests_rc" "$bench_rc" "$(( $(date +%s) - start ))" "${gpu:-none}" <<'PY'
import json, sys
path, tests_rc, bench_rc, seconds, gpu = sys.argv[1:]
json.dump({"gpu": gpu, "test_sampling_cuda_rc": int(tests_rc), "bench_sampler_rc": int(bench_rc),
           "seconds": int(seconds)}, open(path, "w"), indent=2)
PY
echo "tests rc=$tests_rc bench rc=$bench_rc in $(( $(date +%s) - start )) s" | tee -a "$LOG"
exit $(( tests_rc != 0 || bench_rc != 0 ))
