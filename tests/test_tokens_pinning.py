"""File-backed token sources are pinned like label files: a worker reopening one by path refuses a file that
changed since the sender opened it; token arrays of non-integer kinds (timedelta64) are refused clearly."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from sparselabels.data.tokens import HFTokens, MegatronTokens, NpyTokens, open_tokens, write_megatron_tokens
from sparselabels.errors import FormatError, InputError


def test_a_replaced_npy_token_file_is_refused_on_reopen(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(40, dtype=np.int32).reshape(4, 10))
    src = NpyTokens(path)
    state = pickle.dumps(src)
    assert pickle.loads(state)[1].tolist() == list(range(10, 20))  # unchanged: reopens
    np.save(tmp_path / "other.npy", np.arange(40, 80, dtype=np.int32).reshape(4, 10))  # same name, shape, dtype
    os.replace(tmp_path / "other.npy", path)
    with pytest.raises(FormatError, match="changed after it was opened"):
        pickle.loads(state)[1]
    fresh = NpyTokens(path)  # a fresh open is fine
    state = pickle.dumps(fresh)
    assert pickle.loads(state)[1].tolist() == list(range(50, 60))
    time.sleep(0.05)  # past the file system's timestamp granularity
    np.save(path, np.arange(40, dtype=np.int32).reshape(4, 10))  # rewritten in place (same inode and size)
    with pytest.raises(FormatError, match="changed after it was opened"):
        len(pickle.loads(state))


def test_a_replaced_megatron_token_file_is_refused_on_reopen(tmp_path):
    prefix = write_megatron_tokens(tmp_path / "c", [np.arange(5), np.arange(7)])
    state = pickle.dumps(MegatronTokens(prefix))
    assert pickle.loads(state)[1].tolist() == list(range(7))
    write_megatron_tokens(tmp_path / "d", [np.arange(5) + 9, np.arange(7) + 9])
    os.replace(tmp_path / "d.bin", tmp_path / "c.bin")  # the same layout, other tokens
    with pytest.raises(FormatError, match=r"c\.idx / .*c\.bin' changed after it was opened"):
        pickle.loads(state)


def test_a_replaced_saved_dataset_is_refused_on_reload(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]}).save_to_disk(tmp_path / "ds")
    src = HFTokens.from_disk(tmp_path / "ds")
    state = pickle.dumps(src)
    assert pickle.loads(state)[1].tolist() == [4, 5]
    datasets.Dataset.from_dict({"input_ids": [[7, 8, 9], [6, 6]]}).save_to_disk(tmp_path / "ds2")
    os.rename(tmp_path / "ds", tmp_path / "old")
    os.rename(tmp_path / "ds2", tmp_path / "ds")
    with pytest.raises(FormatError, match="changed after it was opened"):
        pickle.loads(state)[1]


def test_timedelta_tokens_are_refused_not_a_traceback(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(12).reshape(3, 4).astype("m8[s]"))
    with pytest.raises(FormatError, match="token ids must be integers, got dtype timedelta64"):
        open_tokens(path)
    with pytest.raises(InputError, match="token ids must be integers"):
        open_tokens(np.arange(12).reshape(3, 4).astype("m8[s]"))
    np.save(tmp_path / "logits.npy", np.zeros((3, 4, 10), np.float32))
    done = subprocess.run([sys.executable, "-m", "sparselabels.cli.main", "convert", str(tmp_path / "logits.npy"),
                           "--out", str(tmp_path / "o.slbl"), "--tokens", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "token ids must be integers, got dtype timedelta64" in done.stderr
