"""``sparselabels demo --device cuda`` and the student example on a GPU (quick sizes)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import subprocess_env

import sparselabels as sl
from sparselabels.demo.run import STUDENTS, run_demo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_quick_on_cuda(tmp_path):
    result = run_demo(tmp_path, quick=True, device="cuda", log=None)
    assert result.settings["device"].startswith("cuda") and result.machine["gpu"]
    assert [row.name for row in result.students] == list(STUDENTS)
    for row in result.students:
        assert math.isfinite(row.heldout_loss) and 0.0 <= row.ece <= 1.0
    for key in ("labels_rskd", "labels_topk"):
        report = sl.validate(result.files[key])
        assert report.ok, report.problems
    with sl.open_labels(result.files["labels_rskd"]) as f:
        assert f.rounds == 50 and all(int(s.counts.sum()) == 50 * s.num_positions for s in f)


def test_train_student_example_on_cuda(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "train_student.py"), "--quick", "--device", "cuda",
                           "--out", str(tmp_path)], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on cuda" in done.stdout
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
