"""Shared pieces of the pipeline tests: tiny random teachers, token data, the obvious reference labeler, and
how to run the ``sparselabels`` command in a subprocess. Nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import sparselabels as sl


def tiny_llama(path: Path, *, output_size: int = 1024, tokenizer_tokens: int | None = 1000, seed: int = 0,
               max_positions: int = 512) -> Path:
    """A 2-layer Llama (hidden 64) saved with safetensors; with a WordLevel tokenizer of ``tokenizer_tokens``
    tokens, so the output layer is padded beyond the tokenizer when ``tokenizer_tokens < output_size``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=output_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    _spread_logits(model)
    model.save_pretrained(path)
    if tokenizer_tokens is not None:
        save_tokenizer(path, tokenizer_tokens)
    return path


def tiny_gpt2(path: Path, *, vocab: int = 1000, seed: int = 1, n_positions: int = 512) -> Path:
    """A 2-layer GPT-2 (hidden 64), no tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=n_positions, bos_token_id=1,
                        eos_token_id=2)
    model = GPT2LMHeadModel(config)
    _spread_logits(model)
    model.save_pretrained(path)
    return path


def config_only_model(path: Path, *, n_positions: int = 16, vocab: int = 1000) -> Path:
    """A GPT-2 directory whose config is real but whose weight file is garbage: anything that loads the weights
    fails, so an error about the inputs from it proves the inputs were checked before the weights loaded."""
    from transformers import GPT2Config

    GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=n_positions).save_pretrained(path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return path


def _spread_logits(model) -> None:
    """Random init gives near-uniform next-token distributions; sharpen them so labels look like real ones
    (a dozen or so distinct ids per position rather than ~50)."""
    with torch.no_grad():
        head = model.get_output_embeddings()
        if head.weight is model.get_input_embeddings().weight:  # tied (GPT-2): scale the final norm instead
            norm = model.transformer.ln_f
            norm.weight.mul_(14.0)
        else:
            head.weight.mul_(28.0)


def save_tokenizer(path: Path, tokens: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(tokens)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)


def random_tokens(num: int, length: int, *, vocab: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(num, length), dtype=np.int64)


def load_model(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def run_key(seed: int, sequences) -> int:
    """The Philox key generate uses for ``sequences`` labeled with ``seed``: derived from the seed and the
    source's fingerprint."""
    from sparselabels.data.identity import source_fingerprint
    from sparselabels.sampling.rng import stream_key

    return stream_key(seed, source_fingerprint(sl.data.open_tokens(sequences)))


def reference_labels(model, sequences, *, batch_size: int, seed: int, rounds: int = 50, temperature: float = 1.0,
                     vocab_size: int | None = None, key: int | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The obvious labeler: the same global batches (right-padded with 0), the model's own logits, then
    ``sample_counts`` one sequence at a time with row ids = global position, keyed by the run's stream key
    (``key``; default: the one generate derives for an indexed source)."""
    key = run_key(seed, [np.asarray(s) for s in sequences]) if key is None else key
    out = []
    position = 0
    for lo in range(0, len(sequences), batch_size):
        batch = [np.asarray(s, dtype=np.int64) for s in sequences[lo : lo + batch_size]]
        longest = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.int64)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = torch.from_numpy(s)
        with torch.no_grad():
            logits = model(input_ids=ids).logits if longest else None
        for b, s in enumerate(batch):
            n = len(s)
            if n == 0:
                out.append((np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64)))
                continue
            labels = sl.sample_counts(logits[b, :n], rounds, temperature=temperature, vocab_size=vocab_size,
                                      seed=key, row_ids=torch.arange(position, position + n))
            out.append(labels.numpy())
            position += n
    return out


def read_all(path) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, int | None]], dict]:
    """Every sequence of a label file, manifest or directory (copied out), and the metadata."""
    with sl.open_labels(path) as f:
        return [(s.ids.copy(), s.counts.copy(), s.indptr.copy(), s.fingerprint) for s in f], dict(f.metadata)


def assert_same_labels(got, expected) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        for name, a, b in zip(("ids", "counts", "indptr"), g[:3], e[:3], strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"sequence {i}: {name} differ"


def cli() -> list[str]:
    """The installed ``sparselabels`` command (beside this interpreter)."""
    found = shutil.which("sparselabels", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "sparselabels.cli.main"]


def subprocess_env() -> dict[str, str]:
    """One thread per process: the CI machine is small and shared, and it keeps matmuls identical across runs."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    return env
