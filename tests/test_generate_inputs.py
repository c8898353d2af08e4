"""``generate`` and its inputs: the teacher's context (an error, or windows labeled as the policy says), checks
that fail before the weights load, hub ids from the local cache, 1-D token streams and iterable sources.
CPU, tiny random models."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from pipeline_fixtures import (
    assert_same_labels,
    cli,
    config_only_model,
    load_model,
    random_tokens,
    read_all,
    reference_labels,
    run_key,
    subprocess_env,
    tiny_gpt2,
    tiny_llama,
)

import sparselabels as sl
from sparselabels.errors import CompatibilityError, FormatError, InputError, SparseLabelsError
from sparselabels.pipeline.generate import generate
from sparselabels.pipeline.windows import Window, WindowPolicy

gen_module = importlib.import_module("sparselabels.pipeline.generate")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    """GPT-2 with 16 positions: a longer input indexes past its position embedding."""
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2-16", n_positions=16)


@pytest.fixture(scope="module")
def short_llama(tmp_path_factory):
    """Llama with max_position_embeddings 16: RoPE would run past it without a word."""
    return tiny_llama(tmp_path_factory.mktemp("llama") / "llama-16", max_positions=16)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture
def broken(tmp_path):
    return config_only_model(tmp_path / "broken", n_positions=16)


def run(model, tokens, out, **kw):
    kw.setdefault("dtype", "float32")
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return generate(model, tokens, out, **kw)


# -- the teacher's context ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("which", "key"), [("gpt2", "n_positions"), ("llama", "max_position_embeddings")])
def test_sequences_longer_than_the_context_are_refused_before_labeling(which, key, short_gpt2, short_llama,
                                                                       tmp_path):
    model = {"gpt2": short_gpt2, "llama": short_llama}[which]
    seqs = [np.arange(n) % 900 for n in (10, 16, 20, 30)]
    with pytest.raises(InputError, match=rf"sequence 2 has 20 tokens, more than the teacher's context of 16 "
                                         rf"positions \(config {key}; 2 sequence\(s\) longer\); pass max_length"):
        run(model, seqs, tmp_path / "out", batch_size=2)
    assert not (tmp_path / "out").exists()  # nothing written, no .partial left
    run(model, seqs[:2], tmp_path / "fits", batch_size=2)  # exactly the context is fine


def test_window_plan_follows_the_policy():
    assert WindowPolicy.make(8, 3).plan(23) == [Window(0, 8, 0), Window(5, 13, 8), Window(10, 18, 13),
                                                Window(15, 23, 18)]
    assert WindowPolicy.make(8, 2).plan(20) == [Window(0, 8, 0), Window(6, 14, 8), Window(12, 20, 14)]
    # the last window moves back to end at the sequence's end: more left context than the stride gives
    assert WindowPolicy.make(8, 3).plan(10) == [Window(0, 8, 0), Window(2, 10, 8)]
    assert WindowPolicy.make(8, 0).plan(17) == [Window(0, 8, 0), Window(8, 16, 8), Window(9, 17, 16)]
    assert WindowPolicy.make(8, 3).plan(8) == [Window(0, 8, 0)]
    assert WindowPolicy.make(8, None).overlap == 4
    for n in range(0, 60):
        for length, overlap in ((8, 0), (8, 3), (8, 7), (5, 2)):
            plan = WindowPolicy.make(length, overlap).plan(n)
            covered = [p for w in plan for p in range(w.first, w.stop)]
            assert covered == list(range(n))  # each position exactly once, in order
            assert all(w.stop - w.start <= length for w in plan)
            assert all(w.first - w.start >= min(overlap, w.first) for w in plan)  # at least the overlap as context
    with pytest.raises(InputError, match="window_overlap must be below max_length"):
        WindowPolicy.make(8, 8)


def test_windowed_labels_equal_labels_by_hand_from_each_windows_logits(short_gpt2, tmp_path):
    """n_positions 16, max_length 8, overlap 3. The windows are written out here by hand, each one run alone
    through the model; each position is sampled from the window named for it, with its global row id."""
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 1000, size=n) for n in (23, 5, 10)]
    out = run(short_gpt2, seqs, tmp_path / "out", batch_size=1, max_length=8, window_overlap=3, seed=4)
    got, meta = read_all(out)
    assert meta["generation"]["windows"]["max_length"] == 8 and meta["generation"]["windows"]["window_overlap"] == 3

    by_hand = {0: [(0, 8, 0), (5, 13, 8), (10, 18, 13), (15, 23, 18)], 1: [(0, 5, 0)], 2: [(0, 8, 0), (2, 10, 8)]}
    model, key = load_model(short_gpt2), run_key(4, seqs)
    expected, position = [], 0
    for i, seq in enumerate(seqs):
        parts = []
        for start, stop, first in by_hand[i]:
            with torch.no_grad():
                logits = model(input_ids=torch.from_numpy(seq[start:stop][None].astype(np.int64))).logits[0]
            rows = logits[first - start :]
            parts.append(sl.sample_counts(rows, 50, seed=key, row_ids=torch.arange(position + first,
                                                                                   position + stop)).numpy())
        expected.append(sl.io.sequence.concat_csr(parts))
        position += len(seq)
    assert_same_labels(got, expected)
    assert [g[3] for g in got] == [sl.input_fingerprint(s) for s in seqs]


def test_windows_no_longer_than_the_context_and_llama_windows_run(short_gpt2, short_llama, tmp_path):
    seqs = [np.arange(40) % 1000]
    with pytest.raises(InputError, match="max_length 32 is more than the teacher's context of 16"):
        run(short_gpt2, seqs, tmp_path / "a", max_length=32)
    with pytest.raises(InputError, match="window_overlap applies to windows"):
        run(short_gpt2, seqs, tmp_path / "b", window_overlap=3)
    got, _ = read_all(run(short_llama, seqs, tmp_path / "c", max_length=16, batch_size=2))
    assert len(got[0][2]) - 1 == 40


# -- checks before the weights load -------------------------------------------------------------------------
def test_bad_inputs_fail_before_the_weights_load(broken, tmp_path):
    """The weights file is garbage: the errors below can only come from checks made before loading it."""
    good = random_tokens(3, 8)
    np.save(tmp_path / "floats.npy", good.astype(np.float32))
    np.save(tmp_path / "cube.npy", good.reshape(3, 2, 4))
    (tmp_path / "a-file").write_text("x")
    bad_id = good.copy()
    bad_id[1, 5] = 1000
    done, foreign = tmp_path / "done", tmp_path / "foreign"
    done.mkdir()
    (done / "shard-00000-of-00001.slbl").write_bytes(b"")
    foreign.mkdir()
    (foreign / "shard-00001-of-00004.slbl.partial").write_bytes(b"")
    cases = [
        (tmp_path / "missing.npy", {}, InputError, "cannot open"),
        (tmp_path / "floats.npy", {}, FormatError, "token ids must be integers"),
        (tmp_path / "cube.npy", {}, FormatError, "must be 2-D"),
        (bad_id, {}, InputError, r"sequence 1, position 5: token id 1000 is outside the teacher's input vocabulary "
                                 r"0\.\.999"),
        (good, {"out": tmp_path / "a-file"}, InputError, "is an existing file"),
        (random_tokens(2, 17), {}, InputError, "more than the teacher's context of 16"),
        (good, {"rounds": 0}, InputError, "rounds"),
        (good, {"seq_len": 4}, InputError, "seq_len cuts a 1-D token stream"),
        (good, {"out": done}, SparseLabelsError, "exists; pass resume=True"),
        (good, {"out": foreign}, CompatibilityError, "written by a run with 4 ranks"),
    ]
    for tokens, kw, error, message in cases:
        out = kw.pop("out", tmp_path / "out")
        with pytest.raises(error, match=message):
            run(broken, tokens, out, **kw)
    with pytest.raises(Exception) as info:  # the premise: good inputs do reach the (broken) weights
        run(broken, good, tmp_path / "out")
    assert not isinstance(info.value, InputError | FormatError)


def test_token_ids_are_checked_in_blocks_for_every_indexed_source(tmp_path):
    from sparselabels.data.tokens import write_megatron_tokens
    from sparselabels.pipeline.prechecks import first_bad_token

    seqs = [np.arange(n) % 50 for n in (7, 0, 12, 5)]
    seqs[2][9] = 77
    mega = sl.data.open_tokens(write_megatron_tokens(tmp_path / "m", seqs, dtype=np.uint16))
    stream = sl.data.StreamTokens(np.concatenate(seqs), 6)
    assert first_bad_token(mega, range(4), 50) == (2, 9, 77)
    assert first_bad_token(sl.data.open_tokens(seqs), range(4), 50) == (2, 9, 77)  # no flat view: per sequence
    assert first_bad_token(stream, range(len(stream)), 50) == (2, 4, 77)  # position 7 + 9 = 16 = 2 * 6 + 4
    assert first_bad_token(mega, range(3, 4), 50) is None  # only the sequences asked for
    grid = np.zeros((4, 6), np.int32)
    grid[3, 1] = -1
    assert first_bad_token(sl.data.open_tokens(grid), range(1, 4), 50) == (3, 1, -1)


# -- sources ------------------------------------------------------------------------------------------------
def test_a_one_dimensional_stream_with_seq_len(llama, tmp_path):
    stream = random_tokens(1, 50, seed=2)[0]
    pieces = [stream[i : i + 12] for i in range(0, 50, 12)]  # 12, 12, 12, 12, 2: the tail is kept
    np.save(tmp_path / "stream.npy", stream)
    expected = read_all(run(llama, pieces, tmp_path / "pieces", batch_size=2))
    from_file = read_all(run(llama, tmp_path / "stream.npy", tmp_path / "file", batch_size=2, seq_len=12))
    in_memory = read_all(run(llama, stream, tmp_path / "memory", batch_size=2, seq_len=12))
    assert [len(g[2]) - 1 for g in from_file[0]] == [12, 12, 12, 12, 2]
    assert_same_labels(from_file[0], expected[0])
    assert_same_labels(in_memory[0], expected[0])
    assert from_file[1]["source_fingerprint"] == expected[1]["source_fingerprint"]
    with pytest.raises(FormatError, match=r"a 1-D token stream is read with seq_len \(--seq-len\)"):
        run(llama, tmp_path / "stream.npy", tmp_path / "no-seq-len")


def _stream_reference(model_dir, seqs, *, batch_size, seed):
    from sparselabels.data.identity import stream_fingerprint
    from sparselabels.sampling.rng import stream_key

    key = stream_key(seed, stream_fingerprint([np.asarray(s) for s in seqs[:batch_size]]))
    return reference_labels(load_model(model_dir), seqs, batch_size=batch_size, seed=seed, vocab_size=1000, key=key)


def test_iterable_sources_are_labeled_in_order(llama, tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 1000, size=n) for n in (9, 4, 0, 12, 7)]
    expected = _stream_reference(llama, seqs, batch_size=2, seed=3)
    hf = datasets.Dataset.from_dict({"ids": [s.tolist() for s in seqs]}).to_iterable_dataset()

    class Torchy(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter({"input_ids": torch.from_numpy(s)} for s in seqs)

    outs = {"hf": run(llama, hf, tmp_path / "hf", batch_size=2, seed=3, column="ids"),
            "torch": run(llama, Torchy(), tmp_path / "torch", batch_size=2, seed=3),
            "generator": run(llama, (s for s in seqs), tmp_path / "gen", batch_size=2, seed=3)}
    for name, out in outs.items():
        got, meta = read_all(out)
        assert_same_labels(got, expected)
        assert [g[3] for g in got] == [sl.input_fingerprint(s) for s in seqs], name
        assert meta["source_fingerprint"].startswith("stream-blake2b:")
        assert json.loads((out / "manifest.json").read_text())["num_sequences"] == 5


def test_an_interrupted_stream_resumes_byte_identical(llama, tmp_path, monkeypatch):
    seqs = list(random_tokens(9, 6, seed=4))
    clean = run(llama, iter(seqs), tmp_path / "clean", batch_size=2)
    real, calls = gen_module.label_sequences, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_module, "label_sequences", failing)
    with pytest.raises(KeyboardInterrupt):
        run(llama, iter(seqs), tmp_path / "resumed", batch_size=2)
    monkeypatch.setattr(gen_module, "label_sequences", real)
    run(llama, iter(seqs), tmp_path / "resumed", batch_size=2, resume=True)
    name = "shard-00000-of-00001.slbl"
    assert (tmp_path / "resumed" / name).read_bytes() == (clean / name).read_bytes()
    run(llama, iter(seqs), tmp_path / "resumed", batch_size=2, resume=True)  # finished: settings checked only


def test_a_stream_with_a_sequence_past_the_context_names_it(short_gpt2, tmp_path):
    seqs = [np.arange(5), np.arange(9), np.arange(30) % 1000]
    with pytest.raises(InputError, match="sequence 2 has 30 tokens, more than the teacher's context of 16"):
        run(short_gpt2, iter(seqs), tmp_path / "out", batch_size=1)


def test_write_megatron_tokens_creates_missing_folders(tmp_path):
    from sparselabels.data.tokens import write_megatron_tokens

    prefix = write_megatron_tokens(tmp_path / "new" / "deeper" / "toks", [np.arange(3), np.arange(2)])
    assert sl.data.open_tokens(prefix).lengths().tolist() == [3, 2]


def _fake_hub_cache(root, model_dir, repo: str = "tiny-org/tiny-llama"):
    """The layout huggingface_hub keeps: blobs, a snapshot of links named by commit, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in model_dir.iterdir() if p.is_file())):
        blob = base / "blobs" / f"{i:040x}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(blob)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return repo


@pytest.mark.slow
def test_a_hub_id_is_resolved_from_the_local_cache_offline(llama, tmp_path):
    repo = _fake_hub_cache(tmp_path / "hub", llama)
    tokens = random_tokens(3, 8, seed=5)
    np.save(tmp_path / "t.npy", tokens)
    env = {**subprocess_env(), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    argv = [*cli(), "generate", "--model", repo, "--tokens", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"),
            "--dtype", "float32", "--device", "cpu", "--batch-size", "2", "--no-progress"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got, meta = read_all(tmp_path / "o")
    by_dir, dir_meta = read_all(run(llama, tokens, tmp_path / "by-dir", batch_size=2))
    assert_same_labels(got, by_dir)
    assert meta["teacher"] == repo
    assert meta["teacher_fingerprint"] == dir_meta["teacher_fingerprint"]  # the same files, through the links
    assert meta["tokenizer_fingerprint"] == dir_meta["tokenizer_fingerprint"]
    missing = subprocess.run([*argv[:3], "tiny-org/not-cached", *argv[4:6], "--out", str(tmp_path / "o2")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert "'tiny-org/not-cached' is neither a local directory nor a model in the local Hugging Face cache" in \
        missing.stderr and "Traceback" not in missing.stderr
