"""Train a Hugging Face student from a label store: DataLoader workers, a resumable sampler, the fused KD loss.

    # labels and tokens from `sparselabels generate` (or from `sparselabels demo`):
    python examples/train_student.py --labels sparselabels-demo/labels-rskd --tokens sparselabels-demo/tokens.npy
    # standalone: builds a tiny store first (random teacher, random tokens), then trains a few steps
    python examples/train_student.py --quick

Position t of a label file holds the teacher's distribution of the token after input token t, so the student's
hidden state at t is trained against it directly: no shift. The loss never materialises [tokens x vocab] logits
(``sparse_kd_loss_from_hidden`` runs the LM head chunk by chunk). Batches are compact (``layout="csr"``: the
labels as one ``SparseTargets``, ~5 bytes per label, no padding to the widest position), so the workers hand over
and the GPU receives a fraction of the padded bytes; the loss reads them as they are. The checkpoint holds the
sampler's state, so ``--resume`` continues with exactly the sequences that were not trained on yet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig

import sparselabels as sl
from sparselabels.data import ResumableSampler, SparseLabelCollator, SparseLabelDataset
from sparselabels.loss import sparse_kd_loss_from_hidden


def tiny_llama(vocab_size: int, hidden: int, layers: int, seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(config).float()


def build_tiny_store(directory: Path, *, vocab_size: int = 512, sequences: int = 24,
                     length: int = 64) -> tuple[Path, Path]:
    """Random tokens labeled by a random tiny teacher: just enough to run the training loop end to end."""
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=(sequences, length), dtype=np.int32)
    np.save(directory / "tokens.npy", tokens)
    teacher = tiny_llama(vocab_size, hidden=64, layers=2, seed=0)
    sl.generate(teacher, directory / "tokens.npy", directory / "labels", dtype="float32", device="cpu",
                batch_size=8, overwrite=True, progress=False)
    return directory / "labels", directory / "tokens.npy"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path,
                        help="label file, shard directory or manifest (default: build a tiny one)")
    parser.add_argument("--tokens", type=Path, help="the token sequences the labels were computed from (.npy, ...)")
    parser.add_argument("--out", type=Path, default=None, help="where the checkpoint goes (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 200; 4 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ce-weight", type=float, default=0.0, help="mix in cross-entropy on the next token")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--quick", action="store_true", help="a few steps of a tiny model (smoke test)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 4 if args.quick else 200
    if args.quick:
        args.batch_size = min(args.batch_size, 4)
    out = args.out or Path(tempfile.mkdtemp(prefix="train_student-"))
    out.mkdir(parents=True, exist_ok=True)
    if (args.labels is None) != (args.tokens is None):
        parser.error("give both --labels and --tokens, or neither (to build a tiny store)")
    labels, tokens = (args.labels, args.tokens) if args.labels else build_tiny_store(out)

    # Alignment (sequence count, lengths, input fingerprints) is checked here and per item.
    dataset = SparseLabelDataset(labels, tokens)
    sampler = ResumableSampler(len(dataset), seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=SparseLabelCollator(layout="csr"), pin_memory=args.device.startswith("cuda"),
                        persistent_workers=args.workers > 0)
    hidden, layers = (32, 1) if args.quick else (256, 4)
    model = tiny_llama(dataset.vocab_size, hidden=hidden, layers=layers, seed=args.seed + 1).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    checkpoint = out / "checkpoint.pt"
    step = 0
    if args.resume:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step = state["step"]
    print(f"{dataset}: student {sum(p.numel() for p in model.parameters()):,} parameters on {args.device}, "
          f"steps {step}..{args.steps}")

    model.train()
    epoch, consumed, started = sampler.epoch, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        consumed = 0  # sequences trained on since this pass of the sampler began
        for batch in loader:
            batch = batch.to(args.device, non_blocking=True)  # one copy of the batch's buffer
            ids, mask = batch["input_ids"], batch["attention_mask"]
            next_tokens = torch.full_like(ids, -100)  # ground truth for the optional CE term; none after the end
            next_tokens[:, :-1] = torch.where(mask[:, 1:], ids[:, 1:], -100)
            hidden_states = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss = sparse_kd_loss_from_hidden(hidden_states, model.get_output_embeddings().weight, batch["targets"],
                                              mask=mask, labels=next_tokens, ce_weight=args.ce_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            consumed += ids.shape[0]
            if step % max(1, args.steps // 10) == 0 or step == args.steps:
                print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - started:.1f} s)")
            if step == args.steps:
                break
        else:
            epoch += 1
    trained = step > (state["step"] if args.resume else 0)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "sampler": sampler.state_dict(consumed=consumed) if trained else sampler.state_dict()}, checkpoint)
    print(f"checkpoint (model, optimizer, sampler position): {checkpoint}")


if __name__ == "__main__":
    main()
