"""Write RS-KD labels for three sequences, read them back, validate the file. Runs as is (CPU, nothing downloaded).

    python examples/quickstart.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch

import sparselabels as sl

path = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "labels.slbl"
vocab, rounds = 32_000, 50
with sl.LabelWriter(path, vocab_size=vocab, rounds=rounds, value_kind="count", metadata={"teacher": "random"},
                    overwrite=True) as w:  # a rerun replaces the file
    for i, length in enumerate((5, 3, 8)):  # stand-in teacher logits for sequences of 5, 3 and 8 positions
        logits = 8 * torch.randn(length, vocab, generator=torch.Generator().manual_seed(i))
        labels = sl.sample_counts(logits, rounds, seed=i)  # N=50 draws per position -> distinct ids + counts
        w.write(*labels.numpy())  # ids, counts, indptr of one sequence

with sl.open_labels(path) as f:
    print(f"{path}: {len(f)} sequences, {f.num_positions} positions, {f.num_labels / f.num_positions:.1f} labels "
          f"per position, N={f.rounds}, vocabulary {f.vocab_size:,}")
    ids, counts = f[0].position(0)
    print("sequence 0, position 0 (id: count):", dict(zip(ids.tolist(), counts.tolist(), strict=True)))

report = sl.validate(path)
print("valid" if report.ok else f"INVALID: {[str(p) for p in report.problems]}")
sys.exit(0 if report.ok else 1)
