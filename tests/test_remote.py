"""Label stores in object storage, against a real S3-compatible server (moto's standalone server, started here
on a free localhost port): reads equal to the local copy, the same errors for damaged objects, replaced objects
refused, DataLoader workers, generate/merge to s3://, an interrupted upload resumed, the local block cache."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from labelgen import random_sequences

import sparselabels as sl
from sparselabels.errors import ChecksumError, CompatibilityError, FormatError, InputError, OutputExistsError
from sparselabels.io.remote import OPEN_TAIL_BLOCKS

s3fs = pytest.importorskip("s3fs", reason="remote stores need the [remote] extra (s3fs, fsspec) to be tested")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (in the test extra)")

from s3_server import CREDENTIALS, DelayProxy, MotoServer  # noqa: E402


@pytest.fixture(scope="session")
def s3():
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3):
    """A fresh bucket: (s3fs filesystem, bucket name, storage options)."""
    options = s3.storage_options()
    fs = s3fs.S3FileSystem(**options)
    name = f"b{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name, options


def write_file(path: Path, seqs, *, codec: str = "rans", chunk_bytes: int = 3000, value_kind: str = "count") -> Path:
    rounds = 50 if value_kind == "count" else None
    with sl.LabelWriter(path, vocab_size=1000, rounds=rounds, value_kind=value_kind, codec=codec,
                        chunk_bytes=chunk_bytes) as w:
        for i, (ids, values, indptr) in enumerate(seqs):
            w.write(ids, values, indptr, fingerprint=1000 + i)
    return path


def make_store(directory: Path, *, codec: str = "rans", shards: int = 3, per_shard: int = 9, seed: int = 0) -> Path:
    """A shard directory with a manifest; sequences long enough to span several blocks and chunks."""
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        write_file(directory / f"part-{k}.slbl", random_sequences(seed + k, per_shard, max_positions=300), codec=codec)
    sl.write_manifest(directory / "manifest.json", sorted(directory.glob("*.slbl")))
    return directory


def upload(fs, local: Path, key: str) -> None:
    if local.is_dir():
        for p in sorted(local.iterdir()):
            fs.put_file(str(p), f"{key}/{p.name}")
    else:
        fs.put_file(str(local), key)


def assert_same_store(remote, local) -> None:
    assert len(remote) == len(local) and remote.num_positions == local.num_positions
    assert remote.num_labels == local.num_labels and remote.metadata == local.metadata
    for i in range(len(local)):
        a, b = remote[i], local[i]
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.counts, b.counts), i
        assert np.array_equal(a.indptr, b.indptr) and a.fingerprint == b.fingerprint, i


def small_blocks(**kw):
    """Options that make tiny test files span many blocks (so coalescing and multi-block views are exercised)."""
    return {"block_size": 4096, **kw}


# -- reading ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["raw", "rans"])
def test_file_directory_and_manifest_read_as_locally(bucket, tmp_path, codec):
    fs, name, options = bucket
    store = make_store(tmp_path / "store", codec=codec)
    upload(fs, store, f"{name}/labels")
    local = sl.open_labels(store)
    for url in (f"s3://{name}/labels/part-1.slbl", f"s3://{name}/labels", f"s3://{name}/labels/",
                f"s3://{name}/labels/manifest.json"):
        with sl.open_labels(url, storage_options=options, **small_blocks()) as remote:
            expected = local.shard(1) if url.endswith(".slbl") else local
            assert_same_store(remote, expected)
            order = [5, 0, len(expected) - 1, 3, 5]
            for got, i in zip(remote.read_many(order), order, strict=True):  # batched, coalesced reads
                assert np.array_equal(got.ids, expected[i].ids) and np.array_equal(got.indptr, expected[i].indptr)
            p = expected.positions(7, expected.num_positions - 3)
            q = remote.positions(7, expected.num_positions - 3)
            assert np.array_equal(p.ids, q.ids) and np.array_equal(p.counts, q.counts)
        report = sl.validate(url, storage_options=options)
        assert report.ok and report.num_sequences == len(expected), report.problems


def test_a_directory_without_manifest_and_its_checks(bucket, tmp_path):
    fs, name, options = bucket
    store = make_store(tmp_path / "store")
    (store / "manifest.json").unlink()
    upload(fs, store, f"{name}/dir")
    with sl.open_labels(f"s3://{name}/dir", storage_options=options) as remote:
        assert_same_store(remote, sl.open_labels(store))
    fs.pipe_file(f"{name}/dir/part-9.slbl.partial", b"unfinished")
    with pytest.raises(FormatError, match="unfinished label file"):
        sl.open_labels(f"s3://{name}/dir", storage_options=options)


def test_a_prefix_named_like_a_shard_is_refused_as_a_local_directory_is(bucket, tmp_path):
    """Locally a *.slbl that is not a regular file (a directory, a dangling link) is refused: skipping it would
    read as a smaller dataset. A prefix ``x.slbl/`` beside the shards is the same thing in a bucket."""
    fs, name, options = bucket
    store = make_store(tmp_path / "store")
    (store / "manifest.json").unlink()
    upload(fs, store, f"{name}/dir")
    fs.pipe_file(f"{name}/dir/part-5.slbl/inner", b"not a shard")
    with pytest.raises(FormatError, match=r"part-5\.slbl, not a regular file"):
        sl.open_labels(f"s3://{name}/dir", storage_options=options)
    (store / "part-5.slbl").mkdir()
    with pytest.raises(FormatError, match=r"part-5\.slbl, not a regular file"):
        sl.open_labels(store)


def test_manifest_shard_missing_or_resized_is_refused(bucket, tmp_path):
    fs, name, options = bucket
    store = make_store(tmp_path / "store")
    upload(fs, store, f"{name}/m")
    fs.rm_file(f"{name}/m/part-2.slbl")
    with pytest.raises(FormatError, match=r"part-2\.slbl.*file is missing"):
        sl.open_labels(f"s3://{name}/m/manifest.json", storage_options=options)
    fs.put_file(str(store / "part-0.slbl"), f"{name}/m/part-2.slbl")
    with pytest.raises(FormatError, match="the shard changed"):
        sl.open_labels(f"s3://{name}/m/manifest.json", storage_options=options)


def test_manifest_paths_resolve_as_locally(bucket, tmp_path):
    """spec/MANIFEST.md §2: a shard path is resolved against the manifest's directory; "./part-0.slbl" or
    "sub//x.slbl" name the same file at a URL as on disk."""
    import json

    fs, name, options = bucket
    store = make_store(tmp_path / "store", shards=2, per_shard=3)
    (store / "sub").mkdir()
    (store / "part-1.slbl").rename(store / "sub" / "part-1.slbl")
    body = json.loads((store / "manifest.json").read_text())
    body["shards"][0]["path"], body["shards"][1]["path"] = "./part-0.slbl", "sub//part-1.slbl"
    (store / "manifest.json").write_text(json.dumps(body))
    fs.put(str(store), f"{name}/m", recursive=True)
    local = sl.open_labels(store)
    with sl.open_labels(f"s3://{name}/m/manifest.json", storage_options=options) as remote:
        assert_same_store(remote, local)


def test_manifest_errors_name_the_url(bucket, tmp_path):
    """A FormatError's ``path`` is the URL given (as it is the path given locally), not fsspec's inner path."""
    fs, name, options = bucket
    fs.pipe_file(f"{name}/bad/manifest.json", b"{not json")
    url = f"s3://{name}/bad/manifest.json"
    with pytest.raises(FormatError, match="not valid JSON") as info:
        sl.open_labels(url, storage_options=options)
    assert info.value.path == url
    store = make_store(tmp_path / "store", shards=2, per_shard=3)
    upload(fs, store, f"{name}/m")
    fs.rm_file(f"{name}/m/part-1.slbl")
    with pytest.raises(FormatError, match="file is missing") as info:
        sl.open_labels(f"s3://{name}/m", storage_options=options)
    assert info.value.path == f"s3://{name}/m/part-1.slbl"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def _error_of(fn):
    try:
        fn()
    except FormatError as exc:
        return exc
    raise AssertionError("no error raised")


@pytest.mark.parametrize("where", ["record", "index", "metadata", "truncated"])
def test_damaged_objects_raise_what_local_files_raise(bucket, tmp_path, where):
    fs, name, options = bucket
    good = write_file(tmp_path / "good.slbl", random_sequences(3, 12, max_positions=200)).read_bytes()
    with sl.LabelFile(tmp_path / "good.slbl") as f:
        record_at = int(f.index_column("record_offset")[5]) + 3
        index_at = f.footer.index_offset + 9
    bad = {"record": _flip(good, record_at), "index": _flip(good, index_at), "metadata": _flip(good, 70),
           "truncated": good[: len(good) // 2]}[where]
    local = tmp_path / "bad.slbl"
    local.write_bytes(bad)
    url = f"s3://{name}/bad.slbl"
    fs.pipe_file(f"{name}/bad.slbl", bad)

    def read_all(path, **kw):
        with sl.open_labels(path, **kw) as f:
            for i in range(len(f)):
                f.read(i)

    expected = _error_of(lambda: read_all(local))
    got = _error_of(lambda: read_all(url, storage_options=options, **small_blocks()))
    assert type(got) is type(expected)
    assert str(got) == str(expected).replace(repr(str(local)), repr(url))
    if where == "record":
        assert isinstance(got, ChecksumError)
        report = sl.validate(url, storage_options=options)
        assert not report.ok and "CRC-32 mismatch" in str(report.problems[0])


def test_an_object_replaced_while_open_is_refused(bucket, tmp_path):
    fs, name, options = bucket
    a = write_file(tmp_path / "a.slbl", random_sequences(1, 150, max_positions=400))
    b = write_file(tmp_path / "b.slbl", random_sequences(2, 150, max_positions=400))
    assert a.stat().st_size > 4 * OPEN_TAIL_BLOCKS * small_blocks()["block_size"]  # most is fetched after the open
    fs.put_file(str(a), f"{name}/x.slbl")
    f = sl.open_labels(f"s3://{name}/x.slbl", storage_options=options, **small_blocks())
    f.read(0)
    fs.put_file(str(b), f"{name}/x.slbl")
    with pytest.raises(FormatError, match="changed while open"):
        for i in range(len(f)):  # the first read needing bytes not fetched before goes to the store
            f.read(i)


def test_a_read_racing_with_close_says_closed(bucket, tmp_path):
    """As locally (test_reader_integrity): a read that took the open file just before another thread closed it
    either finishes or raises ``ValueError: ... closed`` (ClosedError), never an AttributeError of the client."""
    from sparselabels.errors import ClosedError

    fs, name, options = bucket
    write_file(tmp_path / "a.slbl", random_sequences(0, 12, max_positions=300))
    fs.put_file(str(tmp_path / "a.slbl"), f"{name}/a.slbl")
    f = sl.open_labels(f"s3://{name}/a.slbl", storage_options=options, memory_bytes=0, **small_blocks())
    src, col, _ = f._snapshot()  # what a reading thread holds when close() comes
    f.close()
    with pytest.raises(ClosedError, match="closed"):
        f._record_bytes(3, src, col)


def test_replaced_objects_in_stores_without_etag_checks(tmp_path):
    """Stores other than S3 (here fsspec's memory store) have the footer fetched beside every fetch."""
    import fsspec

    mem = fsspec.filesystem("memory")
    a = write_file(tmp_path / "a.slbl", random_sequences(1, 150, max_positions=400))
    b = write_file(tmp_path / "b.slbl", random_sequences(2, 150, max_positions=400))
    assert a.stat().st_size > 4 * OPEN_TAIL_BLOCKS * small_blocks()["block_size"]  # most is fetched after the open
    mem.pipe_file("/t/x.slbl", a.read_bytes())
    f = sl.open_labels("memory://t/x.slbl", **small_blocks())
    assert_same_store(f, sl.open_labels(a))
    f = sl.open_labels("memory://t/x.slbl", **small_blocks())
    f.read(0)
    mem.pipe_file("/t/x.slbl", b.read_bytes())
    with pytest.raises(FormatError, match="changed while open"):
        for i in range(len(f)):
            f.read(i)


# -- training -----------------------------------------------------------------------------------------------
def test_dataloader_workers_read_the_remote_store_as_the_local_one(bucket, tmp_path):
    from torch.utils.data import DataLoader

    from sparselabels.data import ResumableSampler, SparseLabelCollator, SparseLabelDataset

    fs, name, options = bucket
    store = make_store(tmp_path / "store", shards=3, per_shard=30)  # shards of many blocks
    upload(fs, store, f"{name}/dl")
    cache = tmp_path / "cache"  # shared by the workers, which fill it at the same time
    remote = SparseLabelDataset(sl.open_labels(f"s3://{name}/dl/", storage_options=options, cache_dir=cache,
                                               **small_blocks()))
    local = SparseLabelDataset(store)
    clone = pickle.loads(pickle.dumps(remote))  # by URL and options, reopened here
    assert clone[4].ids.tolist() == local[4].ids.tolist()
    assert remote[0].ids.tolist() == local[0].ids.tolist()  # forked workers inherit an open shard and its pool

    def batches(ds, workers):
        sampler = ResumableSampler(len(ds), shuffle=True, seed=5)
        return list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers,
                               collate_fn=SparseLabelCollator()))

    got, expected = batches(remote, 2), batches(local, 0)
    assert len(got) == len(expected) == 23
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for key in e:
            assert np.array_equal(g[key].numpy(), e[key].numpy()), key
    blocks = [p for p in cache.rglob("*") if p.is_file()]
    assert blocks and not [p for p in blocks if p.name.endswith(".tmp")]  # only complete blocks, renamed in
    again = SparseLabelDataset(sl.open_labels(f"s3://{name}/dl/", storage_options=options, cache_dir=cache,
                                              **small_blocks()))
    assert [again[i].ids.tolist() for i in range(len(local))] == [local[i].ids.tolist() for i in range(len(local))]


def test_cache_dir_serves_a_second_epoch_locally_and_never_a_replaced_object(bucket, tmp_path):
    fs, name, options = bucket
    store = make_store(tmp_path / "store", per_shard=40)
    upload(fs, store, f"{name}/c")
    url, cache = f"s3://{name}/c/", tmp_path / "cache"
    first = sl.open_labels(url, storage_options=options, cache_dir=cache, **small_blocks())
    assert_same_store(first, sl.open_labels(store))
    cold = first.remote_stats()
    assert cold["requests"] > 6 and cold["disk_hits"] == 0
    second = sl.open_labels(url, storage_options=options, cache_dir=cache, **small_blocks())  # a new process's view
    assert_same_store(second, sl.open_labels(store))
    warm = second.remote_stats()
    assert warm["requests"] == 0  # every byte came from the cache (opening a shard asks only for its size and ETag)
    assert warm["disk_hits"] > 0
    # a damaged cache file is a miss, fetched again, never read as labels (even unchecked)
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    for p in files[::3]:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    damaged = sl.open_labels(url, storage_options=options, cache_dir=cache, **small_blocks())
    local = sl.open_labels(store)
    for i in range(len(local)):
        assert damaged.read(i, check=False).ids.tolist() == local[i].ids.tolist()
    assert damaged.remote_stats()["requests"] > 0
    # a replaced shard is another object: its blocks are fetched, never taken from the old one's cache entries
    other = write_file(tmp_path / "other.slbl", random_sequences(50, 9, max_positions=300))
    fs.put_file(str(other), f"{name}/c/part-0.slbl")
    fs.rm_file(f"{name}/c/manifest.json")
    third = sl.open_labels(url, storage_options=options, cache_dir=cache, **small_blocks())
    assert_same_store(third.shard(0), sl.open_labels(other))


def test_cache_dir_stays_within_its_bound(bucket, tmp_path):
    fs, name, options = bucket
    store = make_store(tmp_path / "store", shards=2, per_shard=40)
    upload(fs, store, f"{name}/b")
    cache, bound = tmp_path / "cache", 32 << 10
    labels = sl.open_labels(f"s3://{name}/b/", storage_options=options, cache_dir=cache, cache_dir_bytes=bound,
                            **small_blocks())
    for i in range(len(labels)):
        labels.read(i)
    held = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert 0 < held <= bound * 9 // 8  # checked after every eighth of the bound written
    assert sum(store.joinpath(f"part-{k}.slbl").stat().st_size for k in range(2)) > 2 * bound


def test_an_https_object_of_unknown_size_is_a_format_error(tmp_path):
    """A server that sends no Content-Length: fsspec reports size None; a clear FormatError (it was a raw
    TypeError from int(None)), since every read is a byte range counted from the end."""
    import http.server
    import threading

    data = write_file(tmp_path / "a.slbl", random_sequences(0, 2)).read_bytes()

    class NoLength(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no Content-Length

        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLength)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/a.slbl"
    try:
        with pytest.raises(FormatError, match="size") as info:
            sl.open_labels(url)
        assert info.value.path == url
    finally:
        server.shutdown()
        server.server_close()


def test_urls_without_fsspec_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # what an install without the extra has
    with pytest.raises(ImportError, match=r"sparselabels\[remote\]"):
        sl.open_labels("s3://bucket/labels/")


def test_remote_options_on_local_paths_are_refused(tmp_path):
    path = write_file(tmp_path / "a.slbl", random_sequences(0, 2))
    with pytest.raises(InputError, match=r"storage_options.*apply to URLs"):
        sl.open_labels(path, storage_options={"anon": True})
    with pytest.raises(InputError, match=r"storage_options.*apply to URLs"):  # validate opens as open_labels does
        sl.validate(path, storage_options={"anon": True})
    for copy in (False, True):  # as generate refuses them for a local output, not silently ignored
        out = tmp_path / ("m.slbl" if copy else "m.json")
        with pytest.raises(InputError, match="storage_options apply to an output URL"):
            sl.merge(out, [path], copy=copy, storage_options={"anon": True})
        assert not out.exists()


def test_the_cli_reads_urls(s3, bucket, tmp_path):
    """docs/remote.md: `sparselabels info|stats|validate s3://...`; validate once called a URL "not found" (it
    looked for a local path); a missing object is "not found" (exit 2) as a missing local path is."""
    from pipeline_fixtures import cli, subprocess_env

    fs, name, _ = bucket
    upload(fs, make_store(tmp_path / "store", shards=2, per_shard=3), f"{name}/labels")
    env = {**subprocess_env(), **s3.env(), "PYTHONPATH": os.pathsep.join([str(Path(sl.__file__).parents[1]),
                                                                          os.environ.get("PYTHONPATH", "")])}
    for command in ("validate", "info", "stats"):
        done = subprocess.run([*cli(), command, f"s3://{name}/labels"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    done = subprocess.run([*cli(), "validate", f"s3://{name}/labels"], env=env, capture_output=True, text=True)
    assert "valid (2 file(s), 6 sequences" in done.stdout
    done = subprocess.run([*cli(), "validate", f"s3://{name}/nothing.slbl"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "not found" in done.stderr, done.stderr


# -- writing ------------------------------------------------------------------------------------------------
def test_merge_copy_to_a_url(bucket, tmp_path):
    fs, name, options = bucket
    store = make_store(tmp_path / "store")
    url = f"s3://{name}/merged.slbl"
    sl.merge(url, [store], copy=True, storage_options=options)
    sl.merge(tmp_path / "merged.slbl", [store], copy=True)
    assert fs.cat_file(f"{name}/merged.slbl") == (tmp_path / "merged.slbl").read_bytes()
    with pytest.raises(OutputExistsError, match="exists"):
        sl.merge(url, [store], copy=True, storage_options=options)


def test_merge_to_a_url_refuses_inputs_that_share_a_random_stream(bucket, tmp_path, monkeypatch):
    """As a local merge does: two inputs that drew the same rows of one stream are refused, nothing uploaded."""
    fs, name, options = bucket
    stream = {"random_stream": {"key": "00000000000000ab", "first_row": 0}}
    for part in ("a.slbl", "b.slbl"):
        with sl.LabelWriter(tmp_path / part, vocab_size=300, rounds=50, metadata=stream) as w:
            w.write([1, 2], [25, 25], [0, 2])
    url = f"s3://{name}/m.slbl"
    with pytest.raises(CompatibilityError, match="drew the same random numbers"):
        sl.merge(url, [tmp_path / "a.slbl", tmp_path / "b.slbl"], copy=True, storage_options=options)
    fs.invalidate_cache()
    assert not fs.exists(f"{name}/m.slbl")
    import fsspec

    monkeypatch.setitem(fsspec.config.conf, "s3", options)  # URL inputs are read with fsspec's configuration
    for part in ("a.slbl", "b.slbl"):  # inputs at URLs are named by their URLs
        fs.put_file(str(tmp_path / part), f"{name}/in/{part}")
    with pytest.raises(CompatibilityError, match=f"inputs 's3://{name}/in/a.slbl' and 's3://{name}/in/b.slbl'"):
        sl.merge(tmp_path / "m.slbl", [f"s3://{name}/in/a.slbl", f"s3://{name}/in/b.slbl"], copy=True)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from pipeline_fixtures import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.mark.slow
def test_generate_to_s3_equals_a_local_run(bucket, tmp_path, llama, monkeypatch):
    from pipeline_fixtures import random_tokens

    fs, name, options = bucket
    monkeypatch.setenv("SPARSELABELS_STAGING_DIR", str(tmp_path / "staging"))
    tokens = random_tokens(6, 24)
    kw = {"rounds": 20, "batch_size": 4, "dtype": "float32", "device": "cpu", "progress": False}
    sl.generate(llama, tokens, tmp_path / "local", **kw)
    url = sl.generate(llama, tokens, f"s3://{name}/run", storage_options=options, **kw)
    assert url == f"s3://{name}/run"
    local_shard = tmp_path / "local" / "shard-00000-of-00001.slbl"
    assert fs.cat_file(f"{name}/run/shard-00000-of-00001.slbl") == local_shard.read_bytes()
    with sl.open_labels(url, storage_options=options) as remote:
        assert_same_store(remote, sl.open_labels(tmp_path / "local"))
    with pytest.raises(OutputExistsError, match="exists"):
        sl.generate(llama, tokens, url, storage_options=options, **kw)


@pytest.mark.slow
def test_an_upload_killed_midway_leaves_no_manifest_and_resumes(s3, bucket, tmp_path, llama):
    from pipeline_fixtures import cli, random_tokens, subprocess_env

    fs, name, options = bucket
    np.save(tmp_path / "tokens.npy", random_tokens(6, 24))
    args = [*cli(), "generate", "--model", str(llama), "--tokens", str(tmp_path / "tokens.npy"),
            "--out", f"s3://{name}/run", "--rounds", "20", "--batch-size", "4", "--dtype", "float32",
            "--device", "cpu", "--no-progress"]
    env = {**subprocess_env(), "PYTHONPATH": os.pathsep.join([str(Path(sl.__file__).parents[1]),
                                                              os.environ.get("PYTHONPATH", "")]),
           "SPARSELABELS_STAGING_DIR": str(tmp_path / "staging")}
    proxy = DelayProxy(s3.port, delay=1.0)  # every request held a second: the kill lands inside the upload
    try:
        proc = subprocess.Popen(args, env={**env, **s3.env(proxy.endpoint)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while b"PUT" not in proxy.methods and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"PUT" in proxy.methods, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proxy.stop()
    fs.invalidate_cache()
    assert not fs.exists(f"{name}/run/manifest.json")
    with pytest.raises((FormatError, FileNotFoundError)):  # nothing there, or shards without their manifest
        sl.open_labels(f"s3://{name}/run", storage_options=options)
    staged = list((tmp_path / "staging").rglob("shard-00000-of-00001.slbl"))
    assert len(staged) == 1  # the labels themselves were finished locally before the upload began
    # without --resume the staged shard is not silently reused; with it, only the upload is redone
    again = subprocess.run(args, env={**env, **s3.env()}, capture_output=True, text=True)
    assert again.returncode != 0 and "resume" in again.stderr
    done = subprocess.run([*args, "--resume"], env={**env, **s3.env()}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with sl.open_labels(f"s3://{name}/run/manifest.json", storage_options=options) as remote:
        assert_same_store(remote, sl.open_labels(staged[0]))
