"""Smoke run of tools/bench_loader.py --quick: it runs, checks itself against the baseline and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_loader.py"


def test_bench_loader_quick(tmp_path):
    out = tmp_path / "bench_loader.json"
    proc = subprocess.run([sys.executable, str(TOOL), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "positions/s" in proc.stdout and "HF datasets" in proc.stdout
    body = json.loads(out.read_text())
    assert body["machine"]["cpu"] and body["quick"] is True
    raw = body["codecs"]["raw"]["layouts"]
    for layout in ("padded", "csr"):
        r = raw[layout]
        assert r["single_process"]["positions_per_s"] > 0 and r["workers"]["positions_per_s"] > 0
        assert r["ratio_single_vs_baseline"] == r["single_process"]["positions_per_s"] / body["baseline"][
            "positions_per_s"]
        assert r["ratio_single_vs_careful"] == (r["single_process"]["positions_per_s"]
                                                / body["careful_baseline"]["positions_per_s"])
    assert body["codecs"]["raw"]["csr_bytes_vs_padded"] == raw["csr"]["batch_bytes"] / raw["padded"]["batch_bytes"]
    assert set(body["baseline"]["variants"]) == {"python lists", "numpy format", "careful flat arrays"}
    goals = body["goals"]
    assert all(set(g) == {"value", "target", "met"} and g["met"] == (g["value"] >= g["target"]) for g in goals.values())
    assert any(name.startswith("csr raw, 1 process >= 20M") for name in goals)
    assert any(name.startswith("csr raw, 2 workers >= 1.5x") for name in goals)


def test_bench_io_quick_measures_the_raw_codec(tmp_path):
    """bench_io's rows are named "sparselabels raw": the file it times must be written in the raw codec (not the
    library's default), and its size must be the raw layout's (~5 bytes per label)."""
    out = tmp_path / "bench_io.json"
    tool = TOOL.parent / "bench_io.py"
    proc = subprocess.run([sys.executable, str(tool), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(out.read_text())
    library = body["raw_seconds"]["sparselabels"]
    assert library["codec"] == "raw"
    assert library["bytes"] > 5 * body["labels"]
