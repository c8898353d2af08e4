"""``sparselabels convert INPUT --out FILE``: dense teacher outputs (.npy, HDF5, safetensors) → a label file.

Rows become sequences as follows: a 3-D [N, T, V] input gives one sequence per first-axis entry (the first
lengths[i] positions with --lengths); a 2-D [R, V] input gives one sequence, or sequences of --seq-len rows,
or of --lengths rows. Inputs are streamed in chunks of rows, so they may be larger than memory.
"""

from __future__ import annotations

import argparse

import numpy as np

from sparselabels.codecs import DEFAULT_CODEC, available
from sparselabels.errors import InputError
from sparselabels.format.checks import MAX_ROUNDS

_DESCRIPTION = """Convert dense teacher outputs (logits or log-probs) in .npy, HDF5 or safetensors into a label file,
streaming rows in chunks so inputs may be larger than memory.

Sequences: a 3-D [N, T, V] input has one sequence per first-axis entry (its first lengths[i] positions with
--lengths); a 2-D [R, V] input is one sequence, or sequences of --seq-len rows, or of --lengths rows."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="dense logits or log-probs (.npy, .h5, .safetensors) to a label file",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="dense teacher outputs: .npy, .h5/.hdf5 or .safetensors")
    p.add_argument("--out", required=True, help="output label file")
    p.add_argument("--kind", default="logits", choices=("logits", "logprobs"),
                   help="what the input holds (default logits)")
    p.add_argument("--key", default=None, help="HDF5 dataset or safetensors tensor name (default: the only one)")
    p.add_argument("--seq-len", type=int, default=None, help="2-D input: positions per sequence")
    p.add_argument("--lengths", default=None, help=".npy of per-sequence lengths (int), or comma-separated lengths")
    p.add_argument("--rounds", type=int, default=50, help=f"draws per position, 1..{MAX_ROUNDS} (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--topk", type=int, default=None, help="write Top-K probability labels instead (baselines)")
    p.add_argument("--vocab-size", type=int, default=None, help="ignore columns at or beyond this (padded outputs)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=available(), help=f"label codec (default {DEFAULT_CODEC})")
    p.add_argument("--device", default="cpu", help="where to sample (cpu, cuda, cuda:N; default cpu)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows read at a time (default: ~256 MiB of fp32)")
    p.add_argument("--tokens", default=None, help="input token sequences, to store their fingerprints")
    p.add_argument("--column", default="input_ids", help="token column of a datasets source")
    p.add_argument("--teacher", default=None, help="teacher name to record")
    p.add_argument("--teacher-fingerprint", default=None, help="teacher fingerprint to record")
    p.add_argument("--tokenizer-fingerprint", default=None, help="tokenizer fingerprint to record")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--resume", action="store_true",
                   help="continue after a crash or kill: keep what --out's partial file holds, label the rest "
                        "(the result is the file an uninterrupted run writes)")
    p.add_argument("--no-progress", action="store_true", help="print no progress")
    return p


def parse_lengths(value: str | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.endswith(".npy"):
        try:
            return np.load(value, allow_pickle=False)
        except (ValueError, EOFError) as exc:  # not a .npy file (a missing one raises FileNotFoundError)
            raise InputError(f"--lengths {value!r}: not a readable .npy file ({exc})") from None
    try:
        return np.array([int(v) for v in value.split(",") if v.strip()], dtype=np.int64)
    except ValueError:
        raise InputError(f"--lengths {value!r}: expected a .npy file or comma-separated integers") from None


def run(args: argparse.Namespace) -> int:
    from sparselabels.pipeline.convert import convert

    out = convert(args.input, args.out, kind=args.kind, key=args.key, seq_len=args.seq_len,
                  lengths=parse_lengths(args.lengths), rounds=args.rounds, temperature=args.temperature,
                  seed=args.seed, topk=args.topk, vocab_size=args.vocab_size, codec=args.codec, device=args.device,
                  chunk_rows=args.chunk_rows, tokens=args.tokens, column=args.column, teacher=args.teacher,
                  teacher_fingerprint=args.teacher_fingerprint, tokenizer_fingerprint=args.tokenizer_fingerprint,
                  overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0
