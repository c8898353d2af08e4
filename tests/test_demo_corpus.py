"""Small tests of the demo corpus (stdlib sources + BPE tokenizer) and the tiny-model helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparselabels.demo import corpus as C
from sparselabels.demo import models as M
from sparselabels.errors import InputError
from sparselabels.loss import sparse_kd_loss_from_hidden


def test_stdlib_files_in_fixed_order_capped_and_split_stably():
    files = C.list_stdlib_files(max_bytes=300_000)
    paths = [f.relative_path for f in files]
    assert len(set(paths)) == len(paths) and len({p.split("/")[0] for p in paths}) > 3  # spread over the library
    assert sum(f.size for f in files) <= 300_000 or len(files) == 1
    assert not any(set(p.split("/")) & C.EXCLUDED_PARTS for p in paths)
    assert any(f.heldout for f in files) and not all(f.heldout for f in files)
    # A file's split does not move with the cap (50%: no risk of the tiny-cap rule holding out the last file).
    small = C.list_stdlib_files(max_bytes=300_000, heldout_percent=50)
    bigger = C.list_stdlib_files(max_bytes=600_000, heldout_percent=50)
    assert [f.relative_path for f in bigger[: len(small)]] == [f.relative_path for f in small]
    assert [f.heldout for f in bigger[: len(small)]] == [f.heldout for f in small]
    assert C.list_stdlib_files(max_bytes=300_000) == files
    with pytest.raises(InputError, match="heldout_percent"):
        C.list_stdlib_files(heldout_percent=100)


def test_tokenizer_is_deterministic_and_lossless():
    texts = C.read_texts(C.list_stdlib_files(max_bytes=150_000))
    first = C.train_tokenizer(texts, vocab_size=400)
    second = C.train_tokenizer(texts, vocab_size=400)
    assert first.to_str() == second.to_str()
    assert first.get_vocab_size() == 400
    assert first.token_to_id(C.END_OF_TEXT) == 0
    sample = "def f(x):\n    return x ** 2  # ünïcødé\n"
    assert first.decode(first.encode(sample).ids) == sample
    ids = C.encode_documents(first, ["a = 1", "b = 2"])
    assert ids.dtype == np.int32 and (ids == 0).sum() == 2 and ids[-1] == 0
    with pytest.raises(InputError, match="vocab_size"):
        C.train_tokenizer(texts, vocab_size=100)


def test_load_corpus_caches(tmp_path, monkeypatch):
    corpus = C.load_corpus(cache_dir=tmp_path, max_bytes=120_000, vocab_size=300)
    assert corpus.vocab_size == 300 and corpus.eos_id == 0
    assert corpus.train_ids.dtype == np.int32 and len(corpus.train_ids) > 1000
    assert len(corpus.heldout_ids) > 0
    assert int(corpus.train_ids.max()) < 300
    assert (tmp_path / f"corpus-{corpus.fingerprint}" / "tokenizer.json").is_file()
    monkeypatch.setattr(C, "read_texts", lambda *a, **k: pytest.fail("the cache was not used"))
    again = C.load_corpus(cache_dir=tmp_path, max_bytes=120_000, vocab_size=300)
    assert np.array_equal(again.train_ids, corpus.train_ids)
    assert np.array_equal(again.heldout_ids, corpus.heldout_ids)
    assert again.tokenizer.to_str() == corpus.tokenizer.to_str()
    other = C.corpus_fingerprint(corpus.files, 301)
    assert other != corpus.fingerprint


@pytest.mark.parametrize("make_config", [M.llama_config, M.gpt2_config])
def test_tiny_models_build_train_and_expose_the_lm_head(make_config):
    config = make_config(64, hidden_size=16, num_layers=1, num_heads=2)
    model = M.build_model(config, seed=3)
    same = M.build_model(config, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert M.count_parameters(model) > 0
    ids = np.arange(2000, dtype=np.int32) % 64
    settings = M.TrainSettings(steps=3, batch_size=2, seq_len=16, warmup_steps=1)
    log_a = M.train(model, ids, settings)
    log_b = M.train(same, ids, settings)
    assert log_a.losses == log_b.losses and len(log_a.losses) == 3
    batch = M.fixed_windows(ids, batch_size=2, seq_len=16, count=1, seed=0)[0]
    with torch.no_grad():
        logits = model(input_ids=batch).logits
        hidden = M.final_hidden_states(model, batch)
    torch.testing.assert_close(hidden @ M.lm_head_weight(model).t(), logits, rtol=1e-5, atol=1e-5)
    # The hooks the fused loss needs work with autograd through the whole model.
    targets = batch.roll(-1, dims=1).unsqueeze(-1)
    loss = sparse_kd_loss_from_hidden(M.final_hidden_states(model, batch), M.lm_head_weight(model), targets,
                                      torch.ones(targets.shape), chunk_size=8)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert M.evaluate_loss(model, [batch]) > 0


def test_train_or_load_caches(tmp_path):
    config = M.llama_config(64, hidden_size=16, num_layers=1, num_heads=2)
    ids = np.arange(1000, dtype=np.int32) % 64
    settings = M.TrainSettings(steps=2, batch_size=2, seq_len=16, warmup_steps=1)
    model, record = M.train_or_load(config, ids, settings, cache_dir=tmp_path, tag="t")
    assert record["cached"] is False
    loaded, loaded_record = M.train_or_load(config, ids, settings, cache_dir=tmp_path, tag="t")
    assert loaded_record["cached"] is True
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    with pytest.raises(InputError, match="seq_len"):
        next(M.random_windows(ids[:10], batch_size=1, seq_len=16, seed=0))
