"""One SGD step of SparseKDTrainer, run alone or under ``torchrun`` (gloo, CPU); saves the step's gradient.

``python hf_ddp_worker.py DIR PER_DEVICE ACCUMULATION``: builds the same small store in every process, trains one
step at learning rate 1 and writes ``DIR/grad-<rank>.pt`` (initial minus final parameters)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hf_fixtures import build_store, tiny_student
from transformers import TrainingArguments

from sparselabels.data import SparseLabelDataset
from sparselabels.hf import SparseKDTrainer

LENGTHS = [13, 7, 16, 9, 11, 5, 14, 8]


def main() -> None:
    out, per_device, accumulation = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    path, tokens = build_store(out / f"labels-{rank}.slbl", LENGTHS)
    dataset = SparseLabelDataset(path, tokens)
    model = tiny_student(seed=0)
    args = TrainingArguments(output_dir=str(out / f"run-{rank}"), per_device_train_batch_size=per_device,
                             gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1.0, optim="sgd",
                             lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, seed=0,
                             save_strategy="no", report_to="none", use_cpu=True,
                             ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None)
    before = [p.detach().clone() for p in model.parameters()]
    SparseKDTrainer(model=model, args=args, train_dataset=dataset, ce_weight=0.3).train()
    grads = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    torch.save(grads, out / f"grad-{rank}.pt")
    if torch.distributed.is_initialized():  # gloo's threads must stop before exit (else: an abort at shutdown)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
