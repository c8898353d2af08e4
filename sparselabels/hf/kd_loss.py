"""The training loss of a Hugging Face causal LM on a collated sparse-label batch, without ``[tokens x vocab]`` logits.

``kd_loss(model, batch)`` runs the model for its final hidden state (``logits_to_keep`` set to no position, so the
model computes no logits), then :func:`~sparselabels.loss.sparse_kd_loss_from_hidden` applies the LM head chunk
by chunk. It is what :class:`~sparselabels.hf.SparseKDTrainer` computes, usable from Accelerate or any loop.

Which positions count:

* KD: real positions (``attention_mask``) kept by ``loss_mask`` (when the batch has one) that hold labels.
  Position ``t``'s target is the teacher's distribution of token ``t + 1`` (labels are not shifted).
* CE (``ce_weight > 0``): the real next token, ``input_ids[t + 1]``, at kept positions whose next token belongs
  to the same document (not past a document end, not into padding; packed rows end documents where
  ``position_ids`` restart).

The loss is ``kd_weight · (KD summed) / n_kd + ce_weight · (CE summed) / n_ce``: a mean over every counted position,
each term over its own positions. For gradient accumulation and data parallelism pass ``num_items`` =
:func:`count_positions` summed over all micro-batches (and ranks): the accumulated gradient is then that of the
whole batch, every position weighted equally, not a mean of per-batch means.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sparselabels.data.targets import SparseTargets
from sparselabels.errors import InputError
from sparselabels.loss import sparse_kd_loss_from_hidden

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------ batch


def targets_of(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``[B, T, K]`` target ids and weights of a batch: ``target_ids``/``target_weights``, or CSR
    ``targets`` (:class:`~sparselabels.data.SparseTargets`) padded."""
    if "target_ids" in batch and "target_weights" in batch:
        return batch["target_ids"], batch["target_weights"]
    targets = batch.get("targets")
    if isinstance(targets, SparseTargets):
        return targets.to_padded()
    raise InputError(f"the batch holds no targets (keys: {sorted(batch)}); collate it with sparselabels.data")


def _real(batch: dict) -> torch.Tensor:
    if "attention_mask" not in batch:
        raise InputError(f"the batch has no attention_mask (keys: {sorted(batch)})")
    return batch["attention_mask"].bool()


def kd_mask(batch: dict) -> torch.Tensor:
    """bool ``[B, T]``: positions whose KD term counts (real, kept by ``loss_mask``)."""
    mask = _real(batch)
    if batch.get("loss_mask") is not None:
        mask = mask & batch["loss_mask"].bool()
    return mask


def next_token_labels(batch: dict) -> torch.Tensor:
    """int64 ``[B, T]``: ``input_ids[t + 1]`` where the next token is a real token of the same document and
    position ``t`` counts, -100 elsewhere."""
    if "input_ids" not in batch:
        raise InputError("the CE term needs input_ids in the batch (build the dataset with tokens=)")
    ids = batch["input_ids"]
    real = _real(batch)
    has_next = torch.zeros_like(real)
    has_next[:, :-1] = real[:, 1:] & real[:, :-1]
    if batch.get("position_ids") is not None:  # packed rows: a document ends where the positions restart
        pos = batch["position_ids"]
        has_next[:, :-1] &= pos[:, 1:] == pos[:, :-1] + 1
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return torch.where(has_next & kd_mask(batch), labels, torch.full_like(labels, IGNORE_INDEX))


def count_positions(batch: dict) -> torch.Tensor:
    """int64 ``[2]``: (KD positions, CE positions) of a batch; sum it over micro-batches and ranks for ``num_items``.

    A KD position must also hold labels (a position stored empty, as ``generate --mask-column`` writes masked
    ones, adds nothing and is not counted)."""
    targets = batch.get("targets")
    if isinstance(targets, SparseTargets):
        has_labels = targets.labels_per_position() > 0
    else:
        has_labels = (targets_of(batch)[1] != 0).any(-1)
    n_kd = (kd_mask(batch) & has_labels).sum()
    n_ce = (next_token_labels(batch) != IGNORE_INDEX).sum() if "input_ids" in batch else torch.zeros_like(n_kd)
    return torch.stack([n_kd, n_ce]).to(torch.int64)


# ------------------------------------------------------------------------------------------------ model


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP/FSDP-style ``.module`` wrappers and a PEFT wrapper (LoRA layers stay in place)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The ``[V, H]`` LM-head weight (``get_output_embeddings()``); refuses a head with a bias."""
    inner = _unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise InputError(f"{type(inner).__name__} has no output embedding (LM head) with a weight")
    if getattr(head, "bias", None) is not None:
        raise InputError(f"{type(inner).__name__}'s LM head has a bias, which the fused KD loss does not apply")
    return head.weight


def logit_scale(model: torch.nn.Module) -> float:
    """The factor a model applies to ``hidden @ W.T`` to form its logits (Cohere's ``logit_scale``, Granite's and
    MiniCPM3's ``1 / logits_scaling``; 1 for most models). Soft-capped logits (Gemma 2/3) are refused: the fused
    loss works on the linear head only."""
    config = getattr(_unwrap(model), "config", None)
    if config is None:
        return 1.0
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "final_logit_softcapping", None):
        raise InputError(f"{type(_unwrap(model)).__name__} soft-caps its logits (final_logit_softcapping="
                         f"{text.final_logit_softcapping}); the fused KD loss applies a linear LM head only")
    scale = 1.0
    if isinstance(getattr(text, "logit_scale", None), int | float):
        scale *= float(text.logit_scale)
    if isinstance(getattr(text, "logits_scaling", None), int | float) and text.logits_scaling:
        scale /= float(text.logits_scaling)
    return scale


def _model_inputs(model: torch.nn.Module, batch: dict) -> dict[str, Any]:
    if batch.get("input_ids") is None:
        raise InputError("the batch has no input_ids: the student needs the tokens (build the dataset with tokens=)")
    inner = _unwrap(model)
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if batch.get("position_ids") is not None:
        # packed rows: no 2-D mask, so the model builds a block-diagonal causal mask from the restarting positions
        # (eager/sdpa/flex); flash attention takes the varlen boundaries over the flattened rows instead
        kwargs["position_ids"] = batch["position_ids"]
        implementation = str(getattr(getattr(inner, "config", None), "_attn_implementation", ""))
        if "flash" in implementation and batch.get("cu_seq_lens") is not None:
            cu = batch["cu_seq_lens"].to(device=batch["input_ids"].device, dtype=torch.int32)
            kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=int(batch["max_length"]),
                          max_length_k=int(batch["max_length"]))
    else:
        kwargs["attention_mask"] = batch["attention_mask"].long()
    return kwargs


def final_hidden(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``[B, T, H]`` final hidden state (after the last norm), computed without logits.

    The call goes through ``model`` itself (DDP, PEFT wrappers included) with ``logits_to_keep`` selecting no
    position; a model without ``logits_to_keep`` is run through its decoder (``get_decoder()``) instead, which a
    DDP wrapper would not see, so that case refuses DDP."""
    kwargs = _model_inputs(model, batch)
    inner = _unwrap(model)
    if _accepts(inner, "logits_to_keep"):
        empty = torch.empty(0, dtype=torch.long, device=batch["input_ids"].device)
        out = model(**kwargs, logits_to_keep=empty, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or decoder is inner:
        raise InputError(f"{type(inner).__name__} accepts no logits_to_keep and has no decoder to run: the final "
                         "hidden state cannot be had without full logits")
    if model is not inner and not hasattr(model, "get_base_model"):
        raise InputError(f"{type(inner).__name__} accepts no logits_to_keep; running its decoder directly would "
                         f"bypass the {type(model).__name__} wrapper")
    return decoder(**kwargs, return_dict=True).last_hidden_state


# ------------------------------------------------------------------------------------------------ loss


def _check_weights(kd_weight: float, ce_weight: float) -> tuple[float, float]:
    try:
        kd, ce = float(kd_weight), float(ce_weight)
    except (TypeError, ValueError):
        raise InputError(f"kd_weight and ce_weight must be numbers, got {kd_weight!r} and {ce_weight!r}") from None
    if not (kd >= 0 and ce >= 0) or kd + ce == 0 or not torch.isfinite(torch.tensor(kd + ce)):
        raise InputError(f"kd_weight and ce_weight must be finite, >= 0 and not both 0, got {kd_weight!r}, "
                         f"{ce_weight!r}")
    return kd, ce


def kd_loss(
    model: torch.nn.Module,
    batch: dict,
    *,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    num_items: torch.Tensor | tuple[int, int] | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``kd_weight · KD + ce_weight · CE`` of ``model`` on a collated batch (see the module docstring).

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel``), possibly PEFT- or DDP-wrapped.
        batch: from :func:`sparselabels.data.collate` / a packed collator, on the model's device.
        kd_weight, ce_weight: the two terms' weights (``ce_weight`` > 0 needs ``input_ids``).
        temperature: divides the student logits of the KD term (no T² factor).
        num_items: (KD positions, CE positions) to divide by, e.g. :func:`count_positions` summed over the
            micro-batches of an accumulated step; default: this batch's own counts.
        chunk_size, backend: passed to :func:`~sparselabels.loss.sparse_kd_loss_from_hidden`.
    """
    kd_w, ce_w = _check_weights(kd_weight, ce_weight)
    targets = batch.get("targets")
    # CSR targets go to the loss as they are: it reads them chunk by chunk, never padded to K
    target_args = (targets, None) if isinstance(targets, SparseTargets) else targets_of(batch)
    mask = kd_mask(batch)
    counts = count_positions(batch) if num_items is None else torch.as_tensor(num_items)
    counts = counts.to(device=mask.device, dtype=torch.float64).reshape(-1)
    if counts.shape[0] != 2:
        raise InputError(f"num_items must be (KD positions, CE positions), got {num_items!r}")
    labels = next_token_labels(batch) if ce_w > 0 else None
    hidden = final_hidden(model, batch)
    weight = lm_head_weight(model)
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    scale = logit_scale(model)
    if scale != 1.0:  # logits = scale * (hidden @ W.T) = (scale * hidden) @ W.T
        hidden = hidden * scale
    # per-term scales: kd_w / n_kd on KD sums, ce_w / n_ce on CE sums (a term without positions adds nothing)
    kd_scale = kd_w / counts[0].clamp(min=1)
    ce_scale = ce_w / counts[1].clamp(min=1) if ce_w > 0 else torch.zeros((), dtype=torch.float64,
                                                                           device=counts.device)
    kd_s, ce_s = torch.stack([kd_scale, ce_scale]).tolist()  # one device sync, not two
    total = kd_s + ce_s
    alpha = ce_s / total
    loss = sparse_kd_loss_from_hidden(
        hidden, weight, *target_args, labels=labels, ce_weight=alpha, chunk_size=chunk_size,
        temperature=temperature, mask=mask, reduction="sum", backend=backend,
    )
    return loss * total
