"""``sparselabels demo``: the whole idea in minutes on a CPU — teacher → label files → four students — and a table.

A thin skin over :func:`sparselabels.demo.run.run_demo`.
"""

from __future__ import annotations

import argparse
import json
import os

from sparselabels._extras import require
from sparselabels.cli.main import positive_int

_DESCRIPTION = """Build a corpus from the Python standard library's sources, train a small teacher on it, label a
training split with RS-KD (N=50 draws, counts) and with Top-K 12 (probabilities), validate both label files, train
four identical students (cross-entropy only, Top-K 12, RS-KD, full online KD) for the same steps, and print
held-out LM loss, calibration (ECE), label bytes per position and labeling speed. Nothing is downloaded.

Writes label files, loss_curves.png, reliability.png and results.json into --out; the corpus, tokenizer and
teacher are cached (--cache-dir), so a second run is faster. Measured on 2 CPU cores: 6-10 minutes the first
time (depending on what else runs), 3-4 with the teacher cached. --quick runs tiny models in well under a
minute (a smoke test, its numbers mean nothing)."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="teacher -> labels -> students on a CPU in minutes, nothing downloaded",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sparselabels-demo", help="output directory (default ./sparselabels-demo)")
    p.add_argument("--cache-dir", default=None, help="cache of corpus, tokenizer and teacher (default OUT/cache)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds, not a result")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and sampling (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    return p


def run(args: argparse.Namespace) -> int:
    # OpenMP threads that spin while waiting for each other make training several times slower (measured 6x with
    # 2 threads) whenever anything else shares the cores; passive waiting costs little on an idle machine. Read
    # once, when torch loads: an explicit OMP_WAIT_POLICY is kept, and it has no effect if torch is loaded already.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    require("sparselabels demo", "torch", "transformers", "tokenizers", "matplotlib", extras="hf,demo")
    import torch
    from transformers.utils import logging as hf_logging

    from sparselabels.demo.run import run_demo

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # config notes and weight-loading bars would bury the demo's own lines
    hf_logging.disable_progress_bar()
    result = run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed, cache_dir=args.cache_dir,
                      log=None if args.json else print)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    machine = result.machine
    print()
    print(f"sparselabels demo{' --quick (smoke test: tiny models, the numbers mean nothing)' if args.quick else ''}"
          f" - {machine['date']}, {machine['cpu']}, {machine['torch_threads']} torch threads"
          f"{', ' + machine['gpu'] if 'gpu' in machine else ''}, total {result.timings['total_wall_s']:.0f} s")
    print()
    print(result.table())
    print()
    for name in ("labels_rskd", "labels_topk", "labels_rskd_compact", "labels_topk_compact", "loss_curves_png",
                 "reliability_png", "results_json", "cache_dir"):
        print(f"  {name.replace('_', ' ')}: {result.files[name]}")
    return 0
