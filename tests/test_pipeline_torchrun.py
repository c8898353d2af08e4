"""A real ``torchrun --nproc_per_node 2`` run on CPUs (gloo): two shards and a manifest whose merged content
equals a single-process run's, sequence for sequence and byte for byte of the labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pipeline_fixtures import assert_same_labels, cli, read_all, subprocess_env, tiny_gpt2

import sparselabels as sl


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    model = tiny_gpt2(tmp_path / "teacher")
    rng = np.random.default_rng(21)
    tokens = rng.integers(0, 1000, size=(11, 18))
    np.save(tmp_path / "tokens.npy", tokens)
    args = ["generate", "--model", str(model), "--tokens", str(tmp_path / "tokens.npy"), "--dtype", "float32",
            "--device", "cpu", "--batch-size", "2", "--seed", "5", "--rounds", "40", "--no-progress"]

    command = cli()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--no-python", command[0]] if len(command) == 1 else command[1:]
    multi = subprocess.run([*launcher, *args, "--out", str(tmp_path / "multi")], env=subprocess_env(),
                           capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-4000:]
    single = subprocess.run([*command, *args, "--out", str(tmp_path / "single")], env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]

    body = json.loads((tmp_path / "multi" / "manifest.json").read_text())
    assert [s["path"] for s in body["shards"]] == ["shard-00000-of-00002.slbl", "shard-00001-of-00002.slbl"]
    # 6 global batches of 2: rank 0 labels batches 0-2 (sequences 0-5), rank 1 batches 3-5 (sequences 6-10).
    assert [s["num_sequences"] for s in body["shards"]] == [6, 5]
    with sl.LabelFile(tmp_path / "multi" / "shard-00001-of-00002.slbl") as f:
        assert f.metadata["shard"] == {"rank": 1, "world_size": 2, "first_sequence": 6, "num_sequences": 5}

    got, meta_multi = read_all(tmp_path / "multi")
    expected, meta_single = read_all(tmp_path / "single")
    assert_same_labels(got, expected)
    assert [g[3] for g in got] == [e[3] for e in expected] == [sl.input_fingerprint(t) for t in tokens]
    meta_single.pop("shard")
    assert "shard" not in meta_multi  # differs between shards, so not common
    stream = meta_single.pop("random_stream")  # one stream; each shard starts at its own first row
    assert "random_stream" not in meta_multi
    with sl.LabelFile(tmp_path / "multi" / "shard-00001-of-00002.slbl") as f:
        assert f.metadata["random_stream"] == {**stream, "first_row": 6 * 18}
    assert meta_multi == meta_single
