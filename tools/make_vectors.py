"""Write the golden test vectors in spec/vectors/<codec>/: small label files and the JSON of their content.

Vectors are written once per codec and format version and then never changed: readers must keep decoding
them. This script refuses to overwrite an existing vector unless --force is given (use it only while a
codec is unreleased).

    python tools/make_vectors.py                 # every codec that has no vectors yet
    python tools/make_vectors.py --codec raw --force
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

import sparselabels as sl
from sparselabels.codecs import available

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def _counts_sequence(rng: np.random.Generator, num_positions: int, vocab: int, rounds: int, max_k: int,
                     empty_every: int = 5):
    ids, counts, indptr = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [0]
    for t in range(num_positions):
        k = 0 if t % empty_every == empty_every - 1 else int(rng.integers(1, max_k + 1))
        chosen = np.sort(rng.choice(vocab, size=k, replace=False))
        c = np.ones(k, dtype=np.int64)
        if k:
            np.add.at(c, rng.integers(0, k, size=rounds - k), 1)
        ids.append(chosen)
        counts.append(c)
        indptr.append(indptr[-1] + k)
    return np.concatenate(ids).astype(np.uint32), np.concatenate(counts).astype(np.uint8), np.array(indptr)


def _prob_sequence(rng: np.random.Generator, num_positions: int, vocab: int, k_max: int):
    ids, probs, indptr = [np.zeros(0, np.int64)], [np.zeros(0, np.float16)], [0]
    for t in range(num_positions):
        k = 0 if t == 1 else int(rng.integers(1, k_max + 1))
        chosen = np.sort(rng.choice(vocab, size=k, replace=False))
        p = rng.dirichlet(np.ones(k + 1))[:k] if k else np.zeros(0)
        ids.append(chosen)
        probs.append(np.maximum(p, 1e-3).astype(np.float16))
        indptr.append(indptr[-1] + k)
    return np.concatenate(ids).astype(np.uint32), np.concatenate(probs), np.array(indptr)


def cases() -> dict[str, dict]:
    """Every vector: writer arguments and the sequences (ids, values, indptr, fingerprint)."""
    rng = np.random.default_rng(20261127)
    out: dict[str, dict] = {}
    out["empty_file"] = {"args": {"vocab_size": 32000, "rounds": 50}, "sequences": []}
    seqs = []
    for length in (7, 0, 12, 1, 9):
        ids, counts, indptr = _counts_sequence(rng, length, 1000, 50, 12)
        tokens = rng.integers(0, 1000, size=length)
        seqs.append((ids, counts, indptr, sl.input_fingerprint(tokens)))
    out["counts_fingerprints_chunks"] = {
        "args": {"vocab_size": 1000, "rounds": 50, "chunk_bytes": 256,
                 "metadata": {"teacher": "vector-teacher", "seed": 7, "temperature": 1.0, "user": {"note": "v"}}},
        "sequences": seqs,
    }
    # One position with 255 labels (rounds = 255, every count 1), the largest id, an empty position.
    full = np.sort(rng.choice(128255, size=254, replace=False)).astype(np.uint32)
    ids = np.concatenate([full, [128255], [0, 128255]]).astype(np.uint32)
    counts = np.concatenate([np.ones(255), [100, 155]]).astype(np.uint8)
    out["counts_255_labels_max_id"] = {
        "args": {"vocab_size": 128256, "rounds": 255},
        "sequences": [(ids, counts, np.array([0, 255, 255, 257]), None)],
    }
    big = [
        (np.array([0, 2**32 - 2, 2**32 - 1], dtype=np.uint32), np.array([2, 1, 1], dtype=np.uint8),
         np.array([0, 1, 3]), None),
    ]
    out["counts_vocab_2pow32"] = {"args": {"vocab_size": 2**32, "rounds": 2}, "sequences": big}
    prob = [(*_prob_sequence(rng, n, 50000, 12), None) for n in (5, 3)]
    out["prob_topk"] = {"args": {"vocab_size": 50000, "value_kind": "prob", "metadata": {"topk": 12}},
                        "sequences": prob}
    # Odd M (the probabilities need padding to 8 bytes in a rans record) and a position of 300 labels (the
    # labels-per-position escape past 255).
    wide = np.sort(rng.choice(50000, size=300, replace=False)).astype(np.uint32)
    wide_ids = np.concatenate([wide, [7]]).astype(np.uint32)
    wide_probs = np.concatenate([np.full(300, 1 / 400), [0.5]]).astype(np.float16)
    out["prob_odd_labels_wide_position"] = {"args": {"vocab_size": 50000, "value_kind": "prob"},
                                            "sequences": [(wide_ids, wide_probs, np.array([0, 300, 300, 301]), None)]}
    # A newer minor version with an optional feature bit set: a reader of this major version reads it as usual
    # (spec/FORMAT.md section 10).
    ids, counts, indptr = _counts_sequence(rng, 6, 1000, 50, 8)
    out["future_minor_optional_feature"] = {"args": {"vocab_size": 1000, "rounds": 50}, "header": {"minor": 3,
                                            "optional_features": 1 << 31}, "sequences": [(ids, counts, indptr, None)]}
    return out


def _patch_header(path: Path, *, minor: int, optional_features: int) -> None:
    """Set the header's minor version and optional feature bits, and its CRC (spec/FORMAT.md section 4)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 10, minor)
    struct.pack_into("<I", data, 40, optional_features)
    struct.pack_into("<I", data, 60, zlib.crc32(bytes(data[:60])))
    path.write_bytes(bytes(data))


def expected_json(args: dict, sequences: list) -> dict:
    kind = args.get("value_kind", "count")
    body = {"vocab_size": args["vocab_size"], "value_kind": kind, "rounds": args.get("rounds"),
            "metadata": args.get("metadata", {}), "sequences": []}
    for ids, values, indptr, fp in sequences:
        positions = []
        for t in range(len(indptr) - 1):
            lo, hi = int(indptr[t]), int(indptr[t + 1])
            vals = [float(v) if kind == "prob" else int(v) for v in values[lo:hi]]
            positions.append([[int(i), v] for i, v in zip(ids[lo:hi], vals, strict=True)])
        body["sequences"].append({"fingerprint": fp, "positions": positions})
    return body


def _dump(body: dict) -> str:
    """JSON with one line per sequence: readable, and diffs stay local."""
    head = {k: v for k, v in body.items() if k != "sequences"}
    lines = [json.dumps(head)[:-1] + ', "sequences": [']
    lines += [" " + json.dumps(s) + ("," if i < len(body["sequences"]) - 1 else "")
              for i, s in enumerate(body["sequences"])]
    return "\n".join(lines) + "\n]}\n"


def write_vectors(codec: str, *, force: bool) -> list[Path]:
    directory = VECTORS / codec
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, case in cases().items():
        path = directory / f"{name}.slbl"
        if path.exists() and not force:
            print(f"keep {path} (exists)")
            continue
        args = {"value_kind": "count", **case["args"]}
        with sl.LabelWriter(path, codec=codec, overwrite=True, **args) as w:
            for ids, values, indptr, fp in case["sequences"]:
                w.write(ids, values, indptr, fingerprint=fp)
        if "header" in case:
            _patch_header(path, **case["header"])
        (directory / f"{name}.json").write_text(_dump(expected_json(args, case["sequences"])))
        written.append(path)
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", action="append", help="codec(s) to write (default: all available)")
    parser.add_argument("--force", action="store_true", help="overwrite existing vectors")
    args = parser.parse_args(argv)
    for codec in args.codec or available():
        write_vectors(codec, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
