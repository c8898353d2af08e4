"""``SparseKDTrainer``: Hugging Face ``Trainer`` that distills from a sparse-label store.

It differs from ``Trainer`` in three places only:

* **data**: the default collator is the library's (CSR targets; packed rows for a
  :class:`~sparselabels.data.PackedDataset`), and items reach it whole whatever ``remove_unused_columns`` says
  (the teacher's targets are not arguments of ``model.forward``, and dropping them silently is the failure this
  class exists to prevent);
* **loss**: :func:`~sparselabels.hf.kd_loss` on the final hidden state and the LM head (never ``[tokens x vocab]``
  logits), ``kd_weight · KD + ce_weight · CE``;
* **accumulation**: each optimizer step divides by the positions of the *whole* step, counted over all its
  micro-batches and, under DDP, all ranks (``num_items_in_batch`` holds the two counts), so every position weighs
  the same however the step is split.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from sparselabels.data import SparseLabelCollator, SparseLabelDataset, SparseTargets
from sparselabels.data.packing import PackedDataset
from sparselabels.errors import InputError
from sparselabels.hf.kd_loss import count_positions, kd_loss
from sparselabels.options import check_temperature


def default_collator(dataset: Any, pad_token_id: int = 0, layout: str = "csr"):
    """The library's collator for ``dataset``: packed rows for a PackedDataset, one sequence per row otherwise;
    CSR targets by default (~5 bytes per label in the batch, read chunk by chunk by the fused loss)."""
    if isinstance(dataset, PackedDataset):
        return dataset.collator(pad_token_id=pad_token_id, layout=layout)
    return SparseLabelCollator(pad_token_id=pad_token_id, layout=layout)


class SparseKDTrainer(Trainer):
    """``Trainer(model, args, ...)`` plus ``kd_weight`` (1.0), ``ce_weight`` (0.0) and ``temperature`` (1.0).

    Train from a :class:`~sparselabels.data.SparseLabelDataset` (with ``tokens=``) or a
    :class:`~sparselabels.data.PackedDataset`; the default ``TrainingArguments`` work as they are. Works with
    PEFT (LoRA) models and under ``torchrun`` (DDP).
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None, *rest: Any,
                 kd_weight: float = 1.0, ce_weight: float = 0.0, temperature: float = 1.0, **kwargs: Any) -> None:
        from sparselabels.hf.kd_loss import _check_weights

        self.kd_weight, self.ce_weight = _check_weights(kd_weight, ce_weight)
        self.temperature = check_temperature(temperature)
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            inner = getattr(dataset, "dataset", dataset)  # a PackedDataset's documents
            if isinstance(inner, SparseLabelDataset) and inner.tokens is None:
                raise InputError(f"{name} {inner!r} has labels but no tokens; the student needs its input ids: "
                                 "SparseLabelDataset(labels, tokens)")
        if data_collator is None:
            data_collator = default_collator(train_dataset if train_dataset is not None else eval_dataset)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, *rest, **kwargs)
        if self.args.n_gpu > 1:
            raise InputError(f"{self.args.n_gpu} GPUs in one process (torch.nn.DataParallel) are not supported; "
                             "run one process per GPU with torchrun (DDP)")
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the whole step's positions itself

    # -- data: nothing is removed from the items or the batch -----------------------------------------------
    def _remove_unused_columns(self, dataset, description: str | None = None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description: str | None = None):
        return data_collator

    def _prepare_input(self, data):
        """Tensors as Trainer moves them, and CSR targets (not a tensor, so Trainer would leave them behind)."""
        if isinstance(data, SparseTargets):
            return data.to(self.args.device)
        return super()._prepare_input(data)

    # -- accumulation ----------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """(KD positions, CE positions) over all micro-batches of the step, summed over the ranks."""
        if not batch_samples:
            return None
        counts = sum(count_positions(batch) for batch in batch_samples).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The KD (+ CE) loss of one micro-batch, a share of the whole step's mean (see the module docstring)."""
        if num_items_in_batch is not None and not (torch.is_tensor(num_items_in_batch)
                                                   and num_items_in_batch.numel() == 2):
            num_items_in_batch = None  # a count from elsewhere (e.g. Trainer's evaluation): this batch's own
        loss = kd_loss(model, inputs, kd_weight=self.kd_weight, ce_weight=self.ce_weight,
                       temperature=self.temperature, num_items=num_items_in_batch)
        if num_items_in_batch is not None and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages gradients over ranks; the counts are global
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Evaluation: the loss only (no logits are ever materialised)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = kd_loss(model, inputs, kd_weight=self.kd_weight, ce_weight=self.ce_weight,
                           temperature=self.temperature)
        return loss.detach(), None, None
