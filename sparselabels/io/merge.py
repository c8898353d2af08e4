"""Merging shards written in parallel: a manifest over them, or one physical file.

Both check that the shards can be read as one dataset (vocabulary, value kind, rounds, teacher, tokenizer,
temperature). A physical merge copies chunks byte for byte when the codec stays the same (verifying each
chunk's checksum on the way, and decoding every record a reader would decode, so that a chunk whose checksums
match but whose records do not decode is never spread) and re-encodes sequence by sequence otherwise. It writes through
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
from sparselabels.io.remote import is_url
from sparselabels.io.shards import LabelShards
from sparselabels.io.streams import check_distinct_streams
from sparselabels.io.verify import checked_chunk
from sparselabels.io.writer import LabelWriter


def input_files(inputs: list[str | os.PathLike]) -> list[Path | str]:
    """Expand files, manifests and shard directories (local, or URLs) into the list of shard files, in order."""
    files: list[Path | str] = []
    for item in inputs:
        labels = open_labels(item, verify="structure")
        try:
            if isinstance(labels, LabelShards):
                files.extend(labels.shard_paths())
            else:
                files.append(item if is_url(item) else Path(item))
        finally:
            labels.close()
    return files


def merge(out: str | os.PathLike, inputs: list[str | os.PathLike], *, copy: bool = False,
          codec: str | None = None, overwrite: bool = False, storage_options: dict | None = None) -> Path | str:
    """Merge ``inputs`` (files, manifests or directories) into ``out``.

    ``copy=False`` writes a manifest at ``out`` (the shards must live in its directory tree). ``copy=True``
    writes one label file at ``out``; ``codec`` picks its codec (default: the inputs' common codec). With
    ``copy=True``, ``out`` may be a URL: the file is written locally, then uploaded (``storage_options`` go to
    fsspec; URL inputs are read with fsspec's configuration).
    """
    if is_url(out):
        return _merge_to_url(os.fspath(out), inputs, copy=copy, codec=codec, overwrite=overwrite,
                             storage_options=storage_options)
    if storage_options is not None:
        raise InputError("storage_options apply to an output URL (s3://...), not to a local path; URL inputs are "
                         "read with fsspec's configuration")
    out = Path(out)
    if not copy:
        check_manifest_name(out, ", or pass copy=True to write one label file")
    if not copy and codec is not None:
        raise InputError("codec applies to copy=True (a manifest keeps its shards as they are)")
    remote = [os.fspath(item) for item in inputs if is_url(item)]
    if not copy and remote:
        raise InputError(f"input {remote[0]!r}: a manifest lists files beside or below it on this file system; "
                         "pass copy=True to merge URL inputs into one local file")
    files = input_files(inputs)
    if not files:
        raise CompatibilityError("merge needs at least one input")
    if not copy:
        check_distinct_streams(_stream_facts(files))  # before anything is written
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
        return write_manifest(out, files)
    return _merge_copy(out, files, codec=codec, overwrite=overwrite)


def _stream_facts(files: list[Path | str]):
    """(name, metadata, positions) of each input, one open at a time, for :func:`check_distinct_streams`."""
    for p in files:
        with LabelFile(p, verify="structure") as f:
            yield os.fspath(p), f.metadata, f.num_positions


def _merge_copy(out: Path, files: list[Path | str], *, codec: str | None, overwrite: bool) -> Path:
    # one input open at a time (thousands of shards must not need a descriptor each): a first pass checks
    # that they agree, a second copies them, each checked again against what the first pass saw
    facts = []
    for p in files:
        with LabelFile(p, verify="index") as f:
            facts.append({"path": f.path, "metadata": f.metadata, "codec": f.codec.name, "sequences": len(f),
                          "positions": f.num_positions, "fingerprints": f.fingerprints is not None,
                          "identity": (f.file_size, footer_crc32(f))})
    named = zip(files, facts, strict=True)
    check_distinct_streams((os.fspath(p), fact["metadata"], fact["positions"]) for p, fact in named)
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


def _merge_to_url(out: str, inputs: list, *, copy: bool, codec: str | None, overwrite: bool,
                  storage_options: dict | None) -> str:
    """``merge(copy=True)`` to a URL: one label file written in a temporary directory, then uploaded whole."""
    import tempfile

    from sparselabels.io.remote import url_parent
    from sparselabels.io.upload import RemoteTarget

    if not copy:
        raise InputError(f"{out!r}: merging to a URL writes one label file; pass copy=True (a manifest over "
                         "remote shards is written by generate)")
    target = RemoteTarget(url_parent(out), storage_options)
    name = out.rstrip("/").rsplit("/", 1)[-1]
    if name in target.names() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
    files = input_files(inputs)
    if not files:
        raise CompatibilityError("merge needs at least one input")
    with tempfile.TemporaryDirectory(prefix="sparselabels-merge-") as tmp:
        local = _merge_copy(Path(tmp) / name, files, codec=codec, overwrite=False)
        target.upload(local, name)
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
        first = int(f.index_column("chunk_first_sequence")[c])
        for i in range(first, first + chunk.header.num_sequences):
            if f.sequence_lengths[i] > f.max_sequence_positions:
                continue  # readers refuse it unless they raise the limit too: copied on its CRC (decoding is O(T))
            try:  # a chunk whose CRCs match can still hold a record that does not decode (a faulty writer)
                f.read(i)
            except FormatError as exc:
                raise FormatError(f"{exc}; not copying a chunk that does not decode") from None
        header = chunk.header
        entries_2d = chunk.entries.view("<u8").reshape(header.num_sequences, -1)
        writer._emit_chunk(entries_2d, chunk.table, chunk.records, header.flags, payload_crc=chunk.payload_crc32)


def _reencode(f: LabelFile, writer: LabelWriter) -> None:
    for i in range(len(f)):
        s = f[i]
        writer.write(s.ids, s.counts, s.indptr, fingerprint=s.fingerprint)
