"""Small things of the command line: validate on a missing path, Ctrl-C during generate (a clean last line and
how to resume), and demo --quick plots that say they are a smoke test."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from pipeline_fixtures import cli, random_tokens, subprocess_env, tiny_gpt2

from sparselabels.cli.main import main
from sparselabels.pipeline.progress import Progress


def test_validate_on_a_missing_path_says_not_found(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nothing.slbl")]) == 2
    err = capsys.readouterr().err
    assert f"sparselabels validate: error: {tmp_path / 'nothing.slbl'}: not found" in err
    assert "INVALID" not in err


def test_progress_left_by_an_exception_ends_its_line_cleanly():
    now = [0.0]
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(1000, stream=stream, tty=True, clock=lambda: now[0]) as p:
        now[0] = 1.0
        p.update(300)
        stream.write("^C")  # what the terminal echoes into the line
        raise KeyboardInterrupt
    last = stream.getvalue().rsplit("^C", 1)[1]
    assert last.startswith("\r\x1b[K") and last.endswith("\n") and last.count("\n") == 1
    assert "300/1.00k tokens (30.0%)" in last and "stopped after 0:00:01" in last
    log = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(1000, stream=log, tty=False, clock=lambda: now[0]) as p:
        p.update(10)
        raise KeyboardInterrupt
    assert log.getvalue().endswith("(stopped)\n")


def test_generate_interrupted_in_process_gives_the_resume_hint(tmp_path, capsys, monkeypatch):
    import importlib

    gen = importlib.import_module("sparselabels.pipeline.generate")  # the module (the package exports the function)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "generate", interrupted)
    code = main(["generate", "--model", "m", "--tokens", "t.npy", "--out", str(tmp_path / "o")])
    assert code == 130
    assert "sparselabels generate: interrupted; what was written is kept: rerun the same command with --resume" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_during_generate_leaves_a_resumable_run(tmp_path):
    model = tiny_gpt2(tmp_path / "teacher")
    np.save(tmp_path / "t.npy", random_tokens(3000, 32, seed=1))
    argv = [*cli(), "generate", "--model", str(model), "--tokens", str(tmp_path / "t.npy"), "--out",
            str(tmp_path / "o"), "--dtype", "float32", "--device", "cpu", "--batch-size", "4", "--log-interval", "0"]
    proc = subprocess.Popen(argv, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "tokens (" in line:  # labeling has started: a progress line
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    tail = rest.splitlines()
    assert tail[-1] == ("sparselabels generate: interrupted; what was written is kept: rerun the same command with "
                        "--resume to continue where it stopped")
    assert tail[-2].endswith("(stopped)") and "Traceback" not in rest
    assert os.path.exists(tmp_path / "o" / "shard-00000-of-00001.slbl.partial")


def test_quick_demo_plots_say_they_are_a_smoke_test():
    pytest.importorskip("matplotlib")
    from sparselabels.demo.metrics import Reliability
    from sparselabels.demo.plots import SMOKE_TEST_NOTE, loss_curves_figure, reliability_figure

    counts = np.zeros(10, np.int64)
    counts[0] = 40  # a near-uniform tiny model: every prediction in the first bin, never right
    rel = Reliability(edges=np.linspace(0, 1, 11), counts=counts, confidence=np.where(counts > 0, 0.002, np.nan),
                      accuracy=np.where(counts > 0, 0.0, np.nan))
    for figure in (reliability_figure({"CE only": rel}, note=SMOKE_TEST_NOTE),
                   loss_curves_figure({"CE only": ([0, 4], [6.2, 6.2])}, note=SMOKE_TEST_NOTE)):
        texts = [t.get_text() for ax in figure.axes for t in ax.texts] + [ax.get_title() for ax in figure.axes]
        assert any("SMOKE TEST" in t for t in texts)
    plain = reliability_figure({"CE only": rel})
    assert not any("SMOKE" in t.get_text() for ax in plain.axes for t in ax.texts)
