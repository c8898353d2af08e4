"""``generate --mask-column``: masked positions are stored empty, kept positions hold exactly the labels of an
unmasked run with the same seed; the teacher reads the whole sequence; bad mask columns are refused."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from pipeline_fixtures import cli, read_all, subprocess_env, tiny_llama

import sparselabels as sl
from sparselabels.errors import InputError
from sparselabels.pipeline.generate import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


def _chat(tmp_path, lengths=(9, 14, 6, 11, 12), seed=0):
    import datasets

    rng = np.random.default_rng(seed)
    tokens = [rng.integers(3, 1000, size=n) for n in lengths]
    labels, loss_mask = [], []
    for t in tokens:
        prompt = int(rng.integers(1, len(t) - 1))
        lab = t.copy()
        lab[:prompt] = -100
        labels.append(lab.tolist())
        loss_mask.append((lab != -100).astype(int).tolist())
    ds = datasets.Dataset.from_dict({"input_ids": [t.tolist() for t in tokens], "labels": labels,
                                     "loss_mask": loss_mask})
    ds.save_to_disk(str(tmp_path / "chat"))
    return tmp_path / "chat", tokens, labels


def _run(model, tokens, out, **kw):
    return generate(model, tokens, out, dtype="float32", device="cpu", progress=False, batch_size=2, seed=7,
                    rounds=30, **kw)


@pytest.mark.parametrize("column", ["labels", "loss_mask"])
def test_masked_positions_empty_kept_positions_as_unmasked(llama, tmp_path, column):
    chat, tokens, labels = _chat(tmp_path)
    _run(llama, chat, tmp_path / "plain")
    _run(llama, chat, tmp_path / "masked", mask_column=column)
    plain, _ = read_all(tmp_path / "plain")
    masked, meta = read_all(tmp_path / "masked")
    assert meta["generation"]["mask_column"] == column
    stored = sum(int(m[1].size) for m in masked)
    assert 0 < stored < sum(int(p[1].size) for p in plain)
    for (ids_p, cnt_p, ptr_p, fp_p), (ids_m, cnt_m, ptr_m, fp_m), lab, tok in zip(plain, masked, labels, tokens,
                                                                                 strict=True):
        assert fp_p == fp_m == sl.input_fingerprint(tok)
        keep = np.append(np.array(lab[1:]) != -100, lab[-1] != -100)  # position t trains token t + 1
        for t in range(len(tok)):
            got = ids_m[ptr_m[t] : ptr_m[t + 1]], cnt_m[ptr_m[t] : ptr_m[t + 1]]
            if keep[t]:
                assert np.array_equal(got[0], ids_p[ptr_p[t] : ptr_p[t + 1]])
                assert np.array_equal(got[1], cnt_p[ptr_p[t] : ptr_p[t + 1]])
                assert got[1].sum() == 30
            else:
                assert got[0].size == 0 and got[1].size == 0


def test_mask_column_from_the_command_line(llama, tmp_path):
    chat, _, labels = _chat(tmp_path, lengths=(7, 10))
    out = subprocess.run([*cli(), "generate", "--model", str(llama), "--tokens", str(chat), "--out",
                          str(tmp_path / "cli"), "--dtype", "float32", "--device", "cpu", "--no-progress",
                          "--mask-column", "labels", "--seed", "7", "--rounds", "30", "--batch-size", "2"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got, _ = read_all(tmp_path / "cli")
    for (_, _, ptr, _), lab in zip(got, labels, strict=True):
        keep = np.append(np.array(lab[1:]) != -100, lab[-1] != -100)
        assert np.array_equal(np.diff(ptr) > 0, keep)


def test_bad_mask_columns_refused_before_any_output(llama, tmp_path):
    import datasets

    tokens = [[5, 6, 7, 8], [9, 10, 11]]
    cases = {
        "short": ({"m": [[1, 1, 1], [1, 1, 1]]}, "sequence 0: 3 mask values for 4 tokens"),
        "values": ({"m": [[1, 0, 1, 1], [1, 2, 1]]}, "sequence 1, token 1: mask value 2 is not 0 or 1"),
        "labels": ({"labels": [[5, 6, 7, 8], [-100, 3, 11]]}, "token 1: labels value 3 is neither -100"),
        "missing": ({}, "no column"),
    }
    for name, (extra, message) in cases.items():
        ds = datasets.Dataset.from_dict({"input_ids": tokens, **extra})
        column = next(iter(extra), "nope")
        with pytest.raises(InputError, match=message):
            _run(llama, ds, tmp_path / name, mask_column=column)
        assert not (tmp_path / name).exists()
    with pytest.raises(InputError, match="names a column of a datasets source") as info:
        _run(llama, np.array(tokens[:1]), tmp_path / "array", mask_column="m")
    assert "masks=" not in str(info.value)  # the dataset's option, which generate does not have
