#!/usr/bin/env bash
# Label token sequences with a teacher on several GPUs: one process per GPU, each labels a contiguous slice of
# the sequences into its own shard; rank 0 writes manifest.json. The shards concatenated in rank order are
# byte-identical to a one-process run, and an interrupted run continues with --resume.
#
#   NPROC=8 examples/generate_torchrun.sh MODEL_DIR TOKENS OUT_DIR [more `sparselabels generate` options]
#   examples/generate_torchrun.sh --quick    # CPU smoke test: gloo, a tiny random model in a temp dir
#
# MODEL_DIR: a local Hugging Face causal LM. TOKENS: a 2-D .npy of token ids, a Megatron .bin/.idx prefix, or a
# saved `datasets` directory. Afterwards: sparselabels validate OUT_DIR
set -euo pipefail

NPROC=${NPROC:-2}
PYTHON=${PYTHON:-python}
# torchrun is `python -m torch.distributed.run`; --standalone picks a free local rendezvous port.
launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m sparselabels.cli.main)

if [[ "${1:-}" == "--quick" ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PYTHON" - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

work = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
LlamaForCausalLM(config).save_pretrained(work / "model")
np.save(work / "tokens.npy", np.random.default_rng(0).integers(0, 1000, size=(12, 32), dtype=np.int32))
EOF
    # One thread per rank: the ranks share the CPU.
    OMP_NUM_THREADS=1 "${launch[@]}" generate --model "$work/model" --tokens "$work/tokens.npy" \
        --out "$work/labels" --device cpu --dtype float32 --batch-size 2 --no-progress
    "$PYTHON" -m sparselabels.cli.main validate "$work/labels"
    ls "$work/labels"
    exit 0
fi

if [[ $# -lt 3 ]]; then
    echo "usage: NPROC=8 $0 MODEL_DIR TOKENS OUT_DIR [generate options...]   or   $0 --quick" >&2
    exit 2
fi
model=$1 tokens=$2 out=$3
shift 3
"${launch[@]}" generate --model "$model" --tokens "$tokens" --out "$out" --device cuda "$@"
"$PYTHON" -m sparselabels.cli.main validate "$out"
