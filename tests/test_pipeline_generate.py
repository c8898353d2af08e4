"""``generate``: labels equal ``sample_counts`` on the teacher's own logits; metadata; padded vocabularies;
resume after an interruption; the pieces (teacher identity, progress, slicing). CPU, tiny random models."""

from __future__ import annotations

import importlib
import io
import json

import numpy as np
import pytest
import torch
from pipeline_fixtures import (
    assert_same_labels,
    load_model,
    random_tokens,
    read_all,
    reference_labels,
    tiny_gpt2,
    tiny_llama,
)

import sparselabels as sl
from sparselabels.codecs import available as available_codecs
from sparselabels.errors import CompatibilityError, InputError, SparseLabelsError
from sparselabels.pipeline import distributed, teacher
from sparselabels.pipeline.generate import WriteBehind, concat_csr, generate, split_csr
from sparselabels.pipeline.progress import Progress, format_duration

gen_module = importlib.import_module("sparselabels.pipeline.generate")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")


def run(model, tokens, out, **kw):
    kw.setdefault("dtype", "float32")
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return generate(model, tokens, out, **kw)


# -- labels -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_labels_equal_sample_counts_on_the_models_logits(which, llama, gpt2, tmp_path):
    path = {"llama": llama, "gpt2": gpt2}[which]
    tokens = random_tokens(7, 24, seed=3)
    out = run(path, tokens, tmp_path / "out", batch_size=3, seed=11, rounds=50)
    got, meta = read_all(out)
    vocab = 1000  # llama: the tokenizer's 1000 tokens, below its 1024 outputs; gpt2: 1000 outputs
    expected = reference_labels(load_model(path), list(tokens), batch_size=3, seed=11, vocab_size=vocab)
    assert_same_labels(got, expected)
    assert [g[3] for g in got] == [sl.input_fingerprint(t) for t in tokens]
    assert meta["vocab_size"] == vocab and meta["rounds"] == 50 and meta["seed"] == 11
    assert meta["temperature"] == 1.0
    assert meta["teacher"] == path.name
    assert meta["teacher_fingerprint"] == teacher.files_fingerprint(teacher.model_files(path))
    if which == "llama":
        assert meta["tokenizer_fingerprint"] == teacher.files_fingerprint(teacher.tokenizer_files(path))
    else:
        assert "tokenizer_fingerprint" not in meta
    assert meta["generation"]["batch_size"] == 3 and meta["generation"]["teacher_dtype"] == "float32"
    labels_per_position = sum(len(g[0]) for g in got) / tokens.size
    assert 3 < labels_per_position < 40  # a plausible RS-KD label, not a degenerate one


def test_bfloat16_teacher_from_a_path_or_a_module(llama, tmp_path):
    """bf16 labels equal sample_counts on from_pretrained(dtype=bf16) logits; a float32 module handed over with
    dtype="bfloat16" gets its parameters cast but keeps float32 buffers (rotary inv_freq), so it agrees too."""
    tokens = random_tokens(5, 20, seed=4)
    by_path = read_all(run(llama, tokens, tmp_path / "path", dtype="bfloat16", batch_size=2, seed=6))[0]
    expected = reference_labels(load_model(llama, torch.bfloat16), list(tokens), batch_size=2, seed=6,
                                vocab_size=1000)
    assert_same_labels(by_path, expected)
    module = load_model(llama)
    by_module = read_all(run(module, tokens, tmp_path / "module", dtype="bfloat16", batch_size=2, seed=6,
                             tokenizer=llama))[0]
    assert_same_labels(by_module, expected)
    assert module.model.rotary_emb.inv_freq.dtype == torch.float32


def test_padded_output_layer_is_never_sampled(llama, tmp_path):
    """The Llama predicts 1024 ids but its tokenizer has 1000: ids 1000..1023 must never appear, even when the
    padded columns hold the largest logits."""
    model = load_model(llama)
    with torch.no_grad():
        model.lm_head.weight[1000:] = model.lm_head.weight[:24] * 10  # padding columns would win every draw
    tokens = random_tokens(4, 16, seed=5)
    out = run(model, tokens, tmp_path / "out", batch_size=4, tokenizer=llama, seed=2)
    got, meta = read_all(out)
    assert meta["vocab_size"] == 1000
    assert max(int(g[0].max()) for g in got) < 1000
    assert_same_labels(got, reference_labels(model, list(tokens), batch_size=4, seed=2, vocab_size=1000))
    assert meta["teacher_fingerprint"].startswith("state-blake2b:")


def test_varied_lengths_padding_and_empty_sequences(llama, tmp_path):
    rng = np.random.default_rng(9)
    seqs = [rng.integers(0, 1000, size=n) for n in (5, 17, 0, 9, 1, 12, 0, 0, 3)]
    out = run(llama, seqs, tmp_path / "out", batch_size=3, seed=4, temperature=0.7)
    got, meta = read_all(out)
    assert [len(g[2]) - 1 for g in got] == [len(s) for s in seqs]
    expected = reference_labels(load_model(llama), seqs, batch_size=3, seed=4, temperature=0.7, vocab_size=1000)
    assert_same_labels(got, expected)
    assert meta["temperature"] == 0.7


def test_file_bytes_do_not_depend_on_row_chunks_or_write_thread(llama, tmp_path):
    tokens = random_tokens(6, 20, seed=1)
    a = run(llama, tokens, tmp_path / "a", batch_size=4)
    b = run(llama, tokens, tmp_path / "b", batch_size=4, max_rows=7, write_behind=False)
    for name in ("shard-00000-of-00001.slbl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_numpy_integer_options_are_plain_integers(llama, tmp_path):
    """Options from a config array (numpy integers) work as Python ints do, the file and all."""
    tokens = random_tokens(6, 20, seed=1)
    a = run(llama, tokens, tmp_path / "a", batch_size=4, seed=3)
    b = run(llama, tokens, tmp_path / "b", batch_size=np.int64(4), seed=np.uint32(3), rounds=np.int64(50),
            max_rows=np.int32(4096), flush_every=np.int16(1), chunk_bytes=np.int64(sl.io.writer.DEFAULT_CHUNK_BYTES))
    assert (a / "shard-00000-of-00001.slbl").read_bytes() == (b / "shard-00000-of-00001.slbl").read_bytes()


def test_flush_and_chunk_settings_change_chunks_not_labels(llama, tmp_path):
    tokens = random_tokens(6, 20, seed=1)
    a = run(llama, tokens, tmp_path / "a", batch_size=2)
    b = run(llama, tokens, tmp_path / "b", batch_size=2, flush_every=2, chunk_bytes=3000)
    assert_same_labels(read_all(b)[0], read_all(a)[0])
    with sl.LabelFile(a / "shard-00000-of-00001.slbl") as fa, sl.LabelFile(b / "shard-00000-of-00001.slbl") as fb:
        assert fa.index_column("chunk_first_sequence").tolist() == [0, 2, 4, 6]  # one chunk per batch
        assert fb.index_column("chunk_first_sequence").tolist() != [0, 2, 4, 6]  # cuts inside batches


def test_token_sources_npy_megatron_and_datasets(llama, tmp_path):
    from sparselabels.data.tokens import write_megatron_tokens

    tokens = random_tokens(5, 12, seed=8)
    np.save(tmp_path / "tokens.npy", tokens)
    prefix = write_megatron_tokens(tmp_path / "mega", list(tokens), dtype=np.uint16)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"ids": [list(map(int, t)) for t in tokens]}).save_to_disk(tmp_path / "hf")
    a = read_all(run(llama, tmp_path / "tokens.npy", tmp_path / "a", batch_size=2))
    b = read_all(run(llama, prefix, tmp_path / "b", batch_size=2))
    c = read_all(run(llama, tmp_path / "hf", tmp_path / "c", batch_size=2, column="ids"))
    assert_same_labels(a[0], b[0])
    assert_same_labels(a[0], c[0])
    assert a[1]["source_fingerprint"] == b[1]["source_fingerprint"] == c[1]["source_fingerprint"]


# -- errors -------------------------------------------------------------------------------------------------
def test_token_outside_the_input_vocabulary_is_named(llama, tmp_path):
    tokens = random_tokens(4, 10, seed=0)
    tokens[2, 7] = 5000
    with pytest.raises(InputError, match=r"sequence 2, position 7: token id 5000"):
        run(llama, tokens, tmp_path / "out", batch_size=2)


def test_existing_output_needs_resume_or_overwrite(llama, tmp_path):
    tokens = random_tokens(3, 8)
    out = run(llama, tokens, tmp_path / "out", batch_size=2)
    before = (out / "shard-00000-of-00001.slbl").read_bytes()
    with pytest.raises(SparseLabelsError, match="exists"):
        run(llama, tokens, out, batch_size=2)
    run(llama, tokens, out, batch_size=2, resume=True)  # complete: nothing to do, manifest rewritten
    assert (out / "shard-00000-of-00001.slbl").read_bytes() == before
    run(llama, tokens, out, batch_size=2, overwrite=True)
    assert (out / "shard-00000-of-00001.slbl").read_bytes() == before
    with pytest.raises(CompatibilityError, match="seed"):
        run(llama, tokens, out, batch_size=2, resume=True, seed=5)
    with pytest.raises(InputError, match="exclude"):
        run(llama, tokens, out, resume=True, overwrite=True)


def test_shards_of_another_world_size_are_refused(llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-00001-of-00004.slbl.partial").write_bytes(b"")
    with pytest.raises(CompatibilityError, match="4 ranks"):
        run(llama, random_tokens(2, 4), out, resume=True)


def test_other_datasets_in_the_output_directory_are_refused(llama, tmp_path):
    """A directory that already reads as a dataset (other label files, a manifest over them) is not taken over:
    the run's manifest used to replace the old one silently."""
    other = tmp_path / "other"
    other.mkdir()
    with sl.LabelWriter(other / "a.slbl", vocab_size=300, rounds=50) as w:
        w.write(np.array([1], np.uint32), np.array([50], np.uint8), np.array([0, 1]))
    with pytest.raises(CompatibilityError, match=r"a\.slbl, which is not a shard of this run"):
        run(llama, random_tokens(2, 4), other, overwrite=True)
    sl.merge(other / "manifest.json", [other / "a.slbl"])
    (other / "a.slbl").rename(other / "a.data")
    with pytest.raises(CompatibilityError, match="lists other files"):
        run(llama, random_tokens(2, 4), other, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["a.data", "manifest.json"]


def test_bad_options(llama, tmp_path):
    tokens = random_tokens(2, 4)
    with pytest.raises(InputError, match="batch_size"):
        run(llama, tokens, tmp_path / "o", batch_size=0)
    with pytest.raises(InputError, match="dtype"):
        run(llama, tokens, tmp_path / "o", dtype="int8")
    with pytest.raises(InputError, match="rounds"):
        run(llama, tokens, tmp_path / "o", rounds=256)
    with pytest.raises(InputError, match="vocab_size"):
        run(llama, tokens, tmp_path / "o", vocab_size=2000)
    with pytest.raises(InputError, match="holds no tokenizer files"):  # a typo used to drop the tokenizer
        run(llama, tokens, tmp_path / "o", tokenizer=tmp_path / "no-such-tokenizer")
    with pytest.raises(InputError, match=r"config\.json"):
        run(tmp_path, tokens, tmp_path / "o")


# -- interruption and resume (in process; the SIGKILL test is in test_pipeline_resume.py) ------------------------
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize(("flush_every", "chunk_bytes", "fail_at", "durable"),
                         [(1, 16 << 20, 3, "batch 3"), (2, 1500, 3, "inside a batch"), (2, 2500, 1, "some")])
def test_interrupted_then_resumed_is_byte_identical(llama, tmp_path, monkeypatch, flush_every, chunk_bytes, fail_at,
                                                    durable):
    """The crash comes after ``fail_at`` batches of 3. What survives it: every batch flushed before it; or, with
    small chunks, sequences up to a size cut inside a batch (the resumed run reruns that batch and skips the
    stored sequences); or whatever the cuts left."""
    tokens = random_tokens(14, 16, seed=6)
    settings = {"batch_size": 3, "flush_every": flush_every, "chunk_bytes": chunk_bytes, "seed": 3}
    clean = run(llama, tokens, tmp_path / "clean", **settings)

    real = gen_module.label_sequences
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise Boom("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_module, "label_sequences", failing)
    with pytest.raises(Boom):
        run(llama, tokens, tmp_path / "resumed", **settings)
    monkeypatch.setattr(gen_module, "label_sequences", real)
    assert (tmp_path / "resumed" / "shard-00000-of-00001.slbl.partial").exists()
    assert not (tmp_path / "resumed" / "shard-00000-of-00001.slbl").exists()

    opened = []

    class RecordingWriter(sl.LabelWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self.num_sequences)

    monkeypatch.setattr(gen_module, "LabelWriter", RecordingWriter)
    run(llama, tokens, tmp_path / "resumed", resume=True, **settings)
    assert len(opened) == 1 and 0 < opened[0] < 14
    if durable == "batch 3":
        assert opened[0] == 9
    elif durable == "inside a batch":
        assert opened[0] % 3 != 0
    for name in ("shard-00000-of-00001.slbl", "manifest.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (clean / name).read_bytes(), name


def test_resume_with_other_settings_is_refused(llama, tmp_path, monkeypatch):
    tokens = random_tokens(6, 8)
    monkeypatch.setattr(gen_module, "label_sequences", lambda *a, **k: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        run(llama, tokens, tmp_path / "out", batch_size=2)
    monkeypatch.undo()
    with pytest.raises(CompatibilityError, match="generation"):
        run(llama, tokens, tmp_path / "out", batch_size=3, resume=True)
    with pytest.raises(CompatibilityError, match="source_fingerprint"):
        run(llama, random_tokens(6, 8, seed=99), tmp_path / "out", batch_size=2, resume=True)


def test_python_api_is_exported():
    assert sl.pipeline.generate is generate


# -- pieces -------------------------------------------------------------------------------------------------
def test_csr_split_and_concat_are_inverse():
    rng = np.random.default_rng(0)
    lengths = [3, 0, 5, 1]
    per_row = rng.integers(0, 4, size=sum(lengths))
    indptr = np.concatenate(([0], np.cumsum(per_row))).astype(np.int64)
    ids = rng.integers(0, 100, size=int(indptr[-1])).astype(np.uint32)
    counts = rng.integers(1, 5, size=ids.size).astype(np.uint8)
    parts = split_csr((ids, counts, indptr), lengths)
    assert [len(p[2]) - 1 for p in parts] == lengths
    joined = concat_csr(parts)
    for a, b in zip(joined, (ids, counts, indptr), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("enabled", [True, False])
def test_write_behind_keeps_order_and_stops_at_the_first_error(enabled):
    done = []

    def task(i):
        def run_task():
            if i == 3:
                raise Boom("task 3")
            done.append(i)
        return run_task

    behind = WriteBehind(enabled=enabled)
    with pytest.raises(Boom, match="task 3"):
        try:
            for i in range(8):
                behind.submit(task(i))
            behind.drain()
        finally:
            behind.stop()
    assert done == [0, 1, 2]  # nothing after the failed task ran, in either mode
    ok = WriteBehind(enabled=enabled)
    for i in range(5):
        ok.submit(lambda i=i: done.append(10 + i))
    ok.drain()
    ok.stop()
    assert done[3:] == [10, 11, 12, 13, 14]


def test_batch_slices_cover_every_batch_once_in_order():
    for batches in (0, 1, 5, 17, 64):
        for world in (1, 2, 3, 8):
            slices = [distributed.batch_slice(batches, r, world) for r in range(world)]
            assert [b for s in slices for b in s] == list(range(batches))
            sizes = [len(s) for s in slices]
            assert max(sizes) - min(sizes) <= 1


class _SameEverywhere:
    """Stands in for torch.distributed when ranks run one after another in this process."""

    def barrier(self, group=None):
        pass

    def all_gather_object(self, out, value, group=None):
        out[:] = [value] * len(out)


def test_ranks_in_turn_equal_one_process_even_with_an_idle_rank(llama, tmp_path):
    """Four ranks, three global batches: rank slices are whole batches in order, one rank gets none and
    writes an empty shard, and the manifest reads as the single-process run."""
    from sparselabels.data.tokens import open_tokens

    tokens = random_tokens(5, 8, seed=3)
    single = run(llama, tokens, tmp_path / "single", batch_size=2)
    loaded = teacher.load_teacher(llama, dtype="float32", device="cpu")
    sampling = gen_module.SamplingOptions(50, 1.0, 0, loaded.vocab_size)
    options = gen_module.RunOptions(batch_size=2, dtype="float32", codec="raw", resume=False, overwrite=False,
                                    progress=False, flush_every=1, chunk_bytes=1 << 20, write_behind=True,
                                    metadata=None, log_interval=60.0)
    out = tmp_path / "multi"
    for rank in (3, 2, 1, 0):  # rank 0 last: it writes the manifest over everyone's shards
        world = distributed.World(rank, 4, 0, group=None, created=False, _torch_dist=_SameEverywhere())
        gen_module._run(loaded, open_tokens(tokens), out, world, sampling, options)
    body = json.loads((out / "manifest.json").read_text())
    assert [s["num_sequences"] for s in body["shards"]] == [0, 2, 2, 1]
    assert_same_labels(read_all(out)[0], read_all(single)[0])


def test_env_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.env_world() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_world() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(SparseLabelsError, match="inconsistent"):
        distributed.env_world()


def test_teacher_fingerprints_follow_the_bytes(llama, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(llama, copy)
    files = teacher.model_files(copy)
    assert [p.name for p in files] == ["config.json", "model.safetensors"]
    assert teacher.files_fingerprint(files) == teacher.files_fingerprint(teacher.model_files(llama))
    (copy / "README.md").write_text("not part of the identity")
    assert teacher.files_fingerprint(teacher.model_files(copy)) == teacher.files_fingerprint(files)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert teacher.files_fingerprint(teacher.model_files(copy)) != teacher.files_fingerprint(
        teacher.model_files(llama))
    model = load_model(llama)
    fp = teacher.state_fingerprint(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1
    assert teacher.state_fingerprint(model) != fp


def test_label_vocab_size_rules():
    assert teacher.label_vocab_size(1024, tokenizer_length=None, vocab_size=None) == 1024
    assert teacher.label_vocab_size(1024, tokenizer_length=1000, vocab_size=None) == 1000
    assert teacher.label_vocab_size(1024, tokenizer_length=1000, vocab_size=1010) == 1010
    with pytest.raises(CompatibilityError, match="tokenizer has 1030"):
        teacher.label_vocab_size(1024, tokenizer_length=1030, vocab_size=None)
    with pytest.raises(InputError):
        teacher.label_vocab_size(1024, tokenizer_length=None, vocab_size=1025)


def test_progress_on_a_terminal_and_in_a_log():
    now = [0.0]
    stream = io.StringIO()
    p = Progress(1000, done=200, stream=stream, tty=True, clock=lambda: now[0])
    now[0] = 2.0
    p.update(400)  # 400 tokens in 2 s of this run: 200 tok/s, 400 left: 2 s
    text = stream.getvalue()
    assert "600/1.00k tokens (60.0%)" in text and "200 tok/s" in text and "ETA 0:00:02" in text and "\r" in text
    p.close()
    assert stream.getvalue().endswith("\n")

    log = io.StringIO()
    p = Progress(1000, stream=log, tty=False, interval=10, clock=lambda: now[0])
    p.update(10)  # too early for a line
    assert log.getvalue() == ""
    now[0] += 11
    p.update(10)
    p.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "20/1.00k tokens (2.0%)" in lines[0]
    assert format_duration(90061) == "1d 1:01:01" and format_duration(float("inf")) == "?"


def test_manifest_lists_the_shard(llama, tmp_path):
    out = run(llama, random_tokens(3, 5), tmp_path / "out", batch_size=2)
    body = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in body["shards"]] == ["shard-00000-of-00001.slbl"]
    assert body["num_positions"] == 15


@pytest.mark.parametrize("codec", [c for c in available_codecs() if c != "raw"])
def test_other_codecs_hold_the_same_labels(llama, tmp_path, codec):
    tokens = random_tokens(4, 12, seed=2)
    raw = read_all(run(llama, tokens, tmp_path / "raw", batch_size=2))
    other = read_all(run(llama, tokens, tmp_path / codec, batch_size=2, codec=codec))
    assert_same_labels(other[0], raw[0])
    assert other[1]["codec"] == codec


@pytest.mark.slow
def test_bench_generate_quick_smoke(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from pipeline_fixtures import subprocess_env

    tool = Path(__file__).resolve().parent.parent / "tools" / "bench_generate.py"
    done = subprocess.run([sys.executable, str(tool), "--quick", "--out", str(tmp_path / "b.json")],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["quick"] and result["machine"]["cores"]
    assert result["medians_s"]["forward"] > 0 and result["tokens_per_s"]["end_to_end"] > 0
    assert set(result["overhead_pct"]) == {"components", "end_to_end", "goal", "forward_sampling_no_writes"}
    assert result["tokens_per_s"]["forward_sampling_no_writes"] > 0
