"""``sparselabels generate --model MODEL --tokens DATA --out DIR``: run a teacher and write RS-KD labels.

Run under ``torchrun --nproc_per_node G`` to label on G GPUs (one shard per rank, manifest by rank 0).
"""

from __future__ import annotations

import argparse

from sparselabels.cli.main import positive_int
from sparselabels.codecs import DEFAULT_CODEC, available
from sparselabels.format.checks import MAX_ROUNDS

_DESCRIPTION = """Run a Hugging Face causal LM over token sequences and write RS-KD labels (N draws per position,
kept as distinct ids with counts) to OUT: one shard per rank and manifest.json.

Alignment: position t holds the teacher's distribution of the token AFTER input token t, i.e. the
target of the student's logits at t as they come out of the model. Do not shift the labels.

Options, tokens, their ids against the model's vocabulary and their lengths against its context
(config.json) are checked before the weights load. A sequence longer than the teacher's context is
an error unless --max-length L is given: longer sequences are then labeled in windows of L tokens
overlapping by --window-overlap (default L/2), each position from the window that gives it the
most left context.

The random stream is derived from --seed and the token data's fingerprint: parts of a corpus
labeled separately with one seed draw different numbers, and `merge` refuses inputs that reuse
draws. Under `torchrun --nproc_per_node G` each rank labels a contiguous slice on its own GPU.
After a kill or Ctrl-C, rerun with --resume: the result is byte-identical to an uninterrupted run
with the same settings."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="label token sequences with a Hugging Face teacher (resumable, torchrun)",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face causal LM: a local directory, or a hub id (org/name) already in the local "
                        "Hugging Face cache (HF_HUB_CACHE / HF_HOME; never downloaded)")
    p.add_argument("--tokens", required=True,
                   help="token sequences: .npy (2-D, or 1-D with --seq-len), Megatron .bin/.idx prefix, or a saved "
                        "datasets directory")
    p.add_argument("--out", required=True,
                   help="output directory (shards and manifest.json), or a URL (s3://...; see docs/remote.md)")
    p.add_argument("--column", default="input_ids", help="token column of a datasets source (default input_ids)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="read a 1-D token stream as sequences of this many tokens (the last may be shorter)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="label sequences longer than this in windows of this many tokens (at most the model's "
                        "context; default: sequences must fit the context)")
    p.add_argument("--window-overlap", type=int, default=None,
                   help="tokens shared by consecutive windows, 0..max-length-1 (default max-length/2)")
    p.add_argument("--mask-column", default=None,
                   help="per-token column of a datasets source (0/1, or labels with -100): label only the positions "
                        "it keeps, store the others empty (the teacher still reads every token)")
    p.add_argument("--rounds", type=int, default=50, help=f"draws per position, 1..{MAX_ROUNDS} (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward (default 8)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="teacher dtype (default bfloat16)")
    p.add_argument("--device", default=None,
                   help="cuda (the local rank's GPU under torchrun), cuda:N or cpu (default: cuda if available)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=available(), help=f"label codec (default {DEFAULT_CODEC})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over this run's existing output in --out (same number of ranks)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="label vocabulary (default: the tokenizer's length when smaller than the model's output)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--teacher-name", default=None, help="teacher name stored in the metadata (default: directory "
                   "name or hub id)")
    p.add_argument("--flush-every", type=int, default=1, help="make labels durable every N batches (default 1)")
    p.add_argument("--chunk-bytes", type=int, default=16 << 20,
                   help="label bytes buffered per file chunk (default 16 MiB)")
    p.add_argument("--no-progress", action="store_true", help="print no progress")
    p.add_argument("--log-interval", type=float, default=60.0,
                   help="seconds between progress lines when stderr is not a terminal (default 60)")
    return p


def run(args: argparse.Namespace) -> int:
    from sparselabels.pipeline.distributed import env_world
    from sparselabels.pipeline.generate import generate

    out = generate(args.model, args.tokens, args.out, rounds=args.rounds, temperature=args.temperature,
                   batch_size=args.batch_size, dtype=args.dtype, device=args.device, codec=args.codec,
                   seed=args.seed, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                   vocab_size=args.vocab_size, tokenizer=args.tokenizer, column=args.column,
                   seq_len=args.seq_len, max_length=args.max_length, window_overlap=args.window_overlap,
                   teacher_name=args.teacher_name, flush_every=args.flush_every,
                   chunk_bytes=args.chunk_bytes, log_interval=args.log_interval, mask_column=args.mask_column)
    if env_world()[0] == 0:  # one "wrote" line per run, not one per rank
        print(f"wrote {out}")
    return 0
