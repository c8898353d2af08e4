"""PackedDataset: the packing plan, packed collate (positions, boundaries, aligned labels and masks), packed ==
unpacked per-document losses under eager and sdpa attention, resuming, over-long documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_fixtures import build_store, tiny_student

from sparselabels.data import PackedDataset, ResumableSampler, SparseLabelDataset, collate
from sparselabels.data.packing import plan_rows
from sparselabels.errors import InputError
from sparselabels.hf import final_hidden, kd_loss, lm_head_weight
from sparselabels.loss import sparse_kd_loss_from_hidden

LENGTHS = [13, 7, 16, 9, 3, 11, 5, 14, 8, 2, 10, 6]
SEQ_LEN = 24


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path, tokens = build_store(tmp_path_factory.mktemp("pack") / "labels.slbl", LENGTHS, seed=5)
    rng = np.random.default_rng(9)
    masks = [(rng.random(n) < 0.7).astype(np.int64) for n in LENGTHS]
    return SparseLabelDataset(path, tokens, masks=masks)


def test_plan_is_best_fit_decreasing_and_complete():
    rows = plan_rows(np.array(LENGTHS), SEQ_LEN)
    assert sorted(np.concatenate(rows).tolist()) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in r) <= SEQ_LEN for r in rows)
    assert all(np.all(np.diff(r) > 0) for r in rows)
    assert [r.tolist() for r in rows] == [r.tolist() for r in plan_rows(np.array(LENGTHS), SEQ_LEN)]
    total = sum(LENGTHS)
    assert len(rows) == -(-total // SEQ_LEN)  # this corpus packs without a wasted row
    assert plan_rows(np.array([0, 5, 0]), 5)[0].tolist() == [1]  # empty documents take no room
    assert [r.tolist() for r in plan_rows(np.array([3, 3, 2, 2]), 5)] == [[0, 2], [1, 3]]
    # best fit, not first fit: the 1s go to the row with least room (room 2 after 4 + 4), not to 7's (room 3)
    assert [r.tolist() for r in plan_rows(np.array([1, 1, 4, 4, 7]), 10)] == [[4], [0, 1, 2, 3]]


def test_over_long_documents_and_bad_seq_len_are_refused(dataset):
    with pytest.raises(InputError, match="document 2 has 16 positions, more than seq_len=15"):
        PackedDataset(dataset, seq_len=15)
    for bad in (0, -3, 2.5, "24"):
        with pytest.raises(InputError, match="seq_len"):
            PackedDataset(dataset, seq_len=bad)
    with pytest.raises(InputError, match="lengths"):
        PackedDataset(dataset, seq_len=SEQ_LEN, lengths=[1, 2])


def test_collate_errors_in_packed_rows_name_the_document(dataset):
    """An id outside the vocabulary in a packed row is named by its document and position there (and by its
    row and position in the row), not as if the row were a sequence of the source."""
    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    row = packed[0]
    assert len(row.documents) > 1
    bound = int(row.ids[row.indptr[row.document_lengths[0]]:].max())  # a vocabulary the later documents overrun
    at = int(np.searchsorted(row.indptr, int(np.argmax(row.ids >= bound)), side="right")) - 1  # position in row
    ends = np.cumsum(row.document_lengths)
    d = int(np.searchsorted(ends, at, side="right"))
    doc, pos = int(row.documents[d]), at - (int(ends[d - 1]) if d else 0)
    with pytest.raises(InputError, match=f"sequence {doc}, position {pos}: id "):  # the document alone says the same
        collate([dataset[doc]], vocab_size=bound)
    for layout in ("padded", "csr"):
        with pytest.raises(InputError, match=rf"packed row 0, position {at} \(document {doc}, position {pos}\): id ") \
                as info:
            packed.collator(vocab_size=bound, layout=layout)([row])
        assert (info.value.sequence, info.value.position) == (doc, pos)


def test_packed_batch_keys_and_alignment(dataset):
    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    assert packed.efficiency == pytest.approx(sum(LENGTHS) / (len(packed) * SEQ_LEN))
    batch = packed.collator()([packed[r] for r in range(len(packed))])
    B, T = batch["attention_mask"].shape
    assert T == SEQ_LEN
    segments = []
    for b in range(B):
        row = packed.rows[b]
        start = 0
        for doc in row.tolist():
            n = LENGTHS[doc]
            item = dataset[doc]
            alone = collate([item])
            assert batch["position_ids"][b, start : start + n].tolist() == list(range(n))
            assert torch.equal(batch["input_ids"][b, start : start + n], alone["input_ids"][0])
            assert torch.equal(batch["loss_mask"][b, start : start + n], alone["loss_mask"][0])
            K = alone["target_ids"].shape[-1]
            assert torch.equal(batch["target_ids"][b, start : start + n, :K], alone["target_ids"][0])
            assert torch.equal(batch["target_weights"][b, start : start + n, :K], alone["target_weights"][0])
            assert not batch["target_weights"][b, start : start + n, K:].any()
            segments.append(n)
            start += n
        if start < T:
            assert batch["position_ids"][b, start:].tolist() == list(range(T - start))
            assert not batch["attention_mask"][b, start:].any() and not batch["loss_mask"][b, start:].any()
            segments.append(T - start)
        assert batch["documents"][b, : len(row)].tolist() == row.tolist()
    assert batch["cu_seq_lens"].tolist() == np.concatenate([[0], np.cumsum(segments)]).tolist()
    assert batch["max_length"] == max(segments)


def _per_position(model, batch):
    with torch.no_grad():
        hidden = final_hidden(model, batch)
        return sparse_kd_loss_from_hidden(hidden, lm_head_weight(model), batch["target_ids"],
                                          batch["target_weights"], reduction="none")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_per_document_losses_equal_unpacked(dataset, attn):
    model = tiny_student(attn=attn).eval()
    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    rows = [packed[r] for r in range(len(packed))]
    batch = packed.collator()(rows)
    got = _per_position(model, batch)
    crossed = _per_position(model, {k: v for k, v in batch.items() if k != "position_ids"})  # one long sequence
    differs = False
    for b, row in enumerate(packed.rows):
        start = 0
        for doc in row.tolist():
            n = LENGTHS[doc]
            want = _per_position(model, collate([dataset[doc]]))[0]
            torch.testing.assert_close(got[b, start : start + n], want, rtol=1e-5, atol=1e-5)
            differs |= start > 0 and not torch.allclose(crossed[b, start : start + n], want, rtol=1e-3, atol=1e-3)
            start += n
    assert differs  # without the restarting positions, later documents would attend to earlier ones


def test_trainer_loss_on_packed_rows_equals_unpacked(dataset, tmp_path):
    from transformers import TrainingArguments

    from sparselabels.hf import SparseKDTrainer

    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    model = tiny_student()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, report_to="none",
                             use_cpu=True)
    trainer = SparseKDTrainer(model=model, args=args, train_dataset=packed, ce_weight=0.3)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert "position_ids" in batch and batch["attention_mask"].shape[1] == SEQ_LEN
    docs = [d for d in batch["documents"].flatten().tolist() if d >= 0]
    unpacked = collate([dataset[d] for d in docs])
    got = trainer.compute_loss(model, batch)
    assert got.item() == pytest.approx(kd_loss(model, unpacked, ce_weight=0.3).item(), rel=1e-5)
    got.backward()  # and it trains
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().max() > 0


def test_resumable_sampler_over_packed_rows(dataset):
    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    sampler = ResumableSampler(len(packed), seed=3)
    order = list(iter(sampler))
    sampler2 = ResumableSampler(len(packed), seed=3)
    it = iter(sampler2)
    first = [next(it) for _ in range(2)]
    state = sampler2.state_dict()
    resumed = ResumableSampler(len(packed), seed=3)
    resumed.load_state_dict(state)
    assert first + list(iter(resumed)) == order
    assert [packed[i].documents.tolist() for i in order] == [packed.rows[i].tolist() for i in order]


def test_bench_packing_quick(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_packing.py"
    out = tmp_path / "bench_packing.json"
    proc = subprocess.run([sys.executable, str(tool), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(out.read_text())
    assert body["machine"]["cpu"] and {r["corpus"] for r in body["results"]} == {"chat-lognormal", "web-pareto",
                                                                                 "uniform"}
    for r in body["results"]:
        assert 0.9 < r["packed"] <= 1.0
        assert r["pad_to_seq_len"] < r["pad_to_longest"] < r["packed"]


def test_packed_csr_batches_through_a_worker_equal_in_process(dataset):
    packed = PackedDataset(dataset, seq_len=SEQ_LEN)
    collator = packed.collator(layout="csr")
    loader = torch.utils.data.DataLoader(packed, batch_size=2, num_workers=1, collate_fn=collator)
    for r, got in zip(range(0, len(packed), 2), loader, strict=False):
        want = collator([packed[i] for i in range(r, min(r + 2, len(packed)))])
        assert sorted(got) == sorted(want)
        for key in ("position_ids", "cu_seq_lens", "loss_mask", "input_ids", "attention_mask", "documents"):
            assert torch.equal(got[key], want[key]), key
        assert got["max_length"] == want["max_length"]
        for a, b in zip(got["targets"].to_padded(), want["targets"].to_padded(), strict=True):
            assert torch.equal(a, b)
