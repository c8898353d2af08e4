"""A text corpus every machine has — the Python standard library's sources — and a small BPE tokenizer for it.

Used by the demos and experiments (``tools/gradient_fidelity.py``, ``sparselabels demo``) to train tiny teachers
and students without downloading anything. Everything is deterministic on one machine: files are read in sorted
order of their path relative to the stdlib root and the held-out split is a hash of that path. Different Python
versions ship different sources, so :attr:`Corpus.fingerprint` names exactly what was read.

Usage::

    corpus = load_corpus(cache_dir="~/.cache/sparselabels")   # tokenizer + token ids, cached
    corpus.train_ids, corpus.heldout_ids                      # int32 numpy arrays, documents joined by <|endoftext|>
    corpus.tokenizer.decode(corpus.train_ids[:50].tolist())
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sparselabels.errors import InputError

END_OF_TEXT = "<|endoftext|>"
#: Directories of the stdlib left out: tests (huge, repetitive), third-party packages, demos, and the generated
#: character-map tables of ``encodings``.
EXCLUDED_PARTS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "turtledemo", "encodings"}
)
CORPUS_VERSION = 1


@dataclass(frozen=True)
class CorpusFile:
    relative_path: str
    size: int
    heldout: bool


@dataclass
class Corpus:
    """Token ids of the stdlib corpus, split by file into train and held-out sets."""

    tokenizer: Tokenizer
    train_ids: np.ndarray  # int32 [n_train]
    heldout_ids: np.ndarray  # int32 [n_heldout]
    files: list[CorpusFile] = field(repr=False)
    fingerprint: str = ""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        token = self.tokenizer.token_to_id(END_OF_TEXT)
        assert token is not None
        return token


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(
    *, max_bytes: int = 4_000_000, heldout_percent: int = 10, root: Path | None = None
) -> list[CorpusFile]:
    """Python sources under the stdlib in a fixed pseudo-random order, taken until ``max_bytes`` is reached.

    The order is by ``crc32(relative_path)`` (ties by path), so a capped corpus samples the whole library rather
    than its first letters. A file is held out when ``crc32("heldout:" + relative_path) % 100 < heldout_percent``:
    the split of a file does not depend on the cap (except that a cap so small that no file falls in the held-out
    share holds out its last file).
    """
    if max_bytes < 1:
        raise InputError(f"max_bytes must be >= 1, got {max_bytes}")
    if not 0 <= heldout_percent < 100:
        raise InputError(f"heldout_percent must be in [0, 100), got {heldout_percent}")
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise InputError(f"the standard library directory {str(root)!r} does not exist")
    candidates = sorted(
        (zlib.crc32(path.relative_to(root).as_posix().encode()), path.relative_to(root).as_posix(), path)
        for path in _python_files(root)
    )
    chosen: list[CorpusFile] = []
    total = 0
    for _, relative, path in candidates:
        size = path.stat().st_size
        if size == 0:
            continue
        if total + size > max_bytes and chosen:
            break
        heldout = zlib.crc32(f"heldout:{relative}".encode()) % 100 < heldout_percent
        chosen.append(CorpusFile(relative, size, heldout))
        total += size
    if not chosen:
        raise InputError(f"no Python sources found under {str(root)!r}")
    if heldout_percent > 0 and len(chosen) > 1 and not any(f.heldout for f in chosen):
        chosen[-1] = CorpusFile(chosen[-1].relative_path, chosen[-1].size, True)  # a tiny cap still gets a split
    return chosen


def _python_files(root: Path) -> list[Path]:
    """``*.py`` files under ``root``, not descending into excluded directories (site-packages can be huge)."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in EXCLUDED_PARTS and d != "__pycache__"]
        found.extend(Path(directory) / name for name in names if name.endswith(".py"))
    return [path for path in found if path.is_file()]


def read_texts(files: Sequence[CorpusFile], root: Path | None = None) -> list[str]:
    root = Path(root) if root is not None else stdlib_root()
    return [(root / f.relative_path).read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: Sequence[str], *, vocab_size: int = 4096) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style: no unknown tokens) with ``<|endoftext|>`` as id 0."""
    if vocab_size < 256 + 1:
        raise InputError(f"vocab_size must be > 256 (the byte alphabet plus <|endoftext|>), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Token ids of the documents, each followed by ``<|endoftext|>``, as one int32 array."""
    eos = tokenizer.token_to_id(END_OF_TEXT)
    if eos is None:
        raise InputError(f"the tokenizer has no {END_OF_TEXT} token")
    pieces: list[np.ndarray] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        pieces.append(np.asarray(encoding.ids, dtype=np.int32))
        pieces.append(np.asarray([eos], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def corpus_fingerprint(files: Sequence[CorpusFile], vocab_size: int) -> str:
    """What the corpus is made of: Python version, stdlib path, the files, their sizes and the tokenizer size."""
    description = {
        "version": CORPUS_VERSION,
        "python": sys.version.split()[0],
        "stdlib": str(stdlib_root()),
        "vocab_size": vocab_size,
        "files": [[f.relative_path, f.size, f.heldout] for f in files],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def load_corpus(
    *,
    cache_dir: str | Path | None = None,
    max_bytes: int = 4_000_000,
    vocab_size: int = 4096,
    heldout_percent: int = 10,
) -> Corpus:
    """Build (or load from ``cache_dir``) the tokenizer and the train / held-out token ids.

    The cache entry is ``<cache_dir>/corpus-<fingerprint>/`` holding ``tokenizer.json``, ``train.npy``,
    ``heldout.npy`` and ``files.json``; a changed stdlib, cap or vocabulary size gives a new fingerprint.
    """
    files = list_stdlib_files(max_bytes=max_bytes, heldout_percent=heldout_percent)
    fingerprint = corpus_fingerprint(files, vocab_size)
    entry = Path(cache_dir).expanduser() / f"corpus-{fingerprint}" if cache_dir is not None else None
    if entry is not None and (entry / "heldout.npy").is_file():
        return Corpus(
            tokenizer=Tokenizer.from_file(str(entry / "tokenizer.json")),
            train_ids=np.load(entry / "train.npy"),
            heldout_ids=np.load(entry / "heldout.npy"),
            files=files,
            fingerprint=fingerprint,
        )
    texts = read_texts(files)
    train_texts = [t for t, f in zip(texts, files, strict=True) if not f.heldout]
    heldout_texts = [t for t, f in zip(texts, files, strict=True) if f.heldout]
    tokenizer = train_tokenizer(train_texts, vocab_size=vocab_size)
    corpus = Corpus(
        tokenizer=tokenizer,
        train_ids=encode_documents(tokenizer, train_texts),
        heldout_ids=encode_documents(tokenizer, heldout_texts),
        files=files,
        fingerprint=fingerprint,
    )
    if entry is not None:
        _save(corpus, entry)
    return corpus


def _save(corpus: Corpus, entry: Path) -> None:
    """Write into a temporary directory, then rename: a crash never leaves a half-written entry that loads."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.with_name(entry.name + f".tmp-{id(corpus):x}")
    staging.mkdir(parents=True, exist_ok=True)
    corpus.tokenizer.save(str(staging / "tokenizer.json"))
    np.save(staging / "train.npy", corpus.train_ids)
    np.save(staging / "heldout.npy", corpus.heldout_ids)
    (staging / "files.json").write_text(json.dumps([f.__dict__ for f in corpus.files], indent=0))
    try:
        staging.rename(entry)
    except OSError:  # another process finished the same entry first; theirs is identical
        shutil.rmtree(staging)
