"""Random streams of labeling runs: parts of a corpus labeled separately with one seed draw different numbers,
runs stay reproducible, the metadata records the stream, and ``merge`` refuses inputs that reuse draws."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from pipeline_fixtures import random_tokens, read_all, tiny_llama

import sparselabels as sl
from sparselabels.data.identity import source_fingerprint
from sparselabels.errors import CompatibilityError
from sparselabels.pipeline import distributed, teacher
from sparselabels.pipeline.generate import generate
from sparselabels.sampling.rng import stream_key

gen_module = importlib.import_module("sparselabels.pipeline.generate")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


def run(model, tokens, out, **kw):
    kw.update(dtype="float32", device="cpu", progress=False)
    return generate(model, tokens, out, **kw)


@pytest.fixture(scope="module")
def parts(llama, tmp_path_factory):
    """Two parts of one corpus, labeled separately with one seed; both start with the same sequence, so with row
    ids restarting at 0 they would label it from the same draws."""
    root = tmp_path_factory.mktemp("parts")
    tokens = random_tokens(4, 12, seed=7)
    a = run(llama, [tokens[0], tokens[1]], root / "a", batch_size=1, seed=9)
    b = run(llama, [tokens[0], tokens[2]], root / "b", batch_size=1, seed=9)
    a_again = run(llama, [tokens[0], tokens[1]], root / "a-again", batch_size=1, seed=9)
    return tokens, a, b, a_again


def test_two_parts_with_one_seed_draw_different_numbers(parts):
    _, a, b, a_again = parts
    first_a, first_b = read_all(a)[0][0], read_all(b)[0][0]
    # the same tokens at the same row ids with the same logits: only the stream can make them differ
    assert not all(np.array_equal(x, y) for x, y in zip(first_a[:3], first_b[:3], strict=True))
    shard = "shard-00000-of-00001.slbl"
    assert (a / shard).read_bytes() == (a_again / shard).read_bytes()  # and a rerun is the same file


def test_the_stream_is_recorded(parts):
    tokens, a, _, _ = parts
    meta = read_all(a)[1]
    fp = source_fingerprint(sl.data.open_tokens([tokens[0], tokens[1]]))
    assert meta["source_fingerprint"] == fp and meta["seed"] == 9
    assert meta["random_stream"]["key"] == f"{stream_key(9, fp):016x}"
    assert meta["random_stream"]["first_row"] == 0
    assert meta["label_convention"] == "next-token"


def test_merge_refuses_inputs_that_reuse_draws_and_names_both(parts, tmp_path):
    _, a, b, a_again = parts
    shard = "shard-00000-of-00001.slbl"
    for copy, out in ((True, tmp_path / "m.slbl"), (False, a.parent / "m.json")):
        with pytest.raises(CompatibilityError, match=rf"inputs '{a / shard}' and '{a_again / shard}' drew the same "
                                                     r"random numbers \(stream [0-9a-f]{16}, rows 0\.\.23 in both\)"):
            sl.merge(out, [a, a_again], copy=copy)
        assert not out.exists()
    merged = sl.merge(tmp_path / "ab.slbl", [a, b], copy=True)  # different parts: different streams
    assert len(read_all(merged)[0]) == 4
    with pytest.raises(CompatibilityError, match="drew the same random numbers"):
        sl.merge(tmp_path / "aa.slbl", [a / shard, a / shard], copy=True)  # one file given twice


class _SameEverywhere:
    def barrier(self, group=None):
        pass

    def all_gather_object(self, out, value, group=None):
        out[:] = [value] * len(out)


def test_shards_of_one_run_share_a_stream_on_disjoint_rows_and_merge(llama, tmp_path):
    tokens = random_tokens(5, 6, seed=3)
    loaded = teacher.load_teacher(llama, dtype="float32", device="cpu")
    sampling = gen_module.SamplingOptions(50, 1.0, 2, loaded.vocab_size)
    options = gen_module.RunOptions(batch_size=2, dtype="float32", codec="raw", resume=False, overwrite=False,
                                    progress=False, flush_every=1, chunk_bytes=1 << 20, write_behind=True,
                                    metadata=None, log_interval=60.0)
    out = tmp_path / "multi"
    for rank in (1, 0):
        world = distributed.World(rank, 2, 0, group=None, created=False, _torch_dist=_SameEverywhere())
        gen_module._run(loaded, sl.data.open_tokens(tokens), out, world, sampling, options)
    streams = [read_all(out / f"shard-0000{r}-of-00002.slbl")[1]["random_stream"] for r in (0, 1)]
    assert streams[0]["key"] == streams[1]["key"]
    assert [s["first_row"] for s in streams] == [0, 12]  # rank 1 starts at sequence 2 = row 12
    single = run(llama, tokens, tmp_path / "single", batch_size=2, seed=2)
    merged = sl.merge(tmp_path / "m.slbl", [out], copy=True)
    for x, y in zip(read_all(merged)[0], read_all(single)[0], strict=True):
        assert all(np.array_equal(p, q) for p, q in zip(x[:3], y[:3], strict=True))
