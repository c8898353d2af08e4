"""``convert``: dense logits / log-probs from .npy, HDF5 and safetensors into label files, streamed in chunks;
``--topk`` prob labels; sequence delimiting; the same labels as ``generate`` for the same logits."""

from __future__ import annotations

import hashlib
import importlib
import itertools

import h5py
import numpy as np
import pytest
import torch
from pipeline_fixtures import assert_same_labels, cli, read_all, subprocess_env
from safetensors.torch import save_file

import sparselabels as sl
from sparselabels.errors import AlignmentError, InputError
from sparselabels.pipeline.convert import convert, plan_chunks
from sparselabels.sampling.rng import stream_key


def logits_3d(n=4, t=9, v=300, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, t, v)) * 3).astype(np.float32)


def rows_key(seed: int, sequences) -> int:
    """Twin of convert's stream key without tokens: ``stream_key(seed, rows-blake2b)`` over the count, the lengths,
    the width and the last row of the first, middle and last sequences, computed here from the arrays."""
    seqs = [torch.as_tensor(np.ascontiguousarray(s)) if not torch.is_tensor(s) else s for s in sequences]
    n = len(seqs)
    h = hashlib.blake2b(digest_size=16, person=b"sl-rows-v1")
    h.update(n.to_bytes(8, "little") + np.array([len(s) for s in seqs], "<i8").tobytes())
    h.update(int(seqs[0].shape[-1]).to_bytes(8, "little"))
    for i in sorted({0, n // 2, n - 1}):
        if len(seqs[i]):
            h.update(seqs[i][-1].contiguous().view(torch.uint8).numpy().tobytes())
    return stream_key(seed, f"rows-blake2b:{h.hexdigest()}")


def expected_counts(rows: np.ndarray, lengths, *, seed=0, rounds=50, temperature=1.0, vocab_size=None):
    """Obvious twin: sample each sequence's rows in one call with row ids = global positions, keyed by the
    input's rows as convert keys an input given without tokens."""
    out, position, key = [], 0, rows_key(seed, rows)
    for seq_rows in rows:
        n = len(seq_rows)
        labels = sl.sample_counts(torch.from_numpy(np.ascontiguousarray(seq_rows)), rounds, seed=key,
                                  temperature=temperature, vocab_size=vocab_size,
                                  row_ids=torch.arange(position, position + n))
        out.append(labels.numpy())
        position += n
    assert [len(o[2]) - 1 for o in out] == list(lengths)
    return out


def save(fmt: str, path_base, array: np.ndarray, key: str = "logits"):
    if fmt == "npy":
        path = path_base.with_suffix(".npy")
        np.save(path, array)
    elif fmt == "hdf5":
        path = path_base.with_suffix(".h5")
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=array, chunks=True)
    else:
        path = path_base.with_suffix(".safetensors")
        save_file({key: torch.from_numpy(np.ascontiguousarray(array))}, str(path))
    return path


@pytest.mark.parametrize("fmt", ["npy", "hdf5", "safetensors"])
@pytest.mark.parametrize("kind", ["logits", "logprobs"])
def test_each_format_and_kind(tmp_path, fmt, kind):
    logits = logits_3d()
    data = logits if kind == "logits" else torch.log_softmax(torch.from_numpy(logits), -1).numpy()
    path = save(fmt, tmp_path / "in", data)
    out = convert(path, tmp_path / "labels.slbl", kind=kind, seed=3, chunk_rows=5)
    got, meta = read_all(out)
    assert_same_labels(got, expected_counts(data, [9] * 4, seed=3))
    assert meta["seed"] == 3 and meta["rounds"] == 50 and meta["vocab_size"] == 300
    assert meta["converted_from"]["kind"] == kind and meta["converted_from"]["shape"] == [4, 9, 300]
    assert meta["random_stream"] == {"key": f"{rows_key(3, data):016x}", "first_row": 0,
                                     "from": "stream_key(seed, converted_from.rows_fingerprint)"}
    # log-probs are logits shifted per row: with one stream (keyed by the same tokens) the sampled labels are the same
    if kind == "logprobs":
        tokens = np.arange(36).reshape(4, 9)
        assert_same_labels(read_all(convert(path, tmp_path / "t.slbl", kind=kind, seed=3, tokens=tokens))[0],
                           read_all(convert(save(fmt, tmp_path / "raw", logits), tmp_path / "l.slbl", seed=3,
                                            tokens=tokens))[0])


def test_bfloat16_safetensors(tmp_path):
    logits = torch.from_numpy(logits_3d(2, 5, 64)).to(torch.bfloat16)
    save_file({"x": logits}, str(tmp_path / "in.safetensors"))
    got, _ = read_all(convert(tmp_path / "in.safetensors", tmp_path / "o.slbl", seed=1))
    key = rows_key(1, list(logits))
    expected = [sl.sample_counts(logits[i], 50, seed=key, row_ids=torch.arange(5 * i, 5 * i + 5)).numpy()
                for i in range(2)]
    assert_same_labels(got, expected)


def test_streaming_does_not_change_the_file(tmp_path):
    """Inputs are read chunk_rows rows at a time (sequences span chunks); the bytes do not depend on it."""
    path = save("npy", tmp_path / "in", logits_3d(5, 13, 200, seed=4))
    files = [convert(path, tmp_path / f"c{c}.slbl", chunk_rows=c) for c in (1, 7, 13, 64, 10_000)]
    first = files[0].read_bytes()
    assert all(f.read_bytes() == first for f in files[1:])


def test_plan_chunks_covers_every_position_once():
    lengths = np.array([5, 0, 12, 3, 0])
    chunks = list(plan_chunks(lengths, 4))
    assert all(sum(p.t1 - p.t0 for p in c) <= 4 for c in chunks)
    seen = {}
    for c in chunks:
        for p in c:
            seen.setdefault(p.seq, []).append((p.t0, p.t1))
    for seq, n in enumerate(lengths):
        spans = seen[seq]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_two_d_inputs_seq_len_and_lengths(tmp_path):
    rows = logits_3d(1, 20, 100, seed=2)[0]
    path = save("npy", tmp_path / "in", rows)
    one = read_all(convert(path, tmp_path / "one.slbl"))[0]
    assert_same_labels(one, expected_counts([rows], [20]))
    by_len = read_all(convert(path, tmp_path / "sl.slbl", seq_len=5))[0]
    assert_same_labels(by_len, expected_counts([rows[i : i + 5] for i in range(0, 20, 5)], [5] * 4))
    lengths = [3, 0, 10, 7]
    var = read_all(convert(path, tmp_path / "var.slbl", lengths=lengths, chunk_rows=4))[0]
    cuts = np.cumsum([0, *lengths])
    assert_same_labels(var, expected_counts([rows[cuts[i] : cuts[i + 1]] for i in range(4)], lengths))
    with pytest.raises(InputError, match="not a multiple of seq_len 6"):
        convert(path, tmp_path / "x.slbl", seq_len=6)
    with pytest.raises(InputError, match="sum to 21"):
        convert(path, tmp_path / "x.slbl", lengths=[20, 1])


def test_three_d_with_lengths_skips_padding(tmp_path):
    logits = logits_3d(3, 8, 50, seed=5)
    logits[1, 4:] = np.nan  # padding that must never be read
    path = save("hdf5", tmp_path / "in", logits)
    got = read_all(convert(path, tmp_path / "o.slbl", lengths=np.array([8, 4, 6])))[0]
    assert_same_labels(got, expected_counts([logits[0], logits[1, :4], logits[2, :6]], [8, 4, 6]))
    with pytest.raises(InputError, match="more than the input's 8"):
        convert(path, tmp_path / "x.slbl", lengths=[9, 1, 1])


def test_padded_vocab_and_temperature(tmp_path):
    logits = logits_3d(2, 6, 128, seed=6)
    logits[..., 100:] = 50.0  # padding columns that would win every draw
    path = save("npy", tmp_path / "in", logits)
    got, meta = read_all(convert(path, tmp_path / "o.slbl", vocab_size=100, temperature=1.5, seed=9))
    assert meta["vocab_size"] == 100 and meta["temperature"] == 1.5
    assert max(int(g[0].max()) for g in got) < 100
    assert_same_labels(got, expected_counts(logits, [6, 6], seed=9, temperature=1.5, vocab_size=100))


def test_topk(tmp_path):
    logits = logits_3d(3, 7, 80, seed=7)
    path = save("safetensors", tmp_path / "in", logits, key="teacher_logits")
    got, meta = read_all(convert(path, tmp_path / "o.slbl", topk=5, chunk_rows=4))
    assert meta["value_kind"] == "prob" and meta["topk"] == 5 and meta["rounds"] is None
    for i in range(3):
        ref = sl.topk_labels(torch.from_numpy(logits[i]), 5).numpy()
        for a, b in zip(got[i][:3], ref, strict=True):
            assert np.array_equal(a, b)


def test_logits_given_as_logprobs_are_caught(tmp_path):
    path = save("npy", tmp_path / "in", logits_3d())
    with pytest.raises(InputError, match=r"sequence 0, position 0 \(row 0\): log-probabilities sum to exp\("):
        convert(path, tmp_path / "o.slbl", kind="logprobs")
    assert not (tmp_path / "o.slbl").exists()


def test_bad_inputs(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((2, 3, 4), dtype=np.int32))
    with pytest.raises(InputError, match="not float16, float32 or float64"):
        convert(tmp_path / "ints.npy", tmp_path / "o.slbl")
    np.save(tmp_path / "one_d.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(InputError, match="expected a"):
        convert(tmp_path / "one_d.npy", tmp_path / "o.slbl")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 3), np.float32)
        f["b"] = np.zeros((2, 3), np.float32)
    with pytest.raises(InputError, match="name the one"):
        convert(tmp_path / "two.h5", tmp_path / "o.slbl")
    bad = logits_3d(2, 3, 10)
    bad[1, 2, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        convert(tmp_path / "nan.npy", tmp_path / "o.slbl")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="unknown format"):
        convert(tmp_path / "x.txt", tmp_path / "o.slbl")


def test_tokens_give_fingerprints_and_must_line_up(tmp_path):
    path = save("npy", tmp_path / "in", logits_3d(3, 4, 30))
    tokens = np.arange(12).reshape(3, 4)
    got = read_all(convert(path, tmp_path / "o.slbl", tokens=tokens))[0]
    assert [g[3] for g in got] == [sl.input_fingerprint(t) for t in tokens]
    with pytest.raises(AlignmentError, match="sequence 0: 5 tokens but 4 rows"):
        convert(path, tmp_path / "p.slbl", tokens=np.zeros((3, 5), dtype=np.int64))


def test_same_logits_give_the_same_labels_as_generate(tmp_path):
    """generate and convert share the row-id scheme and, given the tokens, the stream key: dumping the teacher's
    logits and converting them with the run's seed gives the labels generate writes, and merge sees that they
    drew the same random numbers."""
    from pipeline_fixtures import load_model, random_tokens, tiny_gpt2

    from sparselabels.pipeline.generate import generate

    model_dir = tiny_gpt2(tmp_path / "teacher")
    tokens = random_tokens(3, 10, seed=4)
    with torch.no_grad():
        logits = load_model(model_dir)(input_ids=torch.from_numpy(tokens)).logits.numpy()
    np.save(tmp_path / "logits.npy", logits)
    gen = generate(model_dir, tokens, tmp_path / "gen", batch_size=3, dtype="float32", device="cpu", seed=8,
                   progress=False)
    generated, gen_meta = read_all(gen)
    conv = convert(tmp_path / "logits.npy", tmp_path / "conv.slbl", seed=8, tokens=tokens)
    converted, conv_meta = read_all(conv)
    assert_same_labels(converted, generated)
    assert [c[3] for c in converted] == [g[3] for g in generated]
    assert conv_meta["random_stream"] == gen_meta["random_stream"]
    assert conv_meta["source_fingerprint"] == gen_meta["source_fingerprint"]
    with pytest.raises(sl.CompatibilityError, match="drew the same random numbers"):
        sl.merge(tmp_path / "m.slbl", [gen, conv], copy=True)


def test_two_parts_converted_with_one_seed_draw_different_numbers(tmp_path):
    """Two parts of a corpus converted separately with one seed both count rows from 0; both start with the same
    sequence, so keyed by the seed alone they would label it from the same draws."""
    logits = logits_3d(3, 9, 200, seed=11)
    a = convert(save("npy", tmp_path / "a", logits[[0, 1]]), tmp_path / "a.slbl", seed=9)
    b = convert(save("npy", tmp_path / "b", logits[[0, 2]]), tmp_path / "b.slbl", seed=9)
    (first_a, *_), meta_a = read_all(a)
    (first_b, *_), meta_b = read_all(b)
    assert not all(np.array_equal(x, y) for x, y in zip(first_a[:3], first_b[:3], strict=True))
    assert meta_a["random_stream"]["key"] != meta_b["random_stream"]["key"]
    assert meta_a["converted_from"]["rows_fingerprint"].startswith("rows-blake2b:")
    again = convert(tmp_path / "a.npy", tmp_path / "a-again.slbl", seed=9)
    assert again.read_bytes() == a.read_bytes()  # reproducible: the stream depends on the input, not the run


def test_merge_refuses_convert_outputs_that_reuse_draws_and_names_both(tmp_path):
    logits = logits_3d(3, 9, 200, seed=12)
    a = convert(save("npy", tmp_path / "a", logits[:2]), tmp_path / "a.slbl", seed=4)
    b = convert(save("npy", tmp_path / "b", logits[2:]), tmp_path / "b.slbl", seed=4)
    # the same part again, from a copy of its input under another name: the same draws
    copy = convert(save("hdf5", tmp_path / "a-copy", logits[:2]), tmp_path / "a-copy.slbl", seed=4)
    for merged in (tmp_path / "m.slbl", tmp_path / "m.json"):
        with pytest.raises(sl.CompatibilityError, match=rf"inputs '{a}' and '{copy}' drew the same random numbers "
                                                       r"\(stream [0-9a-f]{16}, rows 0\.\.17 in both\)"):
            sl.merge(merged, [a, b, copy], copy=merged.suffix == ".slbl")
        assert not merged.exists()
    assert len(read_all(sl.merge(tmp_path / "ab.slbl", [a, b], copy=True))[0]) == 3
    # Top-K labels draw nothing: no seed, no stream, nothing for merge to refuse
    top = [convert(tmp_path / "a.npy", tmp_path / f"top{i}.slbl", topk=3) for i in range(2)]
    assert not {"seed", "random_stream"} & set(read_all(top[0])[1])
    sl.merge(tmp_path / "top.slbl", top, copy=True)


def test_cli_convert(tmp_path):
    import subprocess

    path = save("hdf5", tmp_path / "in", logits_3d(2, 6, 40), key="out/logits")
    done = subprocess.run([*cli(), "convert", str(path), "--out", str(tmp_path / "o.slbl"), "--key", "out/logits",
                           "--lengths", "6,3", "--topk", "4", "--no-progress"], env=subprocess_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with sl.open_labels(tmp_path / "o.slbl") as f:
        assert len(f) == 2 and f.num_positions == 9 and f.value_kind == "prob"


# -- resume ----------------------------------------------------------------------------------------------------


_CONVERT_MODULE = importlib.import_module("sparselabels.pipeline.convert")  # the package exports convert()
_REAL_OPEN_DENSE = _CONVERT_MODULE.open_dense


class _FailingSource:
    """A dense source that raises after ``reads`` reads, as a crash in the middle of a conversion would."""

    def __init__(self, src, reads: int) -> None:
        self._src, self.reads_left, self.rows_read = src, reads, 0

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read(self, index):
        if self.reads_left == 0:
            raise RuntimeError("simulated crash")
        self.reads_left -= 1
        block = self._src.read(index)
        self.rows_read += int(np.prod(block.shape[:-1]))
        return block


def _open_counting(monkeypatch, reads: int | None):
    """Make convert read through a _FailingSource (``reads=None``: never fails); return the list of sources."""
    opened = []

    def open_dense(path, *, key=None):
        src = _FailingSource(_REAL_OPEN_DENSE(path, key=key), -1 if reads is None else reads)
        opened.append(src)
        return src

    monkeypatch.setattr(_CONVERT_MODULE, "open_dense", open_dense)
    return opened


@pytest.mark.parametrize("topk", [None, 4])
def test_resume_after_a_crash_gives_the_uninterrupted_bytes(tmp_path, monkeypatch, topk):
    path = save("npy", tmp_path / "in", logits_3d(12, 9, 300))
    args = dict(seed=5, chunk_rows=10, chunk_bytes=500, topk=topk)  # small chunks: several are flushed
    whole = convert(path, tmp_path / "whole.slbl", **args).read_bytes()
    _open_counting(monkeypatch, reads=7)
    out = tmp_path / "labels.slbl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(path, out, **args)
    assert not out.exists()
    _open_counting(monkeypatch, reads=None)
    with pytest.raises(sl.SparseLabelsError, match=r"pass resume=True"):
        convert(path, out, **args)  # neither resume nor overwrite: the partial file is not touched
    opened = _open_counting(monkeypatch, reads=None)
    convert(path, out, resume=True, **args)
    assert out.read_bytes() == whole
    # every row is read once: the kept sequences' rows to check they are the rows they were labeled from, the
    # others' rows to label them; sampling also reads the last rows of sequences 0, 6 and 11 to key its stream
    assert opened[-1].rows_read == 12 * 9 + (3 if topk is None else 0), opened[-1].rows_read


def test_resume_of_a_finished_file_checks_it_and_keeps_it(tmp_path):
    path = save("npy", tmp_path / "in", logits_3d(3, 5, 64))
    out = convert(path, tmp_path / "labels.slbl", seed=1)
    before = out.read_bytes()
    assert convert(path, out, seed=1, resume=True) == out
    assert out.read_bytes() == before
    with pytest.raises(sl.CompatibilityError, match="cannot resume: seed is 1 in the finished file but 2"):
        convert(path, out, seed=2, resume=True)
    with pytest.raises(InputError, match="exclude"):
        convert(path, out, seed=1, resume=True, overwrite=True)


@pytest.mark.parametrize(("first", "second", "message"), [
    (dict(seed=1, seq_len=8), dict(seed=2, seq_len=8), "cannot resume: seed is 1"),
    # the same rows cut into other sequences: appending to them mixed lengths and lost positions, and validated
    (dict(seed=1, seq_len=8), dict(seed=1, seq_len=16), "cannot resume: converted_from is"),
])
def test_resume_refuses_a_partial_file_of_other_settings(tmp_path, monkeypatch, first, second, message):
    path = save("npy", tmp_path / "in", logits_3d(1, 64, 300)[0])
    _open_counting(monkeypatch, reads=3 + 2)  # the rows that key the stream (sequences 0, 4, 7), then two chunks
    out = tmp_path / "labels.slbl"
    with pytest.raises(RuntimeError):
        convert(path, out, chunk_rows=8, chunk_bytes=500, **first)
    _open_counting(monkeypatch, reads=None)
    with pytest.raises(sl.CompatibilityError, match=message):
        convert(path, out, chunk_rows=8, chunk_bytes=500, resume=True, **second)


def test_resume_refuses_a_finished_file_of_another_sequence_layout(tmp_path):
    path = save("npy", tmp_path / "in", logits_3d(1, 64, 100)[0])
    out = convert(path, tmp_path / "done.slbl", seq_len=32)
    with pytest.raises(sl.CompatibilityError, match="converted_from"):
        convert(path, out, lengths=[10, 54], resume=True)


def test_bad_rows_are_named_by_sequence_and_position(tmp_path):
    logits = logits_3d(4, 16, 100)
    logprobs = torch.log_softmax(torch.from_numpy(logits).double(), -1).float().numpy()
    for kind, values in (("logits", logits), ("logprobs", logprobs)):
        values[2, 5, 7] = np.nan
        path = save("npy", tmp_path / kind, values)
        with pytest.raises(InputError, match=r"sequence 2, position 5 \(row 37\) has NaN at column 7"):
            convert(path, tmp_path / f"{kind}.slbl", kind=kind, chunk_rows=10)
    with pytest.raises(InputError, match="is the input file"):
        convert(path, path, overwrite=True)


def test_cli_convert_resume(tmp_path):
    import subprocess

    path = save("npy", tmp_path / "in", logits_3d(2, 6, 40))
    base = [*cli(), "convert", str(path), "--out", str(tmp_path / "o.slbl"), "--no-progress"]
    assert subprocess.run(base, env=subprocess_env(), capture_output=True).returncode == 0
    again = subprocess.run(base, env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode != 0 and "pass --overwrite" in again.stderr
    resumed = subprocess.run([*base, "--resume"], env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("fmt", ["npy", "hdf5", "safetensors"])
def test_resume_refuses_an_input_replaced_by_other_values(tmp_path, monkeypatch, fmt):
    """Same name, shape and dtype, other values: resuming would mix the labels of two inputs in a valid file."""
    first = logits_3d(12, 9, 300, seed=1)
    path = save(fmt, tmp_path / "in", first)
    args = dict(seed=5, chunk_rows=10, chunk_bytes=500)
    _open_counting(monkeypatch, reads=7)
    out = tmp_path / "labels.slbl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(path, out, **args)
    journal = tmp_path / "labels.slbl.partial.rows"
    assert journal.stat().st_size > 0 and journal.stat().st_size % 16 == 0  # one digest per sequence handed over
    _open_counting(monkeypatch, reads=None)
    other = first.copy()
    other[1, 3, 7] += 1.0  # one value of a sequence the partial file already holds
    save(fmt, tmp_path / "in", other)
    with pytest.raises(sl.CompatibilityError, match="rows of sequence 1 differ"):
        convert(path, out, resume=True, **args)
    save(fmt, tmp_path / "in", first)  # the original input back: the resume goes through, byte for byte
    convert(path, out, resume=True, **args)
    assert out.read_bytes() == convert(path, tmp_path / "whole.slbl", **args).read_bytes()
    assert not journal.exists() and not (tmp_path / "whole.slbl.partial.rows").exists()


def test_resume_without_a_record_of_the_input_rows_is_refused(tmp_path, monkeypatch):
    path = save("npy", tmp_path / "in", logits_3d(12, 9, 300))
    _open_counting(monkeypatch, reads=7)
    out = tmp_path / "labels.slbl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(path, out, seed=5, chunk_rows=10, chunk_bytes=500)
    (tmp_path / "labels.slbl.partial.rows").unlink()
    _open_counting(monkeypatch, reads=None)
    with pytest.raises(sl.CompatibilityError, match="cannot be checked to be the one"):
        convert(path, out, seed=5, chunk_rows=10, chunk_bytes=500, resume=True)
    convert(path, out, seed=5, chunk_rows=10, chunk_bytes=500, overwrite=True)


def test_hostile_hdf5_inputs_are_refused_before_reading(tmp_path):
    """Declared shapes cost nothing to store: a row beyond the bound is refused before any allocation; data that
    lives outside the given file (external storage, virtual datasets, external links) is never read."""
    hostile = tmp_path / "huge.h5"
    with h5py.File(hostile, "w") as f:
        f.create_dataset("logits", shape=(2, 2**28), dtype="<f4")  # no data stored: a file of a few KB
    assert hostile.stat().st_size < 10_000
    with pytest.raises(InputError, match=r"rows of 268435456 values are more than the 256 MiB per row"):
        convert(hostile, tmp_path / "o.slbl")
    with h5py.File(tmp_path / "chunky.h5", "w") as f:
        f.create_dataset("logits", shape=(2**21, 128), chunks=(2**21, 128), dtype="<f4")
    with pytest.raises(InputError, match=r"chunks of .* are more than the"):
        convert(tmp_path / "chunky.h5", tmp_path / "o.slbl")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype="<f4").tobytes())
    with h5py.File(tmp_path / "external.h5", "w") as f:
        f.create_dataset("logits", shape=(4, 4), dtype="<f4", external=[(str(secret), 0, 64)])
    with pytest.raises(InputError, match=r"stored in external files \[.*secret\.bin'\]"):
        convert(tmp_path / "external.h5", tmp_path / "o.slbl")
    with h5py.File(tmp_path / "source.h5", "w") as f:
        f.create_dataset("logits", data=np.zeros((4, 4), "<f4"))
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        layout = h5py.VirtualLayout(shape=(4, 4), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "source.h5"), "logits", shape=(4, 4))
        f.create_virtual_dataset("logits", layout)
    with pytest.raises(InputError, match="virtual dataset"):
        convert(tmp_path / "virtual.h5", tmp_path / "o.slbl")
    with h5py.File(tmp_path / "linked.h5", "w") as f:
        f["logits"] = h5py.ExternalLink(str(tmp_path / "source.h5"), "logits")
    with pytest.raises(InputError, match="lives in another file"):
        convert(tmp_path / "linked.h5", tmp_path / "o.slbl", key="logits")
    assert not list(tmp_path.glob("o.slbl*"))


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_big_endian_inputs_convert_like_little_endian(tmp_path, fmt):
    logits = logits_3d(3, 5, 64)
    little = convert(save(fmt, tmp_path / "le", logits), tmp_path / "le.slbl", seed=3)
    big = convert(save(fmt, tmp_path / "be", logits.astype(">f4")), tmp_path / "be.slbl", seed=3)
    with sl.LabelFile(little) as a, sl.LabelFile(big) as b:
        assert len(a) == len(b) == 3
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x.ids, y.ids) and np.array_equal(x.counts, y.counts)
