#!/usr/bin/env bash
# GPU checks of the labeling pipeline (issue 7) in one go, for a lent H100/H200: the CUDA tests, then the
# full-size benchmark (~1.2B Llama-style teacher, vocab 128,256, sequences of 2,048).
# Budget: <= 4 minutes on an H100. Results go to $OUT when it is set (the device tool brings that folder back),
# else to tools/results/. Writes: test_pipeline_generate_cuda.{log,xml}, bench_generate.{json,log},
# gpu_check_generate.json (exit codes, GPU name, seconds, the benchmark's headline numbers).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-tools/results}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
start=$(date +%s)
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none}"

timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_pipeline_generate_cuda.py \
    --junitxml="$DEST/test_pipeline_generate_cuda.xml" 2>&1 | tee "$DEST/test_pipeline_generate_cuda.log"
tests_rc=${PIPESTATUS[0]}

timeout 130 python tools/bench_generate.py --out "$DEST/bench_generate.json" 2>&1 | tee "$DEST/bench_generate.log"
bench_rc=${PIPESTATUS[0]}

python - "$DEST" "$tests_rc" "$bench_rc" "$(( $(date +%s) - start ))" "${gpu:-none}" <<'PY'
import json, os, sys
dest, tests_rc, bench_rc, seconds, gpu = sys.argv[1:]
summary = {"gpu": gpu, "test_pipeline_generate_cuda_rc": int(tests_rc), "bench_generate_rc": int(bench_rc),
           "seconds": int(seconds)}
bench = os.path.join(dest, "bench_generate.json")
if os.path.exists(bench):
    b = json.load(open(bench))
    summary.update({"overhead_pct": b["overhead_pct"], "tokens_per_s": b["tokens_per_s"],
                    "labels_per_position": b["labels_per_position"], "medians_s": b["medians_s"]})
json.dump(summary, open(os.path.join(dest, "gpu_check_generate.json"), "w"), indent=2)
PY
echo "tests rc=$tests_rc bench rc=$bench_rc in $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
