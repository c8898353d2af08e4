"""Merging shards written in parallel: a manifest over them, or one physical file.

Both check that the shards can be read as one dataset (vocabulary, value kind, rounds, teacher, tokenizer,
temperature). A physical merge copies chunks byte for byte when the codec stays the same (verifying each
chunk's checksum on the way) and re-encodes sequence by sequence otherwise. It writes through
:class:`LabelWriter`, so it is crash-safe in the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparselabels.errors import ChecksumError, CompatibilityError, FormatError, InputError, OutputExistsError
from sparselabels.format.metadata import REQUIRED_KEYS
from sparselabels.io.manifest import (
    check_compatible,
    check_fingerprints_agree,
    check_manifest_name,
    common_metadata,
    footer_crc32,
    write_manifest,
)
from sparselabels.io.open import open_labels
from sparselabels.io.reader import LabelFile
from sparselabels.io.shards import LabelShards
from sparselabels.io.verify import checked_chunk
from sparselabels.io.writer import LabelWriter


def input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files, manifests and shard directories into the list of shard files, in order."""
    files: list[Path] = []
    for item in inputs:
        labels = open_labels(item, verify="structure")
        try:
            if isinstance(labels, LabelShards):
                files.extend(labels.shard_paths())
            else:
                files.append(Path(item))
        finally:
            labels.close()
    return files


def merge(out: str | os.PathLike, inputs: list[str | os.PathLike], *, copy: bool = False,
          codec: str | None = None, overwrite: bool = False) -> Path:
    """Merge ``inputs`` (files, manifests or directories) into ``out``.

    ``copy=False`` writes a manifest at ``out`` (the shards must live in its directory tree). ``copy=True``
    writes one label file at ``out``; ``codec`` picks its codec (default: the inputs' common codec).
    """
    out = Path(out)
    if not copy:
        check_manifest_name(out, ", or pass copy=True to write one label file")
    if not copy and codec is not None:
        raise InputError("codec applies to copy=True (a manifest keeps its shards as they are)")
    files = input_files(inputs)
    if not files:
        raise CompatibilityError("merge needs at least one input")
    if not copy:
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
        return write_manifest(out, files)
    return _merge_copy(out, files, codec=codec, overwrite=overwrite)


def _merge_copy(out: Path, files: list[Path], *, codec: str | None, overwrite: bool) -> Path:
    # one input open at a time (thousands of shards must not need a descriptor each): a first pass checks
    # that they agree, a second copies them, each checked again against what the first pass saw
    facts = []
    for p in files:
        with LabelFile(p, verify="index") as f:
            facts.append({"path": f.path, "metadata": f.metadata, "codec": f.codec.name, "sequences": len(f),
                          "fingerprints": f.fingerprints is not None, "identity": (f.file_size, footer_crc32(f))})
    first = facts[0]
    for fact in facts[1:]:
        check_compatible(first["metadata"], fact["metadata"], what=f"input {fact['path']!r}",
                         reference_name=first["path"])
    check_fingerprints_agree(fact["fingerprints"] for fact in facts if fact["sequences"])
    codecs = {fact["codec"] for fact in facts}
    target = codec or (codecs.pop() if len(codecs) == 1 else None)
    if target is None:
        raise CompatibilityError(f"inputs use different codecs {sorted(codecs)}; choose one with codec=...")
    metas = [fact["metadata"] for fact in facts]
    merged = {k: v for k, v in common_metadata(metas).items() if k not in REQUIRED_KEYS}
    differing = sorted({k for m in metas for k in m} - set(merged) - set(REQUIRED_KEYS))
    if differing:
        merged["merged_from"] = [
            {"file": Path(fact["path"]).name, "num_sequences": fact["sequences"],
             **{k: fact["metadata"].get(k) for k in differing}}
            for fact in facts
        ]
    ref = first["metadata"]
    # a merge cannot resume: a failure leaves no partial file that would block the next attempt
    with LabelWriter(out, vocab_size=ref["vocab_size"], rounds=ref["rounds"], value_kind=ref["value_kind"],
                     codec=target, metadata=merged, overwrite=overwrite, resumable=False) as writer:
        for p, fact in zip(files, facts, strict=True):
            with LabelFile(p, verify="index") as f:
                if (f.file_size, footer_crc32(f)) != fact["identity"]:
                    raise CompatibilityError(f"input {f.path!r} changed during the merge; merge again")
                if f.codec.name == target:
                    _copy_chunks(f, writer)
                else:
                    _reencode(f, writer)
    return out


def _copy_chunks(f: LabelFile, writer: LabelWriter) -> None:
    """Append ``f``'s chunks to ``writer`` unchanged but for their headers, checking each payload's CRC."""
    writer.flush()  # chunks stay whole: a pending partial chunk of an earlier input goes first
    for c in range(f.num_chunks):
        try:
            chunk = checked_chunk(f, c)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}; not copying a corrupt chunk") from None
        except FormatError as exc:
            raise FormatError(f"{exc}; not copying an inconsistent chunk") from None
        header = chunk.header
        entries_2d = chunk.entries.view("<u8").reshape(header.num_sequences, -1)
        writer._emit_chunk(entries_2d, chunk.table, chunk.records, header.flags, payload_crc=chunk.payload_crc32)


def _reencode(f: LabelFile, writer: LabelWriter) -> None:
    for i in range(len(f)):
        s = f[i]
        writer.write(s.ids, s.counts, s.indptr, fingerprint=s.fingerprint)
