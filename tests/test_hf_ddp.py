"""SparseKDTrainer under a real 2-process ``torchrun`` (gloo, CPU): one step at the same global batch gives the
gradient of the single-process run, on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import subprocess_env

TESTS = Path(__file__).parent


def _env() -> dict[str, str]:
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    worker = str(TESTS / "hf_ddp_worker.py")
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    # global batch 8: 2 ranks x 2 sequences x 2 accumulation steps, against 1 process x 8 sequences
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          worker, str(multi), "2", "2"], env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    run = subprocess.run([sys.executable, worker, str(single), "8", "1"], env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    want = torch.load(single / "grad-0.pt")
    for rank in (0, 1):
        got = torch.load(multi / f"grad-{rank}.pt")
        assert any(g.abs().max() > 0 for g in got)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=2e-4, atol=1e-6)
