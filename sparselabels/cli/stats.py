"""``sparselabels stats FILE``: labels per position, count histogram and bytes per position."""

from __future__ import annotations

import argparse
import json

from sparselabels.cli.main import positive_int
from sparselabels.io.open import open_labels
from sparselabels.io.stats import label_stats


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="distribution of labels per position, count histogram, bytes/position")
    p.add_argument("path", help="label file, manifest (.json) or shard directory; or a URL (s3://...)")
    p.add_argument("--max-sequences", type=positive_int, help="sample this many sequences at random (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    with open_labels(args.path) as labels:
        stats = label_stats(labels, max_sequences=args.max_sequences)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    lpp = stats["labels_per_position"]
    print(f"sequences {stats['sequences']:,} (sampled {stats['sequences_sampled']:,}), positions "
          f"{stats['positions']:,}, labels {stats['labels']:,}, bytes {stats['bytes']:,}")
    if stats["bytes_per_position"] is not None:
        print(f"bytes/position {stats['bytes_per_position']:.2f}")
    print(f"labels/position: mean {lpp['mean']:.2f}, median {lpp['median']}, p99 {lpp['p99']}, max {lpp['max']}, "
          f"empty positions {lpp['empty_positions']:,}")
    _histogram("labels per position", lpp["histogram"])
    if "count_histogram" in stats:
        _histogram("count", stats["count_histogram"])
    elif stats.get("mean_probability_mass") is not None:
        print(f"mean stored probability mass per non-empty position: {stats['mean_probability_mass']:.4f}")
    return 0


def _histogram(title: str, hist: dict[int, int]) -> None:
    total = sum(hist.values()) or 1
    print(f"\n{title:>20}  {'n':>12}  share")
    for key, value in sorted(hist.items()):
        bar = "#" * max(1, round(40 * value / total)) if value else ""
        print(f"{key:>20}  {value:>12,}  {100 * value / total:5.1f}% {bar}")
