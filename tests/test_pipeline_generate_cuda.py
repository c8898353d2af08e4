"""``generate`` on a GPU: bf16 and fp32 teachers, the Triton sampler, write-behind; labels equal
``sample_counts`` on the teacher's own CUDA logits, and an interrupted run resumes byte for byte."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from pipeline_fixtures import assert_same_labels, random_tokens, read_all, run_key, tiny_llama

import sparselabels as sl
from sparselabels.pipeline.generate import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
gen_module = importlib.import_module("sparselabels.pipeline.generate")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


def cuda_reference(model_dir, sequences, *, dtype, batch_size, seed, vocab_size):
    """The same global batches through the model on the GPU, then ``sample_counts`` per sequence there."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to("cuda").eval()
    out, position, key = [], 0, run_key(seed, sequences)
    for lo in range(0, len(sequences), batch_size):
        batch = sequences[lo : lo + batch_size]
        longest = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.int64)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        with torch.inference_mode():
            logits = model(input_ids=ids.cuda(), use_cache=False).logits
        for b, s in enumerate(batch):
            n = len(s)
            labels = sl.sample_counts(logits[b, :n], 50, seed=key, vocab_size=vocab_size,
                                      row_ids=torch.arange(position, position + n, device="cuda"))
            out.append(labels.numpy())
            position += n
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_labels_equal_sample_counts_on_cuda_logits(llama, tmp_path, dtype):
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 1000, size=n) for n in (64, 64, 40, 64, 17, 64, 64)]
    out = generate(llama, seqs, tmp_path / "out", dtype=dtype, device="cuda", batch_size=3, seed=5, progress=False)
    got, meta = read_all(out)
    assert meta["generation"]["teacher_dtype"] == dtype and meta["vocab_size"] == 1000
    assert_same_labels(got, cuda_reference(llama, seqs, dtype=dtype, batch_size=3, seed=5, vocab_size=1000))
    again = generate(llama, seqs, tmp_path / "again", dtype=dtype, device="cuda", batch_size=3, seed=5,
                     progress=False, max_rows=50, write_behind=False)
    name = "shard-00000-of-00001.slbl"
    assert (out / name).read_bytes() == (again / name).read_bytes()


def test_cuda_interrupted_run_resumes_byte_identical(llama, tmp_path, monkeypatch):
    tokens = random_tokens(20, 48, seed=2)
    kw = {"dtype": "bfloat16", "device": "cuda", "batch_size": 4, "seed": 1, "progress": False,
          "flush_every": 2, "chunk_bytes": 6000}
    clean = generate(llama, tokens, tmp_path / "clean", **kw)
    real = gen_module.label_sequences
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_module, "label_sequences", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(llama, tokens, tmp_path / "resumed", **kw)
    monkeypatch.setattr(gen_module, "label_sequences", real)
    generate(llama, tokens, tmp_path / "resumed", resume=True, **kw)
    for name in ("shard-00000-of-00001.slbl", "manifest.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (clean / name).read_bytes()
