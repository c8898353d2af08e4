"""Tiny Hugging Face causal LMs from configs (random init, nothing downloaded) and a small deterministic CPU trainer.

Used by the demos and experiments to make a teacher and students in minutes on two CPU cores::

    corpus = load_corpus(cache_dir=cache)
    teacher, record = train_or_load(llama_config(corpus.vocab_size, hidden_size=256, num_layers=4),
                                    corpus.train_ids, TrainSettings(steps=300), cache_dir=cache, tag=corpus.fingerprint)
    student = build_model(gpt2_config(corpus.vocab_size), seed=1)
    train(student, corpus.train_ids, TrainSettings(steps=200), loss_fn=my_kd_loss)

Models are ordinary ``AutoModelForCausalLM`` instances (``save_pretrained`` / ``from_pretrained`` work). The
trainer is deterministic for a given seed, thread count and torch build: batches are drawn from a seeded numpy
generator, dropout is off in the configs built here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel

from sparselabels.errors import InputError

#: loss_fn(model, input_ids [B, S] int64, step) -> scalar loss. The default is next-token cross-entropy.
LossFn = Callable[[PreTrainedModel, torch.Tensor, int], torch.Tensor]


def llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    tie_embeddings: bool = True,
) -> LlamaConfig:
    """A Llama-style config (RoPE, RMSNorm, SwiGLU); intermediate size defaults to ~8/3 · hidden, rounded to 16."""
    if intermediate_size is None:
        intermediate_size = 16 * math.ceil(hidden_size * 8 / 3 / 16)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def gpt2_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
) -> GPT2Config:
    """A GPT-2-style config (learned positions, LayerNorm, GELU MLP, tied embeddings), dropout off."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=max_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_model(config: PretrainedConfig, *, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised ``AutoModelForCausalLM`` for ``config`` (initialisation seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # A copy: saving a model writes fields (architectures, dtype) into its config, the caller's stays as given.
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")
    return model.float()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def final_hidden_states(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads, ``[B, S, H]`` (for losses fused with the LM head)."""
    return model.base_model(input_ids=input_ids).last_hidden_state


def lm_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The LM head's ``[V, H]`` weight (the tied embedding when embeddings are tied)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise InputError("the model's LM head must be a bias-free linear layer")
    return head.weight


def random_windows(ids: np.ndarray, *, batch_size: int, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless ``[batch_size, seq_len]`` int64 batches of windows at seeded random offsets into ``ids``."""
    ids = _check_ids(ids, seq_len)
    generator = np.random.default_rng(seed)
    while True:
        starts = generator.integers(0, len(ids) - seq_len + 1, size=batch_size)
        yield torch.from_numpy(np.stack([ids[s : s + seq_len] for s in starts]).astype(np.int64))


def fixed_windows(ids: np.ndarray, *, batch_size: int, seq_len: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` batches from :func:`random_windows` (the same ones for the same seed), e.g. for evaluation."""
    windows = random_windows(ids, batch_size=batch_size, seq_len=seq_len, seed=seed)
    return [next(windows) for _ in range(count)]


def causal_lm_loss(model: PreTrainedModel, input_ids: torch.Tensor, step: int = 0) -> torch.Tensor:
    """Next-token cross-entropy (Hugging Face shifts the labels inside the model)."""
    return model(input_ids=input_ids, labels=input_ids).loss


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of :func:`train`; part of the cache key in :func:`train_or_load`."""

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Optimizer:
    """AdamW with linear warm-up and cosine decay over ``settings.steps`` steps (the teacher's and the students'
    trainer): ``step(loss)`` backpropagates ``loss``, clips the gradient and takes one step."""

    def __init__(self, model: torch.nn.Module, settings: TrainSettings) -> None:
        self._parameters = list(model.parameters())
        self._settings = settings
        self._adamw = torch.optim.AdamW(self._parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        self._schedule = torch.optim.lr_scheduler.LambdaLR(self._adamw, lambda step: _lr_factor(step, settings))

    def step(self, loss: torch.Tensor) -> None:
        self._adamw.zero_grad(set_to_none=True)
        loss.backward()
        if self._settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._parameters, self._settings.grad_clip)
        self._adamw.step()
        self._schedule.step()


def train(
    model: PreTrainedModel,
    ids: np.ndarray,
    settings: TrainSettings,
    *,
    loss_fn: LossFn = causal_lm_loss,
    log_every: int = 0,
    device: str | torch.device | None = None,
) -> TrainLog:
    """AdamW with linear warm-up and cosine decay over ``settings.steps`` steps on random windows of ``ids``.

    ``device``: move the model there and train on it (default: wherever the model already is).
    """
    if settings.steps < 1:
        raise InputError(f"steps must be >= 1, got {settings.steps}")
    if device is not None:
        model.to(device)
    where = next(model.parameters()).device
    model.train()
    optimizer = Optimizer(model, settings)
    batches = random_windows(ids, batch_size=settings.batch_size, seq_len=settings.seq_len, seed=settings.seed)
    log = TrainLog()
    start = time.perf_counter()
    for step in range(settings.steps):
        loss = loss_fn(model, next(batches).to(where), step)
        optimizer.step(loss)
        log.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = log.losses[-log_every:]
            print(f"  step {step + 1}/{settings.steps}: loss {sum(recent) / len(recent):.3f}", flush=True)
    log.seconds = time.perf_counter() - start
    model.eval()
    return log


@torch.no_grad()
def evaluate_loss(model: PreTrainedModel, batches: list[torch.Tensor]) -> float:
    """Mean next-token cross-entropy over ``batches`` (nats per token)."""
    model.eval()
    losses = [float(causal_lm_loss(model, batch)) for batch in batches]
    return sum(losses) / len(losses)


def train_or_load(
    config: PretrainedConfig,
    ids: np.ndarray,
    settings: TrainSettings,
    *,
    cache_dir: str | Path | None,
    tag: str = "",
    init_seed: int = 0,
    log_every: int = 0,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, dict]:
    """Train a model with the default CE loss, or load the one trained before with the same inputs.

    The cache key hashes the config, the settings, ``init_seed``, the torch version and ``tag`` (pass the corpus
    fingerprint). Returns the model (in eval mode) and its record (settings, parameter count, losses, seconds).
    ``device`` (default CPU) is where it trains and is returned; a device other than the CPU is part of the key,
    since the arithmetic, and so the weights, differ.
    """
    device = torch.device(device if device is not None else "cpu")
    key = _cache_key(config, settings, init_seed, tag, device)
    entry = Path(cache_dir).expanduser() / f"model-{key}" if cache_dir is not None else None
    if entry is not None and (entry / "record.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(entry, attn_implementation="sdpa").float().to(device)
        model.eval()
        return model, json.loads((entry / "record.json").read_text())
    model = build_model(config, seed=init_seed)
    log = train(model, ids, settings, log_every=log_every, device=device)
    record = {
        "settings": asdict(settings),
        "init_seed": init_seed,
        "parameters": count_parameters(model),
        "final_train_loss": sum(log.losses[-20:]) / len(log.losses[-20:]),
        "seconds": log.seconds,
        "cached": False,
    }
    if entry is not None:
        staging = entry.with_name(entry.name + f".tmp-{id(model):x}")
        model.save_pretrained(staging)
        (staging / "record.json").write_text(json.dumps({**record, "cached": True}, indent=2))
        try:
            staging.rename(entry)
        except OSError:  # someone else finished the same entry first
            shutil.rmtree(staging)
    return model, record


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _cache_key(config: PretrainedConfig, settings: TrainSettings, init_seed: int, tag: str,
               device: torch.device | None = None) -> str:
    description = {
        "config": json.loads(config.to_json_string(use_diff=False)),
        "settings": asdict(settings),
        "init_seed": init_seed,
        "torch": torch.__version__.split("+")[0],
        "tag": tag,
    }
    if device is not None and device.type != "cpu":  # CPU keys name no device (the cache key of a CPU teacher)
        description["device"] = device.type
    for volatile in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
        description["config"].pop(volatile, None)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _check_ids(ids: np.ndarray, seq_len: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
    if seq_len < 1 or len(ids) < seq_len:
        raise InputError(f"need at least seq_len={seq_len} tokens, got {len(ids)}")
    return ids

