"""Hostile input: bounded sizes, strict msgpack, no pickle, confined manifests, no out-of-bounds kernel reads.

Files here are built from a valid file by editing one structure and fixing its CRCs (the fuzzer's helpers), so
each test reaches the check it is about instead of stopping at a checksum.
"""

from __future__ import annotations

import ast
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import file_surgery as fs
import msgpack
import numpy as np
import pytest

import sparselabels as sl
from sparselabels.format.checks import check_labels
from sparselabels.format.layout import MAX_METADATA_BYTES

REPO = Path(__file__).resolve().parents[1]

PACKAGE = REPO / "sparselabels"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> fs.BaseFile:
    path = tmp_path_factory.mktemp("security") / "base.slbl"
    data, content = fs.write_base(path, codec="raw", value_kind="count", fingerprints=True, num_sequences=6, seed=5)
    return fs.BaseFile("base", "raw", "count", True, data, content, fs.parse_layout(data))


def _write(tmp_path: Path, data: bytes, name: str = "f.slbl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _with_metadata_bytes(base: fs.BaseFile, raw: bytes) -> bytes:
    return fs.relayout_with_metadata(base.data, base.layout, raw)


def _open_both(path: Path, match: str) -> None:
    for mmap in (True, False):
        with pytest.raises(sl.FormatError, match=match):
            sl.open_labels(path, mmap=mmap)
    report = sl.validate(path)
    assert not report.ok and len(report.problems) == 1


def run_limited(fn, *, headroom: int = 256 << 20, timeout: float = 60.0) -> str:
    """Run ``fn()`` in a forked child under an address-space limit of its size plus ``headroom``; return "ok" or
    the name of the exception it raised ("signal N" if it died). An allocation sized by a hostile value fails."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            limit = fs.vm_size() + headroom
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.alarm(int(timeout))
            try:
                fn()
                result = "ok"
            except BaseException as exc:
                result = type(exc).__name__
            os.write(write_fd, result.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read().decode()
    return out if os.WIFEXITED(status) and out else f"signal {os.WTERMSIG(status)}"


# -- bounded header and metadata ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [MAX_METADATA_BYTES + 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1])
def test_metadata_size_over_the_limit_is_refused_before_reading(base: fs.BaseFile, tmp_path: Path,
                                                                size: int) -> None:
    buf = bytearray(base.data)
    struct.pack_into("<Q", buf, 16, size)
    fs.fix_struct_crc(buf, 0)
    path = _write(tmp_path, bytes(buf))
    _open_both(path, rf"header: metadata_size {size} exceeds the limit of {MAX_METADATA_BYTES} bytes")


def test_metadata_size_past_the_end_of_the_file_allocates_nothing(base: fs.BaseFile, tmp_path: Path) -> None:
    buf = bytearray(base.data)
    struct.pack_into("<Q", buf, 16, MAX_METADATA_BYTES)
    struct.pack_into("<Q", buf, 24, 64 + MAX_METADATA_BYTES)
    fs.fix_struct_crc(buf, 0)
    path = _write(tmp_path, bytes(buf))
    _open_both(path, r"too short for the header, 16777216 bytes of metadata and a footer")
    for mmap in (True, False):  # 16 MiB would fit; the point is that nothing past the file is read
        assert run_limited(lambda m=mmap: sl.open_labels(path, mmap=m), headroom=8 << 20) == "IncompleteFileError"


def test_writer_refuses_metadata_over_the_limit(tmp_path: Path) -> None:
    with pytest.raises(sl.InputError, match=r"metadata: \d+ bytes encoded, more than the limit of 16777216"):
        sl.LabelWriter(tmp_path / "x.slbl", vocab_size=10, rounds=5, metadata={"note": "x" * MAX_METADATA_BYTES})
    assert not (tmp_path / "x.slbl.partial").exists()


# -- strict msgpack ---------------------------------------------------------------------------------------
def _meta(base: fs.BaseFile) -> dict:
    return msgpack.unpackb(base.data[base.layout.metadata.start:base.layout.metadata.end], raw=False)


@pytest.mark.parametrize(("ext", "code"), [(msgpack.ExtType(5, b"payload"), 5), (msgpack.Timestamp(1, 0), -1)])
def test_msgpack_extension_types_are_refused(base: fs.BaseFile, tmp_path: Path, ext, code: int) -> None:
    raw = msgpack.packb({**_meta(base), "user": {"x": ext}}, use_bin_type=True)
    path = _write(tmp_path, _with_metadata_bytes(base, raw))
    # max_ext_len=0 stops the decoder at the extension's length; ext_hook would refuse it by its type code
    _open_both(path, rf"metadata: (msgpack extension type {code} is not allowed|not valid msgpack \(ValueError: "
                     r"\d+ exceeds max_ext_len\(0\)\))")


HOSTILE_MSGPACK = {
    "map32 claiming 2**32-1 entries": b"\xdf\xff\xff\xff\xff" + b"\xc0" * 8,
    "array32 claiming 2**32-1 items": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 8,
    "str32 claiming 4 GiB": b"\x81\xa1k\xdb\xff\xff\xff\xff" + b"x" * 8,
    "bin32 claiming 4 GiB": b"\x81\xa1k\xc6\xff\xff\xff\xff" + b"x" * 8,
    "arrays nested 200,000 deep": b"\x91" * 200_000 + b"\xc0",
    "maps nested 5,000 deep": b"\x81\xa1k" * 5000 + b"\xc0",
}


@pytest.mark.parametrize("what", list(HOSTILE_MSGPACK))
def test_hostile_msgpack_fails_cleanly_in_bounded_memory(base: fs.BaseFile, tmp_path: Path, what: str) -> None:
    path = _write(tmp_path, _with_metadata_bytes(base, HOSTILE_MSGPACK[what]))
    _open_both(path, r"metadata: (not valid msgpack|nested deeper than 32 levels|top level)")
    assert run_limited(lambda: sl.open_labels(path), headroom=64 << 20) == "FormatError", what


def test_metadata_nesting_and_key_types(base: fs.BaseFile, tmp_path: Path) -> None:
    meta = _meta(base)
    deep = 1
    for _ in range(33):
        deep = [deep]
    empty_at_33 = []  # the top map is level 1, "user" level 2, so 31 arrays end at level 33: too deep, empty or not
    for _ in range(30):
        empty_at_33 = [empty_at_33]
    cases = [
        ({**meta, "user": {"d": deep}}, r"metadata: maps and arrays nested deeper than 32 levels"),
        ({**meta, "user": {"d": empty_at_33}}, r"metadata: maps and arrays nested deeper than 32 levels"),
        ({**meta, 7: "x"}, r"metadata: (not valid msgpack|map key 7 is not a string)"),
        ({**meta, b"k": "x"}, r"metadata: map key b'k' is not a string"),
    ]
    for k, (value, match) in enumerate(cases):
        raw = msgpack.packb(value, use_bin_type=True, strict_types=False)
        _open_both(_write(tmp_path, _with_metadata_bytes(base, raw), f"m{k}.slbl"), match)
    # a key given twice: readers keeping the first or the last value would disagree, so it is invalid
    packer = msgpack.Packer(use_bin_type=True)
    raw = packer.pack_map_header(len(meta) + 1) + b"".join(packer.pack(k) + packer.pack(v) for k, v in meta.items())
    raw += packer.pack("vocab_size") + packer.pack(10)
    _open_both(_write(tmp_path, _with_metadata_bytes(base, raw), "dup.slbl"),
               r"key 'vocab_size' appears more than once")
    shallow = 1  # an int inside arrays up to level 32
    for _ in range(30):
        shallow = [shallow]
    ok = _write(tmp_path, _with_metadata_bytes(base, msgpack.packb({**meta, "user": {"d": shallow}})), "ok.slbl")
    with sl.open_labels(ok) as f:
        assert f.metadata["user"]["d"] == shallow


def test_format_version_is_major_dot_minor(base: fs.BaseFile, tmp_path: Path) -> None:
    """spec/FORMAT.md section 5: "<major>.<minor>"; a reader accepts any minor of its major (section 10)."""
    meta = _meta(base)
    for k, version in enumerate(["1.x", "1.", "1.0.0", "01.0", "2.0"]):
        raw = msgpack.packb({**meta, "format_version": version}, use_bin_type=True)
        _open_both(_write(tmp_path, _with_metadata_bytes(base, raw), f"v{k}.slbl"), "format_version")
    ok = _write(tmp_path, _with_metadata_bytes(base, msgpack.packb({**meta, "format_version": "1.7"})), "ok.slbl")
    with sl.open_labels(ok) as f:
        assert f.metadata["format_version"] == "1.7"


# -- never pickle ---------------------------------------------------------------------------------------------
_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}


def _package_sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_pickle_or_code_evaluation_in_the_package() -> None:
    """No module imports a pickle-like deserialiser or evaluates strings; numpy/torch loads refuse pickles."""
    problems = []
    for path in _package_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                bad = {n.split(".")[0] for n in names if n} & _FORBIDDEN_MODULES
                if bad:
                    problems.append(f"{where}: imports {sorted(bad)}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                keywords = {k.arg: k.value for k in node.keywords}
                if isinstance(func, ast.Name) and name in ("eval", "exec", "__import__"):
                    problems.append(f"{where}: calls {name}()")
                if name == "load" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    owner = func.value.id
                    if owner in ("np", "numpy") and _is_true(keywords.get("allow_pickle")):
                        problems.append(f"{where}: np.load(allow_pickle=True)")
                    if owner == "torch" and not _is_true(keywords.get("weights_only")):
                        problems.append(f"{where}: torch.load without weights_only=True")
                    if owner == "yaml":
                        problems.append(f"{where}: yaml.load")
    assert not problems, "\n".join(problems)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_msgpack_is_decoded_in_one_place_with_extension_types_refused() -> None:
    users = []
    for path in _package_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "msgpack"
                    and node.attr in ("unpackb", "unpack", "Unpacker", "loads", "load")):
                users.append(path.relative_to(PACKAGE).as_posix())
    assert users == ["format/metadata.py"], users
    source = (PACKAGE / "format" / "metadata.py").read_text()
    assert "ext_hook=_no_ext" in source and "max_ext_len=0" in source


# -- manifests ------------------------------------------------------------------------------------------------
@pytest.fixture
def shard_dir(tmp_path: Path, base: fs.BaseFile) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.slbl").write_bytes(base.data)
    (tmp_path / "sub" / "b.slbl").write_bytes(base.data)
    return tmp_path


def _manifest_with(directory: Path, path_value, name: str = "m.json") -> Path:
    manifest = sl.write_manifest(directory / name, [directory / "a.slbl"])
    body = json.loads(manifest.read_text())
    body["shards"][0]["path"] = path_value
    manifest.write_text(json.dumps(body))
    return manifest


@pytest.mark.parametrize(("value", "match"), [
    ("/etc/passwd", "leaves the manifest's directory"),
    ("../a.slbl", "leaves the manifest's directory"),
    ("sub/../../a.slbl", "leaves the manifest's directory"),
    ("sub/../../../../../../etc/passwd", "leaves the manifest's directory"),
    ("C:/windows/a.slbl", "leaves the manifest's directory"),
    ("sub\\..\\..\\a.slbl", "is not a non-empty relative path"),
    ("", "is not a non-empty relative path"),
    ("a.slbl\x00.txt", "is not a non-empty relative path"),
    (None, "field 'path' is missing or invalid"),
    (7, "field 'path' is missing or invalid"),
])
def test_manifest_entries_are_confined_to_its_directory(shard_dir: Path, value, match: str) -> None:
    manifest = _manifest_with(shard_dir, value)
    with pytest.raises(sl.FormatError, match=match):
        sl.open_labels(manifest)
    report = sl.validate(manifest)
    assert not report.ok and match.split()[-1] in str(report.problems[0])


def test_manifest_paths_inside_the_directory_work(shard_dir: Path, base: fs.BaseFile) -> None:
    manifest = sl.write_manifest(shard_dir / "m.json", [shard_dir / "a.slbl", shard_dir / "sub" / "b.slbl"])
    assert [e["path"] for e in json.loads(manifest.read_text())["shards"]] == ["a.slbl", "sub/b.slbl"]
    with sl.open_labels(manifest) as shards:
        assert len(shards) == 2 * 6
    with pytest.raises(sl.CompatibilityError, match=r"is outside the manifest's directory"):
        sl.write_manifest(shard_dir / "sub" / "m.json", [shard_dir / "a.slbl"])


HOSTILE_JSON = {
    "integer of 5000 digits": ('{"format": "sparselabels-manifest", "n": ' + "1" * 5000 + "}", "not valid JSON"),
    "arrays nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "more maps and arrays than a manifest"),
    "arrays nested 1,000 deep in a long string": ("[" * 1_000 + "]" * 1_000 + " " * 40_000, "not valid JSON"),
    "invalid UTF-8": (b'{"format": "\xff\xfe"}', "not valid JSON"),
    "a list at the top": ("[]", "not a sparselabels manifest"),
}


@pytest.mark.parametrize("what", list(HOSTILE_JSON))
def test_hostile_manifest_json(tmp_path: Path, what: str) -> None:
    text, match = HOSTILE_JSON[what]
    path = tmp_path / "m.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(sl.FormatError, match=match):
        sl.open_labels(path)
    assert not sl.validate(path).ok


def test_manifest_totals_cannot_wrap_64_bit_prefix_sums(shard_dir: Path) -> None:
    manifest = sl.write_manifest(shard_dir / "m.json", [shard_dir / "a.slbl", shard_dir / "sub" / "b.slbl"])
    body = json.loads(manifest.read_text())
    for entry in body["shards"]:
        entry["num_positions"] = (1 << 63) - 1  # each below 2**63, their sum not
        entry["bytes"] = (1 << 63) - 1  # (a file size that could hold them)
    body["num_positions"] = 2 * ((1 << 63) - 1)
    manifest.write_text(json.dumps(body))
    with pytest.raises(sl.FormatError, match=r"num_positions 18446744073709551614 is out of range \(>= 2\*\*63\)"):
        sl.open_labels(manifest)


def test_manifest_size_is_bounded(tmp_path: Path) -> None:
    from sparselabels.io.manifest import MAX_MANIFEST_BYTES

    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is written, nothing may be read
    with pytest.raises(sl.FormatError, match=rf"{MAX_MANIFEST_BYTES + 1} bytes, more than the limit"):
        sl.open_labels(path)


def test_non_regular_files_are_refused_without_blocking(shard_dir: Path) -> None:
    fifo = shard_dir / "fifo.slbl"
    os.mkfifo(fifo)
    (shard_dir / "dir.slbl").mkdir()
    def hung(signum, frame):
        raise TimeoutError("opening a FIFO blocked: non-regular files must be refused before they are read")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # opening a FIFO for reading blocks until a writer appears: a regression hangs, so fail it
    try:
        for target in (fifo, shard_dir / "dir.slbl", Path("/dev/zero")):
            for mmap in (True, False):
                with pytest.raises(sl.FormatError, match="not a regular file"):
                    sl.LabelFile(target, mmap=mmap)
        for name in ("fifo.slbl", "dir.slbl"):
            manifest = _manifest_with(shard_dir, name, f"{name}.json")
            with pytest.raises(sl.FormatError, match="not a regular file"):
                sl.open_labels(manifest)
            report = sl.validate(manifest)
            assert not report.ok and "not a regular file" in str(report.problems[0])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- numba kernels never read past an array -------------------------------------------------------------------
def test_label_checks_refuse_shapes_the_kernel_cannot_trust() -> None:
    ids = np.array([1, 2, 3], np.uint32)
    indptr = np.array([0, 3], np.int64)
    problem = check_labels(ids, np.array([50], np.uint8), indptr, vocab_size=10, value_kind="count", rounds=50)
    assert problem is not None and problem.message == "counts has 1 entries but ids has 3"
    problem = check_labels(ids, np.ones(3, np.uint8), np.zeros(0, np.int64), vocab_size=10, value_kind="count",
                           rounds=50)
    assert problem is not None and problem.message == "indptr has 0 entries; it needs num_positions + 1 >= 1"
    for bad in ([0, 4], [1, 3], [0, 2, 1, 3], [0, -5, 3], [0, 1 << 62, 3]):
        problem = check_labels(ids, np.full(3, 50, np.uint8), np.array(bad, np.int64), vocab_size=10,
                               value_kind="count", rounds=50)
        assert problem is not None and problem.field == "indptr", bad


@pytest.mark.slow
def test_fuzz_with_numba_bounds_checking(tmp_path: Path) -> None:
    """Every numba kernel recompiled with bounds checks: an out-of-bounds index from a file value would raise
    IndexError, which the fuzzer counts as a wrong exception. Also runs the shape checks above."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=tmp_path)}
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "fuzz_format.py"), "--cases-per-codec", "70", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["bugs"] == 0
    assert sum(sum(row.values()) for rows in results["table"].values() for row in rows.values()) == 70 * len(
        results["codecs"])


@pytest.mark.parametrize("codec", ["raw", "rans"])
def test_an_index_claiming_more_labels_than_its_positions_hold_is_refused_at_open(tmp_path: Path, codec) -> None:
    """Counts >= 1 sum to rounds, so a position holds at most rounds labels: an index claiming more is refused
    before any read allocates for the claim (and resume does not keep such chunks)."""
    sys.path.insert(0, str(REPO / "tools"))  # the vector builder under test
    import make_vectors

    path = tmp_path / "a.slbl"
    with sl.LabelWriter(path, vocab_size=1000, rounds=50, codec=codec) as w:
        w.write([3], [50], [0, 1])  # 1 position, 1 label
        w.write(np.arange(100), np.ones(100, np.uint8), [0, 50, 100])  # 2 positions, 100 labels
    f = make_vectors._Edit(path.read_bytes())
    f.set_col("label_start", 1, 52)  # sequence 0: 52 labels in 1 position; sequence 1: 49 in 2
    f.seal_index()
    path.write_bytes(bytes(f.data))
    with pytest.raises(sl.FormatError, match="sequence 0 claims 52 labels in 1 positions, more than the label rules"):
        sl.open_labels(path, verify="structure")


def test_metadata_of_many_empty_containers_is_refused_early(tmp_path: Path) -> None:
    """16 MiB of empty maps is valid msgpack that decodes to ~70x its size: refused at the 65,537th container,
    by the writer and by readers (which stop decoding there)."""
    from sparselabels.format import metadata as meta_format

    with pytest.raises(sl.InputError, match="more than 65536 maps and arrays"):
        sl.LabelWriter(tmp_path / "w.slbl", vocab_size=10, rounds=50, metadata={"x": [[]] * 65536})
    with sl.LabelWriter(tmp_path / "ok.slbl", vocab_size=10, rounds=50, metadata={"x": [[]] * 65534}) as w:
        w.write([1], [50], [0, 1])
    assert len(sl.open_labels(tmp_path / "ok.slbl").metadata["x"]) == 65534
    stored = meta_format.decode(meta_format.encode(sl.open_labels(tmp_path / "ok.slbl").metadata))
    stored["x"] = [{}] * 2_000_000
    with pytest.raises(sl.FormatError, match="more than 65536 maps and arrays"):
        meta_format.decode(msgpack.packb(stored, use_bin_type=True))


@pytest.mark.parametrize("codec", ["raw", "rans"])
def test_record_capacity_checks_never_wrap(codec) -> None:
    """Index or chunk-entry claims near 2**63 (CRC-sealed by a hostile writer) must fail the capacity check,
    not wrap past it: the rans bound on positions and labels together once let resume keep such a chunk."""
    from sparselabels.codecs import get_codec

    big = (1 << 63) - 1
    over = get_codec(codec).over_capacity(np.array([big, 9, big, 0]), np.array([9, big, big, 0]), np.array([8] * 4))
    assert over.tolist() == [True, True, True, False]
