"""What ties labels to their inputs, checked where training starts: the token source at dataset construction,
the student's tokenizer, and the label convention (no shift)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_fixtures import random_tokens, save_tokenizer, tiny_llama

import sparselabels as sl
from sparselabels.errors import AlignmentError, CompatibilityError, InputError


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("identity")
    model = tiny_llama(root / "tiny-llama")
    tokens = random_tokens(5, 6, seed=2)
    out = sl.pipeline.generate(model, tokens, root / "labels", batch_size=5, dtype="float32", device="cpu",
                               progress=False)
    return model, tokens, out


def test_other_tokens_of_the_same_shape_fail_at_construction(generated):
    _, tokens, out = generated
    other = tokens.copy()
    other[2, 3] = (other[2, 3] + 1) % 1000  # the middle sequence: part of the whole-source fingerprint
    with pytest.raises(AlignmentError, match=r"the labels were computed from token source tokens-blake2b:[0-9a-f]+, "
                                             r"but these tokens are tokens-blake2b:"):
        sl.data.SparseLabelDataset(out, tokens=other)
    ds = sl.data.SparseLabelDataset(out, tokens=other, verify_fingerprints="off")  # the documented way out
    assert len(ds) == 5
    assert len(sl.data.SparseLabelDataset(out, tokens=tokens)) == 5
    assert len(sl.data.SparseLabelDataset(out, tokens=list(tokens))) == 5  # the same tokens in another container


def test_one_shard_of_a_multi_rank_run_pairs_with_its_slice_of_the_tokens(tmp_path):
    """A shard of a 2-rank run records the whole source's fingerprint (what its manifest checks) but holds only
    its rank's slice: paired with that slice it is not "other tokens"; per-item fingerprints still check it."""
    from sparselabels.data.identity import source_fingerprint
    from sparselabels.data.tokens import open_tokens

    tokens = random_tokens(4, 6, seed=3)
    meta = {"source_fingerprint": source_fingerprint(open_tokens(tokens)),
            "shard": {"rank": 1, "world_size": 2, "first_sequence": 2, "num_sequences": 2}}
    path = tmp_path / "shard-00001-of-00002.slbl"
    with sl.LabelWriter(path, vocab_size=1000, rounds=5, metadata=meta) as w:
        for seq in tokens[2:]:
            w.write(np.asarray(seq[:6], dtype=np.uint32) % 1000, np.full(6, 5), np.arange(7),
                    fingerprint=sl.input_fingerprint(seq))
    ds = sl.data.SparseLabelDataset(path, tokens=tokens[2:])
    assert len(ds) == 2 and ds[1] is not None
    other = tokens[2:].copy()
    other[1, 0] = (other[1, 0] + 1) % 1000
    with pytest.raises(AlignmentError):
        sl.data.SparseLabelDataset(path, tokens=other)[1]


def test_the_label_convention_is_carried_and_shifting_is_refused(generated):
    _, tokens, out = generated
    ds = sl.data.SparseLabelDataset(out, tokens=tokens)
    assert ds.label_convention == "next-token"
    item = ds[1]
    assert item.num_positions == len(item.input_ids)  # one label per input token: nothing to shift
    with pytest.raises(AlignmentError, match=r"label_convention is 'next-token': labels position t is already the "
                                             r"target of the logits at t"):
        sl.data.SparseLabelDataset(out, tokens=tokens, labels_are_shifted=True)
    with sl.open_labels(out) as labels:
        sl.data.check_label_convention(labels.metadata, labels_are_shifted=False, where="x")


def test_a_students_tokenizer_is_checked_against_the_stored_fingerprint(generated, tmp_path):
    from transformers import AutoTokenizer

    model, _, out = generated
    assert sl.data.check_tokenizer(out, model).startswith("files-blake2b:")
    assert sl.data.check_tokenizer(sl.data.SparseLabelDataset(out), AutoTokenizer.from_pretrained(str(model)))
    save_tokenizer(tmp_path / "other", 999)
    with pytest.raises(CompatibilityError, match=r"were made with tokenizer files-blake2b:[0-9a-f]+, but .*other"):
        sl.data.check_tokenizer(out, tmp_path / "other")
    with pytest.raises(InputError, match="holds no tokenizer files"):
        sl.data.check_tokenizer(out, tmp_path)
    plain = tmp_path / "plain.slbl"
    with sl.LabelWriter(plain, vocab_size=10, rounds=5) as w:
        w.write(np.array([1], np.uint32), np.array([5], np.uint8), np.array([0, 1]))
    with pytest.raises(InputError, match="store no tokenizer_fingerprint"):
        sl.data.check_tokenizer(plain, model)
