"""``sparselabels merge OUT IN...``: a manifest over shards, or (``--copy``) one physical file."""

from __future__ import annotations

import argparse

from sparselabels.io.merge import merge


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help="merge shards into a manifest (default) or one file (--copy)",
                       description="Merge label files, manifests or shard directories into a manifest (default) or "
                                   "one file (--copy). The inputs must be readable as one dataset (same vocabulary, "
                                   "rounds, teacher, tokenizer, temperature), and inputs that drew the same random "
                                   "numbers (the same tokens labeled twice with one seed, or one file given twice; "
                                   "see the random_stream metadata) are refused.")
    p.add_argument("out", help="manifest path (.json) or, with --copy, the output label file (or a URL)")
    p.add_argument("inputs", nargs="+", help="label files, manifests or shard directories, in order")
    p.add_argument("--copy", action="store_true", help="write one file with every chunk copied into it")
    p.add_argument("--codec", help="with --copy: codec of the output (default: the inputs' codec)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def run(args: argparse.Namespace) -> int:
    out = merge(args.out, args.inputs, copy=args.copy, codec=args.codec, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
