"""``sparselabels validate FILE``: exit 0 when valid, 1 and the problems found (first first) when not, 2 when
there is no such path."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from sparselabels.cli.main import positive_int
from sparselabels.errors import InputError
from sparselabels.io.remote import is_url
from sparselabels.io.validate import validate


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="verify every checksum, structure and label rule")
    p.add_argument("path", help="label file, manifest (.json) or shard directory; or a URL (s3://...)")
    p.add_argument("--max-problems", type=positive_int, default=20, help="stop after this many problems (default 20)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    url = is_url(args.path)
    if not url and not os.path.lexists(args.path):  # nothing to validate: a usage error, not INVALID
        raise InputError(f"{args.path}: not found")
    report = validate(args.path, max_problems=args.max_problems)
    if url and not report.files and report.problems and report.problems[0].error == "FileNotFoundError":
        raise InputError(f"{args.path}: not found")
    if args.json:
        print(json.dumps({"path": report.path, "ok": report.ok, "problems": [str(p) for p in report.problems],
                          "problem_details": [dataclasses.asdict(p) for p in report.problems],
                          "files": report.files, "sequences": report.num_sequences,
                          "positions": report.num_positions, "labels": report.num_labels}, indent=2))
    elif report.ok:
        print(f"{report.path}: valid ({report.files} file(s), {report.num_sequences:,} sequences, "
              f"{report.num_positions:,} positions, {report.num_labels:,} labels)")
    else:
        print(f"{report.path}: INVALID", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
    return 0 if report.ok else 1
