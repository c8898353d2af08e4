"""Fuzz the sparse-label file format: mutate valid files, open/read/validate/merge every mutant in a worker.

Valid base files are written for every codec in ``sparselabels.codecs.available()`` (new codecs are picked up
automatically), both value kinds, with and without input fingerprints, with empty sequences, empty positions and
several chunks. Each case applies one mutation and runs the whole read side on the result in a forked worker
process (workers are reused across cases): ``LabelFile`` at every verify level in mmap and pread mode, every
sequence read, ``positions()``, ``validate``, the ``validate`` and ``info`` commands, a ``merge --copy``, and
``LabelWriter(resume=True)`` on the mutant taken as an interrupted file.

Two families of mutations:

* blind ones (bit flips, byte runs, truncation, extension, swapped sections) that the CRCs mostly reject early;
* structure-aware ones that edit one field of the header, metadata, a chunk header, chunk entries, a record,
  the index or the footer and then *fix every CRC that covers it*, so the checks behind the CRCs run; and
  "coherent" rewrites (chunks dropped, duplicated, reordered; metadata values changed) that rebuild the whole
  file consistently with an index built here, independently of the writer.

Every case ends in one of these outcomes (bugs in capitals in the table's spirit, lower-case here):

=====================  ==============================================================================
identical              validates, and every read equals the original content
valid-different        validates, content differs (only a CRC-fixed or coherent mutation may do this)
rejected-open          ``FormatError`` (or a subclass) when the file is opened
rejected-read          opens; at least one read raises ``FormatError``
rejected-validate      opens and reads at the default verify level; ``validate`` reports the corruption
crash                  the worker died by a signal (SIGSEGV, SIGBUS, ...)                     -- bug
hang                   the case ran past the timeout                                          -- bug
memory                 MemoryError under the worker's address-space limit                      -- bug
wrong-exception        anything but ``FormatError`` from open/read; anything raised by ``validate``  -- bug
inconsistent           mmap and pread disagree, validate disagrees with ``verify="full"``, a CLI exit
                       code is wrong, a blind mutation produced a valid file with other content, or
                       resume finished a file that does not open (or an invalid one from a valid input) -- bug
spread                 ``merge --copy`` turned an invalid input into a file that validates         -- bug
=====================  ==============================================================================

Run ``python tools/fuzz_format.py --cases-per-codec 10000`` for the long run (its JSON goes to
``tools/results/fuzz_format.json``); ``--quick`` runs a few hundred cases.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import io
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the file-surgery helpers
import benchlib
from file_surgery import (
    CHUNK_FIELDS,
    FOOTER_FIELDS,
    HEADER_FIELDS,
    ROUNDS,
    VOCAB,
    BaseFile,
    Span,
    build_bases,
    fix_chunk_crcs,
    fix_index_crc,
    fix_metadata_crc,
    fix_struct_crc,
    get_value,
    put_value,
    rebuild,
    relayout_with_metadata,
    reseal_records_at,
    sequence_digest,
    split_chunks,
    vm_size,
    writer_settings,
)

import sparselabels.codecs
from sparselabels.errors import FormatError, SparseLabelsError
from sparselabels.format.layout import (
    ENTRY_COLUMNS,
    FOOTER_SIZE,
    HEADER_SIZE,
)
from sparselabels.io.reader import LabelFile
from sparselabels.io.writer import LabelWriter

OUTCOMES_OK = ("identical", "valid-different", "rejected-open", "rejected-read", "rejected-validate")
OUTCOMES_BUG = ("crash", "hang", "memory", "wrong-exception", "inconsistent", "spread")
OUTCOMES = OUTCOMES_OK + OUTCOMES_BUG

# ---------------------------------------------------------------------------------------------------------
# Mutations: each takes (rng, base) and returns (mutated bytes, description)
# ---------------------------------------------------------------------------------------------------------
def edge_values(old: int, bits: int, rng: random.Random, file_size: int) -> int:
    top = (1 << bits) - 1
    choices = [0, 1, old - 1, old + 1, old - 8, old + 8, old * 2, old + 64, old - 64, (1 << 31) - 1, 1 << 31,
               (1 << 32) - 1, 1 << 32, (1 << 32) + old, (1 << 63) - 1, 1 << 63, top, top - old,
               file_size, file_size - 64, file_size + 8, rng.getrandbits(bits), old ^ (1 << rng.randrange(bits))]
    return rng.choice(choices) & top


def _edit_field(buf: bytearray, start: int, fields: dict, rng: random.Random, file_size: int,
                skip: tuple[str, ...] = ()) -> str:
    name = rng.choice([k for k in fields if k not in skip])
    at, fmt = fields[name]
    if fmt.endswith("s"):
        raw = bytearray(buf[start + at:start + at + struct.calcsize(fmt)])
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        put_value(buf, start + at, fmt, bytes(raw))
        return f"{name} bit flipped"
    old = get_value(buf, start + at, fmt)
    new = edge_values(old, 8 * struct.calcsize(fmt), rng, file_size)
    put_value(buf, start + at, fmt, new)
    return f"{name} {old} -> {new}"


def m_none(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    return base.data, "unchanged (control)"


def m_bitflip(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    flips = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        bit = rng.randrange(8 * len(buf))
        buf[bit // 8] ^= 1 << (bit % 8)
        flips.append(bit)
    return bytes(buf), f"bits {flips} flipped"


def m_byte_run(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    n = rng.choice([1, 2, 4, 8, 16, 64, 256])
    at = rng.randrange(len(buf))
    fill = rng.choice(["zero", "ff", "random"])
    run = {"zero": bytes(n), "ff": b"\xff" * n, "random": rng.randbytes(n)}[fill]
    buf[at:at + n] = run[: len(buf) - at]
    return bytes(buf), f"{n} {fill} bytes at {at}"


def _boundaries(base: BaseFile) -> list[int]:
    lay = base.layout
    marks = [0, HEADER_SIZE, lay.metadata.end, lay.data_offset, lay.index.start, lay.footer, len(base.data)]
    for ch in lay.chunks:
        marks += [ch.start, ch.entries.start, ch.table.start, ch.records.start, ch.end]
    marks += [s.end for s in lay.records]
    return marks


def m_truncate(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    size = len(base.data)
    if rng.random() < 0.5:
        cut = min(size - 1, max(0, rng.choice(_boundaries(base)) + rng.choice([-8, -1, 0, 1, 8])))
    else:
        cut = rng.randrange(size)
    return base.data[:cut], f"truncated to {cut} of {size} bytes"


def m_extend(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    n = rng.choice([1, 7, 8, 64, 4096])
    kind = rng.choice(["zero", "random", "footer-copy"])
    tail = {"zero": bytes(n), "random": rng.randbytes(n), "footer-copy": base.data[-FOOTER_SIZE:]}[kind]
    return base.data + tail, f"extended by {len(tail)} {kind} bytes"


def _sections(base: BaseFile) -> list[Span]:
    lay = base.layout
    return [Span(0, HEADER_SIZE), lay.metadata, *[Span(c.start, c.end) for c in lay.chunks], lay.index,
            Span(lay.footer, len(base.data))]


def m_swap_sections(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Swap two chunks (reordering the bytes), or copy one section over another of the same size."""
    lay = base.layout
    data = base.data
    if len(lay.chunks) >= 2 and rng.random() < 0.6:
        i, j = sorted(rng.sample(range(len(lay.chunks)), 2))
        a, b = lay.chunks[i], lay.chunks[j]
        out = data[:a.start] + data[b.start:b.end] + data[a.end:b.start] + data[a.start:a.end] + data[b.end:]
        return out, f"chunks {i} and {j} swapped"
    sections = _sections(base)
    src, dst = rng.choice(sections), rng.choice(sections)
    n = min(src.end - src.start, dst.end - dst.start)
    buf = bytearray(data)
    buf[dst.start:dst.start + n] = data[src.start:src.start + n]
    return bytes(buf), f"{n} bytes of section at {src.start} copied over section at {dst.start}"


def m_header_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    what = _edit_field(buf, 0, HEADER_FIELDS, rng, len(buf))
    fix_struct_crc(buf, 0)
    return bytes(buf), f"header {what}, CRC fixed"


def _meta_edits(meta: dict, rng: random.Random) -> tuple[dict | bytes, str]:
    """A hostile or inconsistent metadata value (a dict to encode, or raw bytes)."""
    key_values = {
        "vocab_size": [0, 1, 10, VOCAB - 1, VOCAB + 1, 1 << 32, (1 << 32) + 1, -1, (1 << 64) - 1, 1.5, "x", True,
                       None],
        "rounds": [0, 1, ROUNDS - 1, ROUNDS + 1, 255, 256, -1, None, 2.0, "50"],
        "value_kind": ["count", "prob", "bogus", 5, None],
        "codec": ["bogus", "", 7, None, *sparselabels.codecs.available()],
        "format_version": ["2.0", "1.99", "0.9", 1, "", "1", None],
        "library_version": [5, None, ""],
        "temperature": [float("nan"), float("inf"), -1.0, 0.0, "hot", True, 1e308],
        "teacher": [5, b"bytes", None, "x" * 100_000],
        "seed": [1.5, "s", -1],
        "user": [[[]] * 3, {"deep": _nested(33)}, {"deep": _nested(31)}, {"k": msgpack.ExtType(5, b"x")}],
    }
    r = rng.random()
    if r < 0.65:
        key = rng.choice(list(key_values))
        value = rng.choice(key_values[key])
        return {**meta, key: value}, f"metadata {key} = {value!r:.60}"
    if r < 0.75:
        key = rng.choice(list(meta))
        return {k: v for k, v in meta.items() if k != key}, f"metadata key {key!r} removed"
    raw = msgpack.packb(meta, use_bin_type=True)
    hostile = {
        "trailing garbage": raw + b"\xc0",
        "truncated": raw[: rng.randrange(len(raw))],
        "array at top": msgpack.packb([1, 2, 3]),
        "int at top": msgpack.packb(7),
        "ext at top": msgpack.packb(msgpack.ExtType(1, b"abc")),
        "int map key": msgpack.packb({**meta, 1: "x"}, use_bin_type=True, strict_types=False),
        "bytes map key": msgpack.packb({**meta, b"k": "x"}, use_bin_type=True),
        "invalid utf-8 str": raw.replace(b"fuzz-teacher", b"fuzz-teach\xff\xfe"),
        "map32 claiming 2**32-1 entries": b"\xdf\xff\xff\xff\xff" + raw[1:],
        "str32 claiming 2**32-1 bytes": b"\x81\xdb\xff\xff\xff\xff" + b"k" * 8,
        "array nested 100000 deep": b"\x91" * 100_000 + b"\xc0",
        "map nested 3000 deep": b"\x81\xa1k" * 3000 + b"\xc0",
        "reserved byte 0xc1": b"\xc1",
        "empty": b"",
    }
    name = rng.choice(list(hostile))
    return hostile[name], f"metadata bytes: {name}"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def m_metadata_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    lay = base.layout
    meta = msgpack.unpackb(base.data[lay.metadata.start:lay.metadata.end], raw=False)
    edited, what = _meta_edits(meta, rng)
    if isinstance(edited, bytes):
        raw = edited
    else:
        try:
            raw = msgpack.packb(edited, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):  # e.g. -1 as a huge unsigned: store a string instead
            raw = msgpack.packb({**edited, "vocab_size": "unencodable"}, use_bin_type=True)
    if rng.random() < 0.1 and len(raw) == lay.metadata.end - lay.metadata.start:
        buf = bytearray(base.data)
        buf[lay.metadata.start:lay.metadata.end] = raw
        fix_metadata_crc(buf, lay)
        return bytes(buf), f"{what} (in place), CRCs fixed"
    return relayout_with_metadata(base.data, lay, raw), f"{what}, file rebuilt around it"


def m_chunk_header_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    if not base.layout.chunks:
        return m_header_crc(rng, base)
    c = rng.randrange(len(base.layout.chunks))
    ch = base.layout.chunks[c]
    what = _edit_field(buf, ch.start, CHUNK_FIELDS, rng, len(buf))
    fix_struct_crc(buf, ch.start)
    return bytes(buf), f"chunk {c} header {what}, CRC fixed"


def m_chunk_entries_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    if not base.layout.chunks:
        return m_footer_crc(rng, base)
    c = rng.randrange(len(base.layout.chunks))
    ch = base.layout.chunks[c]
    row = rng.randrange(ch.num_sequences)
    col = rng.randrange(ch.entry_size // 8)
    at = ch.entries.start + row * ch.entry_size + 8 * col
    old = get_value(buf, at, "<Q")
    new = edge_values(old, 64, rng, len(buf))
    put_value(buf, at, "<Q", new)
    fix_chunk_crcs(buf, ch)
    return bytes(buf), f"chunk {c} entry {row} {ENTRY_COLUMNS[col]} {old} -> {new}, CRCs fixed"


def m_record_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Edit bytes of a record (or a codec table) and fix every CRC over them (the records' own, in the chunk
    entries and the index, and the payload's): the codec's checks and the label rules must catch it."""
    lay = base.layout
    candidates = [(i, s) for i, s in enumerate(lay.records) if s.end > s.start]
    tables = [(c, ch.table) for c, ch in enumerate(lay.chunks) if ch.table.end > ch.table.start]
    if not candidates:
        return m_index_crc(rng, base)
    buf = bytearray(base.data)
    if tables and rng.random() < 0.3:
        c, span = rng.choice(tables)
        target, what = span, f"table of chunk {c}"
    else:
        i, span = rng.choice(candidates)
        target, what = span, f"record of sequence {i}"
    style = rng.choice(["byte", "byte", "bit", "swap-u8", "swap-u16", "swap-u32", "zero-u32", "ff-u32"])
    n = target.end - target.start
    if style == "byte":
        at = target.start + rng.randrange(n)
        buf[at] = rng.randrange(256)
    elif style == "bit":
        at = target.start + rng.randrange(n)
        buf[at] ^= 1 << rng.randrange(8)
    elif style.startswith("swap"):
        w = int(style[6:]) // 8
        if n >= 2 * w:
            a = target.start + rng.randrange(n // w) * w
            b = target.start + rng.randrange(n // w) * w
            buf[a:a + w], buf[b:b + w] = bytes(buf[b:b + w]), bytes(buf[a:a + w])
    else:
        at = target.start + rng.randrange(max(1, n - 3))
        buf[at:at + 4] = (b"\0" if style == "zero-u32" else b"\xff") * 4
    reseal_records_at(buf, lay, target.start)
    return bytes(buf), f"{what}: {style} edit, record, payload and index CRCs fixed"


def m_index_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    lay = base.layout
    buf = bytearray(base.data)
    name = rng.choice([n for n, sp in lay.columns.items() if sp.end > sp.start])
    span = lay.columns[name]
    k = rng.randrange((span.end - span.start) // 8)
    at = span.start + 8 * k
    old = get_value(buf, at, "<Q")
    new = edge_values(old, 64, rng, len(buf))
    put_value(buf, at, "<Q", new)
    fix_index_crc(buf, lay)
    return bytes(buf), f"index {name}[{k}] {old} -> {new}, CRCs fixed"


def m_footer_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    what = _edit_field(buf, base.layout.footer, FOOTER_FIELDS, rng, len(buf))
    fix_struct_crc(buf, base.layout.footer)
    return bytes(buf), f"footer {what}, CRC fixed"


def m_coherent(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Rewrite the file consistently (every CRC, the index and the footer rebuilt) around one change."""
    lay = base.layout
    meta = base.data[lay.metadata.start:lay.metadata.end]
    chunks = split_chunks(base.data, lay)
    choice = rng.choice(["drop", "duplicate", "reorder", "entry", "entry", "identity"])
    if not chunks:
        choice = "identity"
    if choice == "drop":
        c = rng.randrange(len(chunks))
        del chunks[c]
        what = f"chunk {c} dropped"
    elif choice == "duplicate":
        c = rng.randrange(len(chunks))
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[c])
        what = f"chunk {c} duplicated"
    elif choice == "reorder":
        rng.shuffle(chunks)
        what = "chunks reordered"
    elif choice == "entry":
        c = rng.randrange(len(chunks))
        blob = chunks[c]
        row, col = rng.randrange(blob.entries.shape[0]), rng.randrange(2)
        old = int(blob.entries[row, col])
        new = max(0, old + rng.choice([-2, -1, 1, 2, 8]))
        blob.entries = blob.entries.copy()
        blob.entries[row, col] = new
        what = f"chunk {c} entry {row} {ENTRY_COLUMNS[col]} {old} -> {new}, index rebuilt to agree"
    else:
        what = "rebuilt unchanged"
    return rebuild(meta, chunks, lay.flags), what


MUTATIONS: dict[str, Callable[[random.Random, BaseFile], tuple[bytes, str]]] = {
    "control": m_none,
    "bitflip": m_bitflip,
    "byte-run": m_byte_run,
    "truncate": m_truncate,
    "extend": m_extend,
    "swap-sections": m_swap_sections,
    "header+crc": m_header_crc,
    "metadata+crc": m_metadata_crc,
    "chunk-header+crc": m_chunk_header_crc,
    "chunk-entries+crc": m_chunk_entries_crc,
    "record+crc": m_record_crc,
    "index+crc": m_index_crc,
    "footer+crc": m_footer_crc,
    "coherent-rewrite": m_coherent,
}
# Mutations that leave every CRC as the mutation left it: a valid file with other content would mean bytes that
# no check covers.
BLIND = frozenset({"bitflip", "byte-run", "truncate", "extend", "swap-sections"})


# ---------------------------------------------------------------------------------------------------------
# Evaluating one mutant (runs in a worker)
# ---------------------------------------------------------------------------------------------------------
class Inconsistent(Exception):
    """Two views of the same file disagree."""


@dataclasses.dataclass
class Case:
    number: int
    codec: str
    base: str
    mutation: str
    description: str
    data: bytes


def _inspect(path: str, *, mmap: bool, verify: str) -> tuple[str, tuple[str | None, ...], str]:
    """Open and read everything; returns (status, per-sequence digests or None for a failed read, first error).

    Only FormatError is caught: anything else propagates and is a wrong exception.
    """
    try:
        f = LabelFile(path, mmap=mmap, verify=verify)
    except FormatError as exc:
        return "rejected-open", (), f"{type(exc).__name__}: {exc}"
    digests: list[str | None] = []
    first_error = ""
    with f:
        for i in range(len(f)):
            try:
                s = f[i]
                digests.append(sequence_digest(s.ids, s.counts, s.indptr, s.fingerprint))
            except FormatError as exc:
                digests.append(None)
                first_error = first_error or f"{type(exc).__name__}: {exc}"
        if not first_error and f.num_positions:
            try:
                block = f.positions(0, f.num_positions)
            except FormatError as exc:
                first_error = f"positions(): {type(exc).__name__}: {exc}"
            else:
                if block.num_labels != f.num_labels:
                    raise Inconsistent(f"positions() returned {block.num_labels} labels, file has {f.num_labels}")
    return ("rejected-read" if first_error else "opened"), tuple(digests), first_error


def _cli(argv: list[str]) -> int:
    from sparselabels.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _check_resume(case: Case, workdir: Path, settings: dict[str, Any], input_ok: bool) -> None:
    """The mutant as an interrupted file: resume refuses (SparseLabelsError) or keeps a prefix of its chunks.

    Resume keeps chunks whose CRCs and entries check, without decoding records (spec section 11). So the
    file it finishes always opens (the index it builds is consistent); it may still hold a bad record, but
    only one the input already had: a valid input must give a valid file.
    """
    from sparselabels.io.validate import validate

    final = workdir / "resumed.slbl"
    final.unlink(missing_ok=True)
    (workdir / "resumed.slbl.partial").write_bytes(case.data)
    try:
        LabelWriter(final, resume=True, **settings).close()
    except SparseLabelsError:
        return
    report = validate(final)
    if report.ok:
        return
    if input_ok:
        raise Inconsistent(f"resume turned a valid file into an invalid one: {report.problems[0]}")
    try:
        LabelFile(str(final)).close()
    except FormatError as exc:
        raise Inconsistent(f"resume wrote a file that does not open: {exc}") from None


def evaluate(case: Case, workdir: Path, expected: dict[str, tuple[str, ...]],
             settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the whole read side (and resume, when ``settings`` has the base's writer settings) on one mutant."""
    from sparselabels.io.merge import merge
    from sparselabels.io.validate import validate

    path = workdir / "case.slbl"
    path.write_bytes(case.data)
    p = str(path)
    result: dict[str, Any] = {"outcome": None, "detail": ""}
    try:
        views = {}
        for verify in ("structure", "index", "full"):
            for mmap in (True, False):
                views[verify, mmap] = _inspect(p, mmap=mmap, verify=verify)
            if views[verify, True] != views[verify, False]:
                raise Inconsistent(f"verify={verify}: mmap gives {views[verify, True][0]}/{views[verify, True][2]}"
                                   f", pread gives {views[verify, False][0]}/{views[verify, False][2]}")
        report = validate(p)
        full_status, full_content, _ = views["full", True]
        index_status, index_content, index_error = views["index", True]
        if report.ok != (full_status == "opened"):
            first = str(report.problems[0]) if report.problems else None
            raise Inconsistent(f"validate ok={report.ok} but verify='full' gives {full_status}: {first}")
        if report.ok and (index_status != "opened" or index_content != full_content):
            raise Inconsistent("validate passes but the default verify level reads something else")
        rc = _cli(["validate", p])
        if rc != (0 if report.ok else 1):
            raise Inconsistent(f"'sparselabels validate' exit code {rc}, report ok={report.ok}")
        rc = _cli(["info", p])
        if rc != (0 if index_status != "rejected-open" else 2):
            raise Inconsistent(f"'sparselabels info' exit code {rc} for a file that is {index_status}")
        # merge --copy must never turn an invalid input into a file that validates (corruption spread).
        out = workdir / "merged.slbl"
        merged_ok = False
        try:
            merge(out, [p], copy=True, overwrite=True)
            merged = validate(out)
            merged_ok = merged.ok
        except SparseLabelsError:
            pass
        if merged_ok and not report.ok:
            result.update(outcome="spread", detail="merge --copy of an invalid file produced a valid file")
            return result
        if merged_ok:
            merged_content = _inspect(str(out), mmap=True, verify="full")[1]
            if merged_content != full_content:
                result.update(outcome="spread", detail="merge --copy changed the content of a valid file")
                return result
        elif report.ok:
            raise Inconsistent("merge --copy failed on a valid file")
        if settings is not None:
            _check_resume(case, workdir, settings[case.base], report.ok)
        if report.ok:
            same = full_content == expected[case.base]
            if not same and case.mutation in BLIND:
                raise Inconsistent("a blind mutation produced a valid file with other content (unchecked bytes?)")
            result["outcome"] = "identical" if same else "valid-different"
        elif index_status == "rejected-open":
            result.update(outcome="rejected-open", detail=index_error)
        elif index_status == "rejected-read":
            result.update(outcome="rejected-read", detail=index_error)
        else:
            result.update(outcome="rejected-validate", detail=str(report.problems[0]),
                          silent_at_default_verify=index_content != expected[case.base])
    except Inconsistent as exc:
        result.update(outcome="inconsistent", detail=str(exc))
    except MemoryError:
        result.update(outcome="memory", detail=traceback.format_exc(limit=-4))
    except Exception as exc:
        result.update(outcome="wrong-exception", detail=f"{type(exc).__name__}: {exc}\n"
                      + traceback.format_exc(limit=-4))
    return result


# ---------------------------------------------------------------------------------------------------------
# A pool of forked workers, reused across cases; deaths are crashes, overruns are hangs
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Worker:
    pid: int
    conn: Connection
    workdir: Path
    case: Any = None
    deadline: float = 0.0


class ForkPool:
    """Run ``evaluate(case, workdir)`` for many cases in forked workers.

    Each worker runs under an address-space limit of its starting size plus ``memory_headroom`` bytes, so an
    allocation sized by a hostile value fails with MemoryError (classified ``memory``) instead of swapping.
    A worker that dies (a signal, or any exit) is recorded as ``crash`` for its case and replaced; a case that
    runs past ``timeout`` seconds is killed and recorded as ``hang``.
    """

    def __init__(self, evaluate_fn: Callable[[Any, Path], dict], *, workers: int, timeout: float,
                 scratch: Path, memory_headroom: int = 2 << 30) -> None:
        self._evaluate = evaluate_fn
        self._count = max(1, workers)
        self._timeout = timeout
        self._scratch = scratch
        self._headroom = memory_headroom
        self._workers: list[_Worker] = []
        self._spawned = 0

    def _spawn(self) -> _Worker:
        workdir = self._scratch / f"worker{self._spawned}"
        self._spawned += 1
        workdir.mkdir(parents=True, exist_ok=True)
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                parent_end.close()
                faulthandler.disable()  # a crash is a result here, not something to dump a traceback for
                limit = vm_size() + self._headroom
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                while True:
                    case = child_end.recv()
                    if case is None:
                        break
                    try:
                        result = self._evaluate(case, workdir)
                    except MemoryError:
                        result = {"outcome": "memory", "detail": "MemoryError escaped the evaluation"}
                    child_end.send(result)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        child_end.close()
        return _Worker(pid, parent_end, workdir)

    def _retire(self, w: _Worker, *, kill: bool) -> str:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
        _, status = os.waitpid(w.pid, 0)
        w.conn.close()
        shutil.rmtree(w.workdir, ignore_errors=True)
        if os.WIFSIGNALED(status):
            return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exited with status {os.WEXITSTATUS(status)}"

    def run(self, cases: Iterable[Any]) -> Iterator[tuple[Any, dict]]:
        """Yield (case, result) as cases finish (not in order)."""
        pending = iter(cases)
        idle = [self._spawn() for _ in range(self._count)]
        busy: dict[Connection, _Worker] = {}
        exhausted = False
        try:
            while True:
                while idle and not exhausted:
                    case = next(pending, None)
                    if case is None:
                        exhausted = True
                        break
                    w = idle.pop()
                    w.case, w.deadline = case, time.monotonic() + self._timeout
                    w.conn.send(case)
                    busy[w.conn] = w
                if not busy:
                    break
                now = time.monotonic()
                ready = wait(list(busy), timeout=max(0.0, min(w.deadline for w in busy.values()) - now))
                for conn in ready:
                    w = busy.pop(conn)  # type: ignore[arg-type]
                    try:
                        result = conn.recv()  # type: ignore[union-attr]
                    except (EOFError, OSError):
                        how = self._retire(w, kill=False)
                        yield w.case, {"outcome": "crash", "detail": f"worker {how}"}
                        idle.append(self._spawn())
                        continue
                    yield w.case, result
                    idle.append(w)
                now = time.monotonic()
                for conn, w in list(busy.items()):
                    if now >= w.deadline:
                        del busy[conn]
                        self._retire(w, kill=True)
                        yield w.case, {"outcome": "hang", "detail": f"no result after {self._timeout:.0f} s"}
                        idle.append(self._spawn())
        finally:
            for w in idle:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
                self._retire(w, kill=False)
            for w in busy.values():
                self._retire(w, kill=True)


# ---------------------------------------------------------------------------------------------------------
# Driving a run
# ---------------------------------------------------------------------------------------------------------
def generate_cases(bases: list[BaseFile], per_codec: int, seed: int) -> Iterator[Case]:
    """``per_codec`` cases for each codec, cycling through mutation kinds and that codec's base files."""
    by_codec: dict[str, list[BaseFile]] = defaultdict(list)
    for b in bases:
        by_codec[b.codec].append(b)
    kinds = list(MUTATIONS)
    number = 0
    for codec, codec_bases in by_codec.items():
        for k in range(per_codec):
            kind = kinds[k % len(kinds)]
            base = codec_bases[(k // len(kinds)) % len(codec_bases)]
            rng = random.Random(f"{seed}-{codec}-{k}")
            data, description = MUTATIONS[kind](rng, base)
            yield Case(number, codec, base.name, kind, description, data)
            number += 1


def default_scratch() -> Path:
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="slfuzz-", dir=root))


def run_fuzz(*, cases_per_codec: int, seed: int = 0, workers: int | None = None, timeout: float = 30.0,
             codecs: list[str] | None = None, scratch: Path | None = None, failures_dir: Path | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Build the base files, run every case, and return the counts and the failures."""
    own_scratch = scratch is None
    scratch = scratch or default_scratch()
    started = time.perf_counter()
    try:
        bases = build_bases(scratch, seed, codecs)
        expected = {b.name: b.content for b in bases}
        settings = {b.name: writer_settings(b.codec, b.value_kind, b.vocab) for b in bases}
        for b in bases:  # warm up numba and every code path before forking, and check the rebuild twin
            assert rebuild(b.data[b.layout.metadata.start:b.layout.metadata.end], split_chunks(b.data, b.layout),
                           b.layout.flags) == b.data, f"independent rebuild of {b.name} differs from the writer's"
            warm = evaluate(Case(-1, b.codec, b.name, "control", "warm-up", b.data), scratch, expected, settings)
            assert warm["outcome"] == "identical", f"base file {b.name}: {warm}"
        pool = ForkPool(lambda case, wd: evaluate(case, wd, expected, settings), workers=workers or os.cpu_count() or 1,
                        timeout=timeout, scratch=scratch / "pool")
        table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        silent: dict[str, Counter] = defaultdict(Counter)
        failures: list[dict[str, Any]] = []
        total = cases_per_codec * len({b.codec for b in bases})
        for done, (case, result) in enumerate(pool.run(generate_cases(bases, cases_per_codec, seed)), start=1):
            outcome = result["outcome"]
            table[case.codec][case.mutation][outcome] += 1
            if outcome == "rejected-validate" and result.get("silent_at_default_verify"):
                silent[case.codec][case.mutation] += 1
            if outcome in OUTCOMES_BUG:
                failure = {"case": case.number, "codec": case.codec, "base": case.base, "mutation": case.mutation,
                           "description": case.description, "outcome": outcome, "detail": result["detail"]}
                if failures_dir is not None:
                    failures_dir.mkdir(parents=True, exist_ok=True)
                    repro = failures_dir / f"case{case.number}-{outcome}.slbl"
                    repro.write_bytes(case.data)
                    failure["file"] = str(repro)
                failures.append(failure)
            if progress and done % 1000 == 0:
                print(f"  {done}/{total} cases, {len(failures)} failures, {time.perf_counter() - started:.0f} s",
                      flush=True)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "seed": seed,
        "cases_per_codec": cases_per_codec,
        "codecs": sorted(table),
        "bases": [b.name for b in bases],
        "timeout_s": timeout,
        "seconds": time.perf_counter() - started,
        "table": {codec: {m: dict(c) for m, c in rows.items()} for codec, rows in table.items()},
        "silent_at_default_verify": {codec: dict(c) for codec, c in silent.items()},
        "bugs": len(failures),
        "failures": failures[:200],
    }


def print_tables(results: dict[str, Any]) -> None:
    for codec, rows in results["table"].items():
        out = []
        for mutation in MUTATIONS:
            counts = rows.get(mutation, {})
            out.append({"mutation": mutation, **{o: counts.get(o, 0) for o in OUTCOMES},
                        "total": sum(counts.values())})
        totals = {o: sum(r[o] for r in out) for o in [*OUTCOMES, "total"]}
        out.append({"mutation": "TOTAL", **totals})
        benchlib.print_table(out, ["mutation", *OUTCOMES, "total"], title=f"codec {codec!r}: outcomes per mutation")
        silent = results["silent_at_default_verify"].get(codec, {})
        if silent:
            print(f"  rejected only by validate whose reads at verify='index' returned other content: "
                  f"{sum(silent.values())} ({', '.join(f'{k} {v}' for k, v in silent.items())})")
    print(f"\n{results['bugs']} bug outcome(s) in {results['seconds']:.0f} s")
    for failure in results["failures"][:20]:
        print(f"  case {failure['case']} [{failure['codec']}/{failure['base']}] {failure['mutation']}: "
              f"{failure['description']} -> {failure['outcome']}: {failure['detail'].splitlines()[0][:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_common_args(parser, "fuzz_format")
    parser.add_argument("--cases-per-codec", type=int, default=10_000, help="mutants per codec (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--codec", action="append", help="fuzz only this codec (repeatable; default: all)")
    parser.add_argument("--failures-dir", type=Path, help="save every failing mutant here")
    args = parser.parse_args(argv)
    per_codec = 15 * len(MUTATIONS) if args.quick else args.cases_per_codec
    results = run_fuzz(cases_per_codec=per_codec, seed=args.seed, workers=args.workers, timeout=args.timeout,
                       codecs=args.codec, failures_dir=args.failures_dir, progress=not args.quick)
    print_tables(results)
    benchlib.write_json(args.out, {"benchmark": "fuzz_format", "quick": args.quick, **results})
    return 1 if results["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
