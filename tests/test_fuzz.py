"""The format fuzzer: a short run over every codec, and checks that the harness itself classifies correctly.

The long run (>= 10,000 mutants per codec) is ``python tools/fuzz_format.py``; its counts are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import file_surgery as fs
import numpy as np
import pytest

import sparselabels.codecs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fuzz_format as ff


def test_short_fuzz_run_has_no_bug_outcomes(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    rc = ff.main(["--quick", "--out", str(out), "--timeout", "60"])
    results = json.loads(out.read_text())
    failures = "\n".join(f"{f['codec']}/{f['base']} {f['mutation']}: {f['description']} -> {f['outcome']}: "
                         f"{f['detail'][:300]}" for f in results["failures"][:10])
    assert results["bugs"] == 0, failures
    assert rc == 0
    assert results["codecs"] == sparselabels.codecs.available()  # every codec is fuzzed, new ones automatically
    per_kind = results["cases_per_codec"] // len(ff.MUTATIONS)
    for codec, rows in results["table"].items():
        assert set(rows) == set(ff.MUTATIONS), codec
        assert all(sum(row.values()) >= per_kind for row in rows.values()), codec
        assert rows["control"] == {"identical": sum(rows["control"].values())}, codec
        totals = {o: sum(row.get(o, 0) for row in rows.values()) for o in ff.OUTCOMES_OK}
        # The CRC fix-ups get mutants past the checksums to every later check, and coherent rewrites make
        # files that are valid but different: every kind of outcome occurs.
        assert all(totals[o] > 0 for o in ff.OUTCOMES_OK), (codec, totals)


def _pool_case(case: str, workdir: Path) -> dict:
    if case == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if case == "hang":
        time.sleep(120)
    if case == "memory":
        np.ones(16 << 30, dtype=np.uint8)
    if case == "exit":
        os._exit(5)
    (workdir / "scratch").write_text(case)  # each worker has its own directory
    return {"outcome": "identical", "detail": case}


def test_pool_classifies_crashes_hangs_and_memory(tmp_path: Path) -> None:
    pool = ff.ForkPool(_pool_case, workers=2, timeout=3.0, scratch=tmp_path, memory_headroom=512 << 20)
    cases = ["ok1", "segv", "ok2", "hang", "memory", "ok3", "exit", "ok4"]
    results = dict(pool.run(cases))
    assert set(results) == set(cases)
    assert results["segv"]["outcome"] == "crash" and "SIGSEGV" in results["segv"]["detail"]
    assert results["exit"]["outcome"] == "crash" and "status 5" in results["exit"]["detail"]
    assert results["hang"]["outcome"] == "hang"
    assert results["memory"]["outcome"] == "memory"
    assert all(results[f"ok{k}"] == {"outcome": "identical", "detail": f"ok{k}"} for k in range(1, 5))
    assert not list(tmp_path.iterdir())  # workers' directories are removed


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[fs.BaseFile]:
    return fs.build_bases(tmp_path_factory.mktemp("bases"), seed=3)


def test_independent_rebuild_reproduces_every_base_file(bases: list[fs.BaseFile]) -> None:
    """The fuzzer's own index builder (used for coherent rewrites) agrees with the writer byte for byte."""
    assert {b.codec for b in bases} == set(sparselabels.codecs.available())
    for b in bases:
        meta = b.data[b.layout.metadata.start:b.layout.metadata.end]
        assert fs.rebuild(meta, fs.split_chunks(b.data, b.layout), b.layout.flags) == b.data, b.name


def _evaluate(b: fs.BaseFile, mutation: str, data: bytes, tmp_path: Path) -> dict:
    return ff.evaluate(ff.Case(0, b.codec, b.name, mutation, "test", data), tmp_path, {b.name: b.content})


def test_evaluate_classifies_known_mutants(bases: list[fs.BaseFile], tmp_path: Path) -> None:
    for b in (b for b in bases if b.content):
        lay = b.layout
        assert _evaluate(b, "control", b.data, tmp_path)["outcome"] == "identical"
        assert _evaluate(b, "truncate", b.data[:-1], tmp_path)["outcome"] == "rejected-open"
        # a record byte changed with its chunk CRC fixed: the label rules reject it at read time
        buf = bytearray(b.data)
        record = next(r for r in lay.records if r.end - r.start >= 8)
        buf[record.start:record.start + 8] = b"\xff" * 8
        chunk = next(c for c in lay.chunks if c.records.start <= record.start < c.end)
        fs.fix_chunk_crcs(buf, chunk)
        assert _evaluate(b, "record+crc", bytes(buf), tmp_path)["outcome"] == "rejected-read", b.name
        # the same edit without the CRC fix-up: the default verify level reads it, validate rejects it
        buf = bytearray(b.data)
        buf[record.start:record.start + 8] = b"\xff" * 8
        assert _evaluate(b, "byte-run", bytes(buf), tmp_path)["outcome"] in ("rejected-read", "rejected-validate")
        # a chunk dropped and the file rebuilt consistently: valid, with other content
        meta = b.data[lay.metadata.start:lay.metadata.end]
        dropped = fs.rebuild(meta, fs.split_chunks(b.data, lay)[1:], lay.flags)
        assert _evaluate(b, "coherent-rewrite", dropped, tmp_path)["outcome"] == "valid-different", b.name
        # ...which a blind mutation must never produce: the harness calls that a bug
        result = _evaluate(b, "bitflip", dropped, tmp_path)
        assert result["outcome"] == "inconsistent" and "blind mutation" in result["detail"]


def test_bases_cover_the_full_id_range(bases: list[fs.BaseFile], tmp_path: Path) -> None:
    """Every codec is fuzzed on files with vocab_size 2**32 holding the top ids; raw stores 2**32 - 1 as a lone
    label, which rans refuses (the base writer checks that it is refused up front)."""
    for codec in sparselabels.codecs.available():
        wide = [b for b in bases if b.codec == codec and b.vocab == fs.WIDE_VOCAB]
        assert wide, codec
        top_first = False
        for b in wide:
            (tmp_path / b.name).write_bytes(b.data)
            with sparselabels.LabelFile(tmp_path / b.name) as f:
                assert f.vocab_size == 2**32
                ids = np.concatenate([s.ids for s in f])
                assert int(ids.max()) == 2**32 - 1
                top_first |= any(fs.first_id_is_top(s.ids, s.indptr) for s in f)
        assert top_first == (codec == "raw"), codec
