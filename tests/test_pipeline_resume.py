"""A real ``sparselabels generate`` process killed with SIGKILL mid-run, twice, then ``--resume``d: the final
shard and manifest are byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
from pipeline_fixtures import cli, random_tokens, subprocess_env, tiny_llama

SHARD = "shard-00000-of-00001.slbl"


def _kill_when_grown(args: list[str], partial, min_bytes: int, timeout: float = 300.0) -> None:
    """Start ``args``, SIGKILL it as soon as ``partial`` holds ``min_bytes``; the run must not have finished."""
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed:\n{err.decode()[-3000:]}")
            if partial.exists() and partial.stat().st_size >= min_bytes:
                break
            time.sleep(0.001)
        else:
            pytest.fail("the run did not reach the kill point in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_and_resume_give_the_uninterrupted_bytes(tmp_path):
    model = tiny_llama(tmp_path / "teacher")
    tokens = random_tokens(300, 24, seed=12)
    np.save(tmp_path / "tokens.npy", tokens)
    # Chunks are cut by size inside batches and flushed every other batch: the hardest case for identity.
    base = [*cli(), "generate", "--model", str(model), "--tokens", str(tmp_path / "tokens.npy"), "--dtype",
            "float32", "--device", "cpu", "--batch-size", "3", "--seed", "7", "--chunk-bytes", "5000",
            "--flush-every", "2", "--log-interval", "0.5"]

    clean = tmp_path / "clean"
    done = subprocess.run([*base, "--out", str(clean)], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens (100.0%)" in done.stderr  # progress lines when stderr is not a terminal
    final_size = (clean / SHARD).stat().st_size

    killed = tmp_path / "killed"
    partial = killed / (SHARD + ".partial")
    for fraction in (0.3, 0.7):
        _kill_when_grown([*base, "--out", str(killed), "--resume"], partial, int(final_size * fraction))
        assert not (killed / SHARD).exists() and not (killed / "manifest.json").exists()
        assert partial.stat().st_size >= int(final_size * fraction)
    resumed = subprocess.run([*base, "--out", str(killed), "--resume"], env=subprocess_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not partial.exists()
    for name in (SHARD, "manifest.json"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
