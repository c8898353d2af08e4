"""``sparselabels.hf``: kd_loss against the float64 dense reference, SparseKDTrainer's loss, gradient accumulation,
default TrainingArguments, loss masks and LoRA. CPU, tiny random Llama students, real label files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_fixtures import VOCAB, build_store, dense_reference, tiny_student

import sparselabels as sl
from sparselabels.data import SparseLabelDataset, collate
from sparselabels.errors import InputError
from sparselabels.hf import SparseKDTrainer, count_positions, kd_loss

LENGTHS = [13, 7, 16, 9, 11, 5, 14, 8]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("hf") / "labels.slbl", LENGTHS)


@pytest.fixture(scope="module")
def dataset(store):
    path, tokens = store
    return SparseLabelDataset(path, tokens)


def _masks(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random(n) < 0.6).astype(np.int64) for n in LENGTHS]


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    kw.setdefault("report_to", "none")
    return TrainingArguments(output_dir=str(tmp_path / "out"), save_strategy="no", use_cpu=True, **kw)


# -- the loss -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["padded", "csr"])
@pytest.mark.parametrize(("kd_weight", "ce_weight"), [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0), (2.0, 0.5)])
def test_kd_loss_equals_dense_float64_reference(dataset, layout, kd_weight, ce_weight):
    model = tiny_student()
    items = [dataset[i] for i in range(len(dataset))]
    padded = collate(items)
    batch = collate(items, layout=layout)
    got = kd_loss(model, batch, kd_weight=kd_weight, ce_weight=ce_weight)
    want = dense_reference(model, padded, kd_weight=kd_weight, ce_weight=ce_weight)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_kd_loss_with_loss_mask_equals_reference(store):
    path, tokens = store
    ds = SparseLabelDataset(path, tokens, masks=_masks())
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["loss_mask"].sum() < batch["attention_mask"].sum()
    model = tiny_student()
    for kd_w, ce_w in ((1.0, 0.0), (0.5, 0.5)):
        got = kd_loss(model, batch, kd_weight=kd_w, ce_weight=ce_w)
        assert got.item() == pytest.approx(dense_reference(model, batch, kd_weight=kd_w, ce_weight=ce_w).item(),
                                           rel=1e-5)


def test_masked_positions_change_nothing(store):
    """New teacher labels at masked positions leave the loss and every gradient bit-identical."""
    path, tokens = store
    ds = SparseLabelDataset(path, tokens, masks=_masks())
    batch = collate([ds[i] for i in range(len(ds))])
    other = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    masked = ~batch["loss_mask"]
    gen = torch.Generator().manual_seed(0)
    other["target_ids"][masked] = torch.randint(0, VOCAB, other["target_ids"][masked].shape, generator=gen)
    other["target_weights"][masked] = torch.rand(other["target_weights"][masked].shape, generator=gen)
    assert not torch.equal(other["target_ids"], batch["target_ids"])

    def loss_and_grads(b):
        model = tiny_student()
        loss = kd_loss(model, b, ce_weight=0.4)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = loss_and_grads(batch)
    loss_b, grads_b = loss_and_grads(other)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    # and they do matter where the mask keeps them
    other["target_weights"][~masked & batch["attention_mask"]] *= 0.5
    assert not torch.equal(loss_and_grads(other)[0], loss_a)


def test_count_positions_and_num_items(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    whole = collate(items)
    n = count_positions(whole)
    assert n.tolist() == [sum(LENGTHS), sum(LENGTHS) - len(LENGTHS)]
    model = tiny_student()
    parts = [collate(items[i : i + 2]) for i in range(0, len(items), 2)]
    summed = sum(kd_loss(model, p, ce_weight=0.3, num_items=n) for p in parts)
    assert summed.item() == pytest.approx(kd_loss(model, whole, ce_weight=0.3).item(), rel=1e-6)


def test_bad_weights_refused(dataset):
    batch = collate([dataset[0]])
    for kd_w, ce_w in ((0.0, 0.0), (-1.0, 0.0), ("x", 0.0)):
        with pytest.raises(InputError, match="kd_weight"):
            kd_loss(tiny_student(), batch, kd_weight=kd_w, ce_weight=ce_w)
    with pytest.raises(InputError, match="no targets"):
        kd_loss(tiny_student(), {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    with pytest.raises(InputError, match="no input_ids"):
        kd_loss(tiny_student(), {k: v for k, v in batch.items() if k != "input_ids"})


def test_trainer_refuses_a_dataset_without_tokens(store, tmp_path):
    labels_only = SparseLabelDataset(store[0])
    with pytest.raises(InputError, match="has labels but no tokens"):
        SparseKDTrainer(model=tiny_student(), args=_args(tmp_path), train_dataset=labels_only)


def test_trainer_checks_the_temperature_before_training(dataset, tmp_path):
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(InputError, match="temperature must be a positive finite number"):
            SparseKDTrainer(model=tiny_student(), args=_args(tmp_path), train_dataset=dataset, temperature=bad)


# -- the trainer ----------------------------------------------------------------------------------------------
def test_trainer_loss_equals_kd_loss_and_reference(dataset, tmp_path):
    model = tiny_student()
    trainer = SparseKDTrainer(model=model, args=_args(tmp_path), train_dataset=dataset, ce_weight=0.25)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    assert isinstance(batch["targets"], sl.data.SparseTargets)  # CSR by default
    got = trainer.compute_loss(model, batch)
    assert got.item() == pytest.approx(kd_loss(model, batch, kd_weight=1.0, ce_weight=0.25).item(), rel=1e-6)
    assert got.item() == pytest.approx(dense_reference(model, batch, ce_weight=0.25).item(), rel=1e-5)


def _one_step(dataset, tmp_path, *, per_device: int, accumulation: int, seed: int = 0, ce_weight: float = 0.3,
              model=None):
    model = model or tiny_student(seed=seed)
    args = _args(tmp_path, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                 max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                 seed=seed, weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    SparseKDTrainer(model=model, args=args, train_dataset=dataset, ce_weight=ce_weight).train()
    return [(b - p.detach()) / 0.5 for b, p in zip(before, model.parameters(), strict=True)]  # the gradient


def test_gradient_accumulation_equals_whole_batch(dataset, tmp_path):
    """4 micro-batches of 2 ragged sequences give the gradient of the 8-sequence batch (every position weighs the
    same; a mean of per-micro-batch means would not)."""
    whole = _one_step(dataset, tmp_path / "a", per_device=8, accumulation=1)
    split = _one_step(dataset, tmp_path / "b", per_device=2, accumulation=4)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=1e-6)
    # the direct gradient of kd_loss on the whole batch, for an independent check
    model = tiny_student(seed=0)
    kd_loss(model, collate([dataset[i] for i in range(len(dataset))]), ce_weight=0.3).backward()
    for a, p in zip(whole, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=2e-4, atol=1e-6)


def test_default_training_arguments_train_and_loss_falls(dataset, tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-3, num_train_epochs=8)
    assert args.remove_unused_columns  # the default, which must not drop the teacher's targets
    model = tiny_student()
    batch = collate([dataset[i] for i in range(len(dataset))])
    before = kd_loss(model, batch).item()
    trainer = SparseKDTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    with torch.no_grad():  # Trainer placed the model on its device (a GPU where there is one)
        after = kd_loss(model, batch.to(trainer.args.device)).item()
    assert after < before - 0.1
    assert trainer.evaluate()["eval_loss"] == pytest.approx(after, rel=1e-5)


def test_hf_dataset_with_labels_column(tmp_path):
    """A chat-style datasets source: input_ids plus labels with -100 drive the loss mask, default args."""
    import datasets

    path, tokens = build_store(tmp_path / "chat.slbl", LENGTHS, seed=3)
    rng = np.random.default_rng(3)
    labels = []
    for tok in tokens:
        lab = tok.copy()
        lab[: rng.integers(1, len(tok) - 1)] = -100  # a prompt, then the response that is trained
        labels.append(lab)
    hf = datasets.Dataset.from_dict({"input_ids": [t.tolist() for t in tokens], "labels": [x.tolist() for x in labels],
                                     "text": ["x"] * len(tokens)})
    ds = SparseLabelDataset(path, hf, mask_column="labels")
    item = ds[0]
    want = np.append(labels[0][1:] != -100, labels[0][-1] != -100)
    assert np.array_equal(item.loss_mask, want)
    model = tiny_student()
    trainer = SparseKDTrainer(model=model, args=_args(tmp_path, per_device_train_batch_size=4), train_dataset=ds)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert "loss_mask" in batch
    assert trainer.compute_loss(model, batch).item() == pytest.approx(dense_reference(model, batch).item(), rel=1e-5)


def test_bad_mask_columns_refused(tmp_path):
    import datasets

    path, tokens = build_store(tmp_path / "m.slbl", [6, 4])
    ok = [np.ones(6, np.int64), np.ones(4, np.int64)]
    with pytest.raises(InputError, match="sequence 1: 3 mask values for 4 tokens"):
        SparseLabelDataset(path, tokens, masks=[ok[0], np.ones(3, np.int64)])
    ds = SparseLabelDataset(path, tokens, masks=[ok[0], np.array([1, 0, 2, 1])])
    ds[0]
    with pytest.raises(InputError, match="sequence 1, token 2: mask value 2 is not 0 or 1"):
        ds[1]
    with pytest.raises(InputError, match="mask value -100 is not 0 or 1"):
        SparseLabelDataset(path, tokens, masks=[ok[0], np.array([1, -100, 1, 1])])[1]
    shifted = [np.append(t[1:], -100) for t in tokens]  # labels stored pre-shifted: refused, not misaligned
    hf = datasets.Dataset.from_dict({"input_ids": [t.tolist() for t in tokens],
                                     "labels": [s.tolist() for s in shifted]})
    with pytest.raises(InputError, match="neither -100 nor the input token"):
        SparseLabelDataset(path, hf, mask_column="labels")[0]
    with pytest.raises(InputError, match="names a column of a datasets source"):
        SparseLabelDataset(path, tokens, mask_column="loss_mask")
    with pytest.raises(InputError, match="no column 'nope'"):
        SparseLabelDataset(path, hf, mask_column="nope")


def test_boolean_masks_are_0_1_masks(tmp_path):
    """``masks=`` of bool arrays (True = trained) give the items the loss masks their 0/1 twins give."""
    path, tokens = build_store(tmp_path / "b.slbl", [6, 4])
    as_bool = [np.array([True, False, True, True, False, True]), np.array([False, True, True, False])]
    want = SparseLabelDataset(path, tokens, masks=[m.astype(np.int64) for m in as_bool])
    for masks in (as_bool, [m.tolist() for m in as_bool]):
        got = SparseLabelDataset(path, tokens, masks=masks)
        for i in range(2):
            assert np.array_equal(got[i].loss_mask, want[i].loss_mask)


def test_lora_model_trains_adapters_only(dataset, tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_student()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    batch = collate([dataset[i] for i in range(4)])
    assert kd_loss(model, batch, ce_weight=0.2).item() == pytest.approx(
        dense_reference(model, batch, ce_weight=0.2).item(), rel=1e-5)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    trainer = SparseKDTrainer(model=model, args=_args(tmp_path, per_device_train_batch_size=4, max_steps=3,
                                                      learning_rate=1e-2), train_dataset=dataset)
    before = kd_loss(model, batch).item()
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)
    with torch.no_grad():
        assert kd_loss(model, batch).item() < before


def test_sl_hf_is_a_submodule():
    assert sl.hf.SparseKDTrainer is SparseKDTrainer


@pytest.mark.slow
def test_example_hf_trainer_quick(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    from pipeline_fixtures import subprocess_env

    example = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    done = subprocess.run([sys.executable, str(example), "--quick", "--out", str(tmp_path)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"packing efficiency \d+\.\d%", done.stdout)
    before, after = map(float, re.search(r"KD loss on the first rows: (\S+) -> (\S+)", done.stdout).groups())
    assert after < before


def _family(name: str):
    import transformers as tf

    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if name == "gpt2":  # tied head, learned positions, dropout (compared in eval mode)
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                                                eos_token_id=2))
    if name == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**kw))
    if name == "cohere":  # logits = logit_scale * head(h)
        return tf.CohereForCausalLM(tf.CohereConfig(**kw, logit_scale=0.5))
    if name == "granite":  # logits = head(h) / logits_scaling
        return tf.GraniteForCausalLM(tf.GraniteConfig(**kw, logits_scaling=4.0))
    raise ValueError(name)


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "cohere", "granite"])
def test_kd_loss_other_model_families(dataset, family):
    model = _family(family).eval()
    batch = collate([dataset[i] for i in range(4)], layout="csr")
    got = kd_loss(model, batch, ce_weight=0.2)
    assert got.item() == pytest.approx(dense_reference(model, batch, ce_weight=0.2).item(), rel=1e-5)


def test_soft_capped_logits_refused(dataset):
    import transformers as tf

    model = tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, head_dim=8,
                                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(InputError, match="soft-caps its logits"):
        kd_loss(model, collate([dataset[0]]))
