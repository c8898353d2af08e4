"""The command line: info, validate, stats, merge, run in-process through main() and once as a console script."""

from __future__ import annotations

import json
import subprocess
import sys

from labelgen import random_sequences

import sparselabels as sl
from sparselabels.cli.main import main


def make(path, n=5, **kwargs):
    with sl.LabelWriter(path, vocab_size=300, rounds=50, metadata={"teacher": "t"}, **kwargs) as w:
        for s in random_sequences(1, n, vocab_size=300):
            w.write(*s)
    return path


def test_info_text_and_json(tmp_path, capsys):
    path = make(tmp_path / "a.slbl")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bytes_per_position" in out and "teacher" in out
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sequences"] == 5 and info["codec"] == "rans" and info["metadata"]["rounds"] == 50  # the default
    assert info["bytes"] == path.stat().st_size
    assert abs(info["bytes_per_position"] - info["bytes"] / info["positions"]) < 1e-9


def test_validate_exit_codes(tmp_path, capsys):
    path = make(tmp_path / "a.slbl")
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    data = bytearray(path.read_bytes())
    data[300] ^= 1
    bad = tmp_path / "bad.slbl"
    bad.write_bytes(bytes(data))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and "bad.slbl" in err
    assert main(["validate", str(tmp_path / "missing.slbl")]) == 1


def test_stats(tmp_path, capsys):
    path = make(tmp_path / "a.slbl", n=8)
    assert main(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    with sl.open_labels(path) as f:
        assert stats["positions"] == f.num_positions
        lpp = sum(int(k) * v for k, v in stats["labels_per_position"]["histogram"].items())
        assert lpp == f.num_labels
        assert sum(int(k) * v for k, v in stats["count_histogram"].items()) == 50 * (
            f.num_positions - stats["labels_per_position"]["empty_positions"])
    assert main(["stats", str(path)]) == 0
    assert "labels/position" in capsys.readouterr().out


def test_merge_command_and_errors(tmp_path, capsys):
    a = make(tmp_path / "a.slbl")
    b = make(tmp_path / "b.slbl")
    assert main(["merge", str(tmp_path / "m.json"), str(a), str(b)]) == 0
    assert main(["merge", "--copy", str(tmp_path / "m.slbl"), str(tmp_path / "m.json")]) == 0
    with sl.open_labels(tmp_path / "m.slbl") as f:
        assert len(f) == 10
    assert main(["merge", "--copy", str(tmp_path / "m.slbl"), str(a)]) == 2
    err = capsys.readouterr().err
    assert "m.slbl exists; pass --overwrite to replace it" in err  # the flag, not the keyword argument
    assert main(["merge", "--copy", "--overwrite", str(tmp_path / "m.slbl"), str(a)]) == 0


def test_errors_name_the_commands_own_flags(tmp_path, capsys):
    """A leftover .partial: each command names the switches it has as flags and leaves the others as keywords
    (convert has --resume and --overwrite, merge only --overwrite)."""
    import numpy as np

    logits = tmp_path / "logits.npy"
    np.save(logits, np.random.default_rng(0).standard_normal((2, 3, 40)).astype(np.float32))
    out = tmp_path / "c.slbl"
    (tmp_path / "c.slbl.partial").write_bytes(b"an interrupted file")
    assert main(["convert", str(logits), "--out", str(out)]) == 2
    assert "pass --resume to continue it or --overwrite to start again" in capsys.readouterr().err
    assert main(["convert", str(logits), "--out", str(out), "--overwrite"]) == 0
    assert sl.validate(out).ok
    merged = tmp_path / "m.slbl"
    (tmp_path / "m.slbl.partial").write_bytes(b"an interrupted file")
    assert main(["merge", str(merged), str(out), "--copy"]) == 2
    assert "pass resume=True to continue it or --overwrite to start again" in capsys.readouterr().err
    assert main(["merge", str(merged), str(out), "--copy", "--overwrite"]) == 0
    assert sl.validate(merged).ok


def test_console_script_runs(tmp_path):
    path = make(tmp_path / "a.slbl")
    result = subprocess.run([sys.executable, "-m", "sparselabels.cli.main", "validate", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
