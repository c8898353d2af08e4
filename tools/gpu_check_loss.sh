#!/usr/bin/env bash
# GPU checks of the loss (issue 6) in one go, for a lent H100/H200: the CUDA tests, then the full-size benchmark.
# Budget: <= 3 minutes. Results go to $OUT when it is set (the device tool brings that folder back), else to
# tools/results/. Writes: test_loss_cuda.log, test_loss_cuda.xml, bench_loss.json, bench_loss.log,
# gpu_check_loss.json (exit codes, GPU name, seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-tools/results}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none}"

timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_loss_cuda.py \
    --junitxml="$DEST/test_loss_cuda.xml" 2>&1 | tee "$DEST/test_loss_cuda.log"
tests_rc=${PIPESTATUS[0]}

timeout 75 python tools/bench_loss.py --out "$DEST/bench_loss.json" 2>&1 | tee "$DEST/bench_loss.log"
bench_rc=${PIPESTATUS[0]}

python - "$DEST/gpu_check_loss.json" "$tests_rc" "$bench_rc" "$(( $(date +%s) - start ))" "${gpu:-none}" <<'PY'
import json, sys
path, tests_rc, bench_rc, seconds, gpu = sys.argv[1:]
json.dump({"gpu": gpu, "test_loss_cuda_rc": int(tests_rc), "bench_loss_rc": int(bench_rc),
           "seconds": int(seconds)}, open(path, "w"), indent=2)
PY
echo "tests rc=$tests_rc bench rc=$bench_rc in $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
