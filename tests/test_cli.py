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
    assert main(["validate", str(tmp_path / "missing.slbl")]) == 2  # not found: a usage error, as elsewhere


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
    """A leftover .partial: convert names the switches it has as flags (--resume, --overwrite); merge, which cannot
    resume, takes over the stale partial file a killed merge left (no live process holds its lock)."""
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
    assert main(["merge", str(merged), str(out), "--copy"]) == 0
    assert sl.validate(merged).ok and not (tmp_path / "m.slbl.partial").exists()


def test_console_script_runs(tmp_path):
    path = make(tmp_path / "a.slbl")
    result = subprocess.run([sys.executable, "-m", "sparselabels.cli.main", "validate", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_merge_refuses_what_it_cannot_do_and_cleans_up(tmp_path, capsys):
    a = make(tmp_path / "a.slbl")
    assert main(["merge", str(tmp_path / "ab.slbl"), str(a)]) == 2  # a manifest under a label file's name
    assert "name it *.json, or pass --copy" in capsys.readouterr().err and not (tmp_path / "ab.slbl").exists()
    assert main(["merge", "--codec", "raw", str(tmp_path / "m.json"), str(a)]) == 2
    assert "--copy" in capsys.readouterr().err
    bad = tmp_path / "bad.slbl"
    data = bytearray(a.read_bytes())
    data[400] ^= 1  # inside the first chunk's records: copying it fails its checksum
    bad.write_bytes(bytes(data))
    assert main(["merge", "--copy", str(tmp_path / "out.slbl"), str(bad)]) == 2
    assert "CRC" in capsys.readouterr().err
    assert not (tmp_path / "out.slbl").exists() and not (tmp_path / "out.slbl.partial").exists()
    assert main(["merge", "--copy", str(tmp_path / "out.slbl"), str(a)]) == 0  # nothing left to block a rerun


def test_manifests_refuse_mixed_fingerprints_and_are_world_readable(tmp_path):
    import os
    import stat

    import pytest

    with_fp = tmp_path / "f.slbl"
    with sl.LabelWriter(with_fp, vocab_size=300, rounds=50, metadata={"teacher": "t"}) as w:
        for i, s in enumerate(random_sequences(2, 3, vocab_size=300)):
            w.write(*s, fingerprint=i)
    plain = make(tmp_path / "p.slbl")
    with pytest.raises(sl.CompatibilityError, match="fingerprints"):
        sl.merge(tmp_path / "m.json", [with_fp, plain])
    old = os.umask(0o022)
    try:
        manifest = sl.merge(tmp_path / "m.json", [plain, make(tmp_path / "q.slbl")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o644  # as label files are: other users can read a dataset


def test_bad_convert_inputs_are_errors_not_tracebacks(tmp_path, capsys):
    """Each of these used to end in a traceback (h5py OSError, SafetensorError, ValueError, RuntimeError,
    AssertionError), some after leaving an empty .partial that blocked the next run."""
    import numpy as np
    import torch

    logits = tmp_path / "l.npy"
    np.save(logits, np.random.default_rng(0).standard_normal((2, 3, 40)).astype(np.float32))
    (tmp_path / "x.h5").write_bytes(b"not an HDF5 file")
    (tmp_path / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    (tmp_path / "x.npy").write_bytes(b"not a npy file")
    out = tmp_path / "o.slbl"
    cases = [
        (["convert", str(tmp_path / "x.h5"), "--out", str(out)], "cannot be opened as HDF5"),
        (["convert", str(tmp_path / "x.safetensors"), "--out", str(out)], "cannot be opened as safetensors"),
        (["convert", str(logits), "--out", str(out), "--lengths", str(tmp_path / "x.npy")], "not a readable .npy"),
        (["convert", str(logits), "--out", str(out), "--device", "bogus"], "device 'bogus'"),
        (["convert", str(logits), "--out", str(out), "--topk", "1000"], "more than the vocabulary"),
        (["convert", str(logits), "--out", str(logits), "--overwrite"], "is the input file"),
    ]
    if not torch.cuda.is_available():
        cases.append((["convert", str(logits), "--out", str(out), "--device", "cuda"], "CUDA is not available"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert not out.exists() and not (tmp_path / "o.slbl.partial").exists(), argv
    assert np.load(logits).shape == (2, 3, 40)  # the input was not replaced


def test_a_url_without_the_remote_extra_is_an_error_not_a_traceback(monkeypatch, capsys):
    """Without fsspec (or the store's own package, gcsfs for gs://) a URL names the extra to install, from the
    library as a MissingExtraError and from the command line as an error with exit 2."""
    from sparselabels import MissingExtraError

    monkeypatch.setitem(sys.modules, "fsspec", None)  # what an install without the extra has
    for argv in (["info", "s3://bucket/labels/"], ["validate", "s3://bucket/a.slbl"]):
        assert main(argv) == 2
        assert "sparselabels[remote]" in capsys.readouterr().err
    try:
        sl.open_labels("s3://bucket/labels/")
    except MissingExtraError as exc:
        assert "sparselabels[remote]" in str(exc)
    else:
        raise AssertionError("no error raised")


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`sparselabels stats FILE | head -0`: the reader is gone before the output is written."""
    import os

    path = make(tmp_path / "a.slbl", n=40)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "sparselabels.cli.main", "stats", str(path)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)
