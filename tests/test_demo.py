"""The demo (``sparselabels demo --quick``) end to end, its ECE against a loop, and every example in quick form."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_fixtures import subprocess_env

import sparselabels as sl
from sparselabels.cli.main import COMMANDS, main
from sparselabels.demo.metrics import evaluate, expected_calibration_error, reliability
from sparselabels.demo.run import STUDENT_KINDS, STUDENTS, run_demo
from sparselabels.errors import InputError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- ECE ----------------------------------------------------------------------------------------------------
def ece_loop(confidence, correct, bins=15):
    """The obvious twin: walk the bins, collect each bin's members, weigh |accuracy - confidence| by its share."""
    n = len(confidence)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if members:
            accuracy = sum(bool(correct[i]) for i in members) / len(members)
            mean_conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / n * abs(accuracy - mean_conf)
    return total


def test_ece_matches_the_loop_and_bins_edges_as_documented():
    rng = np.random.default_rng(3)
    confidence = rng.random(2000)
    confidence[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 14 / 15]  # the edges: 0 joins bin 0, b/15 closes bin b-1
    correct = rng.random(2000) < confidence**1.5  # over-confident on purpose
    assert expected_calibration_error(confidence, correct) == pytest.approx(ece_loop(confidence, correct), abs=1e-12)
    rel = reliability(confidence[:5], np.ones(5, bool))
    assert rel.counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert rel.total == 5 and np.isnan(rel.accuracy[5])
    for bins in (1, 7, 15):
        assert reliability(confidence, correct, bins=bins).ece == pytest.approx(ece_loop(confidence, correct, bins))


def test_ece_of_calibrated_and_overconfident_predictions():
    rng = np.random.default_rng(4)
    confidence = rng.uniform(0.05, 1.0, 200_000)
    assert expected_calibration_error(confidence, rng.random(confidence.size) < confidence) < 0.01
    # always 90% sure, right half of the time: ECE 0.4
    assert expected_calibration_error(np.full(1000, 0.9), np.arange(1000) % 2 == 0) == pytest.approx(0.4)


def test_ece_refuses_bad_input():
    with pytest.raises(InputError, match="not in"):
        reliability(np.array([0.5, 1.5]), np.array([True, False]))
    with pytest.raises(InputError, match="not in"):
        reliability(np.array([np.nan]), np.array([True]))
    with pytest.raises(InputError, match="entries"):
        reliability(np.array([0.5]), np.array([True, False]))
    with pytest.raises(InputError, match="no predictions"):
        reliability(np.array([]), np.array([], bool))
    with pytest.raises(InputError, match="bins"):
        reliability(np.array([0.5]), np.array([True]), bins=0)


def test_evaluate_counts_next_token_predictions_like_a_direct_computation():
    from sparselabels.demo.models import build_model, llama_config

    model = build_model(llama_config(64, hidden_size=16, num_layers=1, num_heads=2), seed=0)
    batches = [torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = evaluate(model, batches)
    assert result.predictions == 2 * 3 * 9 == result.reliability.total
    with torch.no_grad():
        logits = torch.cat([model(input_ids=b).logits[:, :-1] for b in batches])
    targets = torch.cat([b[:, 1:] for b in batches])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1))
    assert result.loss == pytest.approx(float(expected), rel=1e-5)
    probs = logits.softmax(-1)
    assert result.ece == pytest.approx(expected_calibration_error(
        probs.max(-1).values.reshape(-1).numpy(), (probs.argmax(-1) == targets).reshape(-1).numpy()), abs=1e-6)


# -- the demo -----------------------------------------------------------------------------------------------
def test_demo_command_is_registered():
    assert "demo" in COMMANDS, "register sparselabels.cli.demo in sparselabels.cli.main.COMMANDS"


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| student | held-out LM loss | ECE | labels/position | label bytes/position (raw / rans) |" in printed
    for name in (*STUDENTS, "teacher"):
        assert name in printed

    result = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in result["students"]] == list(STUDENTS)
    assert [row["kind"] for row in result["students"]] == list(STUDENT_KINDS)
    settings = result["settings"]
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (settings["label_sequences"], settings["student_train"]["seq_len"])
    for row in [*result["students"], result["teacher"]]:
        assert math.isfinite(row["heldout_loss"]) and row["heldout_loss"] > 0
        assert 0.0 <= row["ece"] <= 1.0
    for row in result["students"]:
        assert [s for s, _ in row["curve"]][-1] == settings["student_train"]["steps"]
        assert row["train_seconds"] > 0
        has_labels = row["kind"] in ("topk", "rskd")
        assert (row["label_file"] is not None) == has_labels
        if not has_labels:
            continue
        path = Path(row["label_file"])
        report = sl.validate(path)
        assert report.ok, report.problems
        assert report.num_positions == tokens.size and report.num_sequences == len(tokens)
        stored = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
        assert row["label_bytes_per_position"] == pytest.approx(stored / tokens.size)
        assert row["labels_per_position"] == pytest.approx(report.num_labels / tokens.size)
        compact = Path(result["files"][f"labels_{row['kind']}_compact"])
        assert sl.validate(compact).ok and sl.open_labels(compact).metadata["codec"] == "rans"
        assert row["compact_bytes_per_position"] == pytest.approx(compact.stat().st_size / tokens.size)
        with sl.open_labels(path) as raw, sl.open_labels(compact) as packed:
            assert raw.metadata["codec"] == "raw"  # the "raw" column of the table is the raw codec
            assert row["compact_bytes_per_position"] < row["label_bytes_per_position"]
            for a, b in zip(raw, packed, strict=True):
                assert np.array_equal(a.ids, b.ids) and np.array_equal(a.counts, b.counts)
        assert row["labeling_tokens_per_second"] > 0
        with sl.open_labels(path) as f:
            if row["kind"] == "topk":
                assert f.value_kind == "prob" and row["labels_per_position"] == 12.0
            else:
                assert f.value_kind == "count" and f.rounds == 50 and 1 <= row["labels_per_position"] <= 50
            assert [sl.input_fingerprint(s) for s in tokens] == [s.fingerprint for s in f]
    assert sorted(result["ordering"]["heldout_loss"]) == sorted(STUDENTS)
    losses = {row["name"]: row["heldout_loss"] for row in result["students"]}
    assert result["ordering"]["heldout_loss"] == sorted(losses, key=losses.get)
    for picture in ("loss_curves.png", "reliability.png"):
        assert (out / picture).read_bytes()[:8] == PNG_MAGIC
    assert not (out / "teacher-logits.npy").exists()
    assert result["reliability"]["teacher"]["counts"] and sum(result["reliability"]["teacher"]["counts"]) == \
        settings["heldout_predictions"]

    # The second run finds the corpus, tokenizer and teacher in the cache.
    again = run_demo(out, quick=True, log=None)
    assert again.teacher["cached"] and not result["teacher"]["cached"]
    assert again.teacher["heldout_loss"] == pytest.approx(result["teacher"]["heldout_loss"])


def test_demo_refuses_a_missing_gpu_and_bad_seed(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            run_demo(tmp_path, quick=True, device="cuda", log=None)
    with pytest.raises(InputError, match="seed"):
        run_demo(tmp_path, quick=True, seed=-1, log=None)


# -- examples -----------------------------------------------------------------------------------------------
def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env={**subprocess_env(), **kwargs.pop("env", {})}, capture_output=True, text=True,
                          timeout=600, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_example_quickstart(tmp_path):
    done = _run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path)])
    assert "3 sequences, 16 positions" in done.stdout and done.stdout.strip().endswith("valid")
    assert sl.validate(tmp_path / "labels.slbl").ok


def test_example_train_student_quick_and_resume(tmp_path):
    _run([sys.executable, str(EXAMPLES / "train_student.py"), "--quick", "--out", str(tmp_path)])
    first = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert first["step"] == 4 and first["sampler"]["consumed"] == 16  # 4 steps of 4 of the 24 tiny sequences
    done = _run([sys.executable, str(EXAMPLES / "train_student.py"), "--quick", "--steps", "7", "--resume",
                 "--out", str(tmp_path), "--labels", str(tmp_path / "labels"),
                 "--tokens", str(tmp_path / "tokens.npy")])
    assert "steps 4..7" in done.stdout
    second = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert second["step"] == 7 and second["sampler"] == {**first["sampler"], "consumed": 4, "epoch": 1}
    assert all(math.isfinite(float(line.split("loss ")[1].split()[0]))
               for line in done.stdout.splitlines() if line.startswith("step "))


def test_example_generate_torchrun_quick():
    done = _run(["bash", str(EXAMPLES / "generate_torchrun.sh"), "--quick"], env={"PYTHON": sys.executable})
    assert ": valid (2 file(s), 12 sequences, 384 positions" in done.stdout
    assert "shard-00000-of-00002.slbl" in done.stdout and "shard-00001-of-00002.slbl" in done.stdout
    assert os.access(EXAMPLES / "generate_torchrun.sh", os.X_OK)
