"""Distill into a Hugging Face student with ``transformers.Trainer``: packed rows, response-only loss mask.

    # standalone: a tiny chat-like corpus, labeled by a random tiny teacher, then a tiny Llama student
    python examples/hf_trainer.py --quick
    # your own store: the labels from `sparselabels generate --mask-column labels`, and the same datasets directory
    python examples/hf_trainer.py --labels run/labels --tokens run/chat --student path/to/student

The corpus is a ``datasets`` directory with ``input_ids`` and ``labels`` (-100 on the prompt, as chat templates
produce). ``generate --mask-column labels`` labels only the response positions (the teacher reads the whole
conversation); training reads the same column as the loss mask, packs whole conversations into rows of
``--seq-len`` positions, and trains with ``SparseKDTrainer`` and default ``TrainingArguments`` otherwise.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainingArguments

import sparselabels as sl
from sparselabels.data import PackedDataset, SparseLabelDataset
from sparselabels.hf import SparseKDTrainer, kd_loss


def tiny_llama(vocab_size: int, hidden: int, seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(config).float()


def build_chat_store(directory: Path, *, vocab_size: int = 512, conversations: int = 64) -> tuple[Path, Path]:
    """Random conversations (a prompt, then a response that is trained), labeled by a random tiny teacher."""
    import datasets

    rng = np.random.default_rng(0)
    input_ids, labels = [], []
    for _ in range(conversations):
        prompt, response = int(rng.integers(8, 40)), int(rng.integers(8, 60))
        tokens = rng.integers(3, vocab_size, size=prompt + response)
        input_ids.append(tokens.tolist())
        labels.append([-100] * prompt + tokens[prompt:].tolist())
    chat = directory / "chat"
    datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels}).save_to_disk(str(chat))
    teacher = tiny_llama(vocab_size, hidden=64, seed=1)
    sl.generate(teacher, chat, directory / "labels", dtype="float32", device="cpu", batch_size=16, overwrite=True,
                progress=False, mask_column="labels")
    return directory / "labels", chat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, help="label store (default: build a tiny one)")
    parser.add_argument("--tokens", type=Path, help="the datasets directory the labels were computed from")
    parser.add_argument("--student", default=None, help="student model directory (default: a tiny random Llama)")
    parser.add_argument("--out", type=Path, default=None, help="Trainer output directory (default: a temp dir)")
    parser.add_argument("--seq-len", type=int, default=128, help="packed row length (default 128)")
    parser.add_argument("--ce-weight", type=float, default=0.0, help="mix in cross-entropy on the next token")
    parser.add_argument("--epochs", type=float, default=None, help="epochs (default 3; 2 with --quick)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 5e-5; 3e-3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a tiny corpus and student, a minute on a CPU")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="hf_trainer-"))
    out.mkdir(parents=True, exist_ok=True)
    if (args.labels is None) != (args.tokens is None):
        parser.error("give both --labels and --tokens, or neither (to build a tiny store)")
    labels, tokens = (args.labels, args.tokens) if args.labels else build_chat_store(out)

    documents = SparseLabelDataset(labels, tokens, mask_column="labels")  # labels -100 -> not trained
    packed = PackedDataset(documents, seq_len=args.seq_len)
    print(f"{len(documents)} conversations in {len(packed)} rows of {args.seq_len}: "
          f"packing efficiency {packed.efficiency:.1%}")
    student = (AutoModelForCausalLM.from_pretrained(args.student) if args.student
               else tiny_llama(documents.vocab_size, hidden=64, seed=0))
    training = TrainingArguments(output_dir=str(out / "trainer"), num_train_epochs=args.epochs or (2 if args.quick
                                 else 3), learning_rate=args.lr or (3e-3 if args.quick else 5e-5),
                                 per_device_train_batch_size=4, logging_steps=5, save_strategy="no",
                                 report_to="none")
    trainer = SparseKDTrainer(model=student, args=training, train_dataset=packed, ce_weight=args.ce_weight)
    # on the device Trainer placed the student on (a GPU when there is one)
    probe = trainer.data_collator([packed[i] for i in range(min(4, len(packed)))]).to(trainer.args.device)
    with torch.no_grad():
        before = kd_loss(student.eval(), probe, ce_weight=args.ce_weight).item()
    trainer.train()
    with torch.no_grad():
        after = kd_loss(student.eval(), probe, ce_weight=args.ce_weight).item()
    print(f"KD loss on the first rows: {before:.4f} -> {after:.4f}")


if __name__ == "__main__":
    main()
