"""Shared pieces of the Hugging Face training tests: a small label store (synthetic teacher, real file), its
tokens, tiny random Llama students, and the float64 dense reference loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparselabels.io.writer import LabelWriter
from sparselabels.synthetic import TeacherModel, sample_labels, split_sequences

VOCAB = 96


def build_store(path: Path, lengths, *, vocab: int = VOCAB, rounds: int = 16, seed: int = 0,
                fingerprints: bool = True) -> tuple[Path, list[np.ndarray]]:
    """A label file of ``len(lengths)`` sequences drawn from the synthetic teacher, and random tokens for them."""
    from sparselabels.format.fingerprint import input_fingerprint

    lengths = np.asarray(lengths, dtype=np.int64)
    ids, counts, indptr, seq_lengths = sample_labels(len(lengths), lengths, rounds,
                                                     model=TeacherModel(vocab_size=vocab, seed=seed))
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, vocab, size=int(n), dtype=np.int64) for n in lengths]
    with LabelWriter(path, vocab_size=vocab, rounds=rounds) as writer:
        for (i, c, p), tok in zip(split_sequences(ids, counts, indptr, seq_lengths), tokens, strict=True):
            writer.write(i, c, p, fingerprint=input_fingerprint(tok) if fingerprints else None)
    return path, tokens


def tiny_student(vocab: int = VOCAB, *, seed: int = 0, hidden: int = 32, dtype=torch.float32, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, attn_implementation=attn)
    return LlamaForCausalLM(config).to(dtype)


def dense_reference(model, batch: dict, *, kd_weight: float = 1.0, ce_weight: float = 0.0) -> torch.Tensor:
    """The obvious loss in float64: full logits, log-softmax, KL at every counted position, CE on the next token
    of the same sequence; each term a mean over its own positions. Unpacked batches only."""
    import copy

    m = copy.deepcopy(model).double()
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    logp = torch.log_softmax(m(input_ids=ids, attention_mask=mask.long()).logits.double(), -1)
    keep = mask & batch["loss_mask"].bool() if "loss_mask" in batch else mask
    target_ids, w = batch["targets"].to_padded() if "targets" in batch else (batch["target_ids"],
                                                                               batch["target_weights"])
    w = w.double()
    has = (w != 0).any(-1)
    kl = (torch.xlogy(w, w) - w * logp.gather(-1, target_ids)).sum(-1)
    kd = kl[keep & has].sum() / (keep & has).sum()
    total = kd_weight * kd
    if ce_weight:
        nxt = torch.zeros_like(mask)
        nxt[:, :-1] = mask[:, 1:]
        sel = keep & nxt
        ce = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0][sel[:, :-1]]
        total = total + ce_weight * ce.sum() / sel.sum()
    return total
