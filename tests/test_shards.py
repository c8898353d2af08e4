"""Shard sets: manifests, directories, merge by manifest and by copy, compatibility and confinement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from labelgen import assert_same, random_sequences

import sparselabels as sl
from sparselabels.errors import CompatibilityError, FormatError, InputError
from sparselabels.io.shards import LabelShards


def make_shards(directory, count=3, per_shard=7, *, fingerprints=True, **meta):
    directory.mkdir(parents=True, exist_ok=True)
    all_seqs, paths = [], []
    for k in range(count):
        seqs = random_sequences(100 + k, per_shard, vocab_size=300)
        path = directory / f"shard-{k:05d}.slbl"
        with sl.LabelWriter(path, vocab_size=300, rounds=50, chunk_bytes=800,
                            metadata={"teacher": "t", "seed": k, **meta}) as w:
            for i, s in enumerate(seqs):
                w.write(*s, fingerprint=k * 1000 + i if fingerprints else None)
        all_seqs += seqs
        paths.append(path)
    return paths, all_seqs


def check_content(labels, seqs):
    assert len(labels) == len(seqs)
    assert labels.num_positions == sum(len(s[2]) - 1 for s in seqs)
    for i, s in enumerate(seqs):
        assert_same(labels[i], s)


def test_manifest_and_directory(tmp_path):
    paths, seqs = make_shards(tmp_path / "d")
    with sl.open_labels(tmp_path / "d") as labels:  # no manifest: the *.slbl files in name order
        assert isinstance(labels, LabelShards)
        check_content(labels, seqs)
        assert labels.metadata["teacher"] == "t" and "seed" not in labels.metadata  # seeds differ per shard
    out = sl.merge(tmp_path / "d" / "manifest.json", paths)
    body = json.loads(out.read_text())
    assert [e["path"] for e in body["shards"]] == [p.name for p in paths]
    for opener in (tmp_path / "d", out):
        with sl.open_labels(opener, max_open=1) as labels:
            check_content(labels, seqs)
            assert labels.fingerprints.tolist()[7:9] == [1000, 1001]
            assert np.array_equal(labels.sequence_lengths, [len(s[2]) - 1 for s in seqs])
            block = labels.positions(5, labels.num_positions - 3)
            assert block.num_positions == labels.num_positions - 8
    assert sl.validate(out).ok


def test_merge_copy_equals_inputs_and_keeps_chunks(tmp_path):
    paths, seqs = make_shards(tmp_path / "d")
    out = sl.merge(tmp_path / "merged.slbl", paths, copy=True)
    with sl.open_labels(out, verify="full") as merged:
        check_content(merged, seqs)
        assert merged.fingerprints.tolist()[:2] == [0, 1]
        assert merged.metadata["teacher"] == "t"
        assert [m["seed"] for m in merged.metadata["merged_from"]] == [0, 1, 2]
        inputs = [sl.LabelFile(p) for p in paths]
        assert merged.num_chunks == sum(f.num_chunks for f in inputs)
    # A merged file can itself be merged again, and a manifest input works like its files.
    sl.merge(tmp_path / "d" / "manifest.json", paths)
    again = sl.merge(tmp_path / "again.slbl", [tmp_path / "d" / "manifest.json", out], copy=True)
    with sl.open_labels(again) as f:
        check_content(f, seqs + seqs)


@pytest.mark.parametrize("key,value", [("teacher", "other"), ("tokenizer_fingerprint", "abc"),
                                       ("temperature", 2.0)])
def test_merge_refuses_incompatible_shards(tmp_path, key, value):
    a, _ = make_shards(tmp_path / "a", count=1)
    b, _ = make_shards(tmp_path / "b", count=1, **{key: value})
    for copy in (False, True):
        with pytest.raises(CompatibilityError, match=key):
            sl.merge(tmp_path / "out.json" if not copy else tmp_path / "out.slbl", a + b, copy=copy)


def test_merge_refuses_other_vocab_and_mixed_fingerprints(tmp_path):
    a, _ = make_shards(tmp_path / "a", count=1)
    other = tmp_path / "a" / "v.slbl"
    with sl.LabelWriter(other, vocab_size=301, rounds=50, metadata={"teacher": "t"}) as w:
        w.write([1], [50], [0, 1], fingerprint=1)
    with pytest.raises(CompatibilityError, match="vocab_size is 301"):
        sl.merge(tmp_path / "a" / "m.json", [*a, other])
    c, _ = make_shards(tmp_path / "c", count=1, fingerprints=False)
    with pytest.raises(CompatibilityError, match="fingerprints"):
        sl.merge(tmp_path / "x.slbl", a + c, copy=True)
    # the same set as a directory without a manifest (it read back without fingerprints)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copyfile(a[0], mixed / "shard-00000.slbl")
    shutil.copyfile(c[0], mixed / "shard-00001.slbl")
    with pytest.raises(CompatibilityError, match="fingerprints"):
        sl.open_labels(mixed)


def test_a_manifest_is_named_json(tmp_path):
    """Under a label file's name, a manifest makes its directory unreadable (it opens as a corrupt label file)."""
    a, _ = make_shards(tmp_path, count=1)
    for write in (lambda out: sl.write_manifest(out, a), lambda out: sl.merge(out, a)):
        with pytest.raises(InputError, match=r"name it \*\.json"):
            write(tmp_path / "set.slbl")
        assert not (tmp_path / "set.slbl").exists()


def test_manifest_confinement_and_staleness(tmp_path):
    paths, _ = make_shards(tmp_path / "d", count=2)
    with pytest.raises(CompatibilityError, match="outside the manifest's directory"):
        sl.merge(tmp_path / "d" / "sub" / "manifest.json", paths)
    manifest = sl.merge(tmp_path / "d" / "manifest.json", paths)
    body = json.loads(manifest.read_text())
    for evil in ["/etc/passwd", "../d/shard-00000.slbl", "a/../../x.slbl", "", "C:\\x.slbl"]:
        body["shards"][0]["path"] = evil
        bad = tmp_path / "d" / "evil.json"
        bad.write_text(json.dumps(body))
        with pytest.raises(FormatError, match="shard path"):
            sl.open_labels(bad)
    # A shard replaced after the manifest was written is caught: by its size when the manifest is opened (the
    # counts behind len() are bounded by the sizes), by its footer when the shard is opened.
    data = paths[1].read_bytes()
    with sl.LabelWriter(paths[1], vocab_size=300, rounds=50, overwrite=True, metadata={"teacher": "t"}) as w:
        w.write([1], [50], [0, 1], fingerprint=3)
    with pytest.raises(FormatError, match=r"shard 1 .*bytes is 504, the manifest says 3048; the shard changed"):
        sl.open_labels(manifest)
    paths[1].write_bytes(data[:-64] + bytes(a ^ 1 for a in data[-64:]))  # same size, another footer
    with sl.open_labels(manifest) as labels, pytest.raises(FormatError, match=r"shard-00001.slbl"):
        labels[len(labels) - 1]
    paths[0].unlink()
    with pytest.raises(FormatError, match=r"shard 0 .*missing"):
        sl.open_labels(manifest)


def test_manifest_counts_are_bounded_by_the_shard_sizes(tmp_path):
    """len() comes from the manifest before any shard is opened: a claim of 2**62 sequences for a 6-sequence
    shard made samplers allocate until memory ran out."""
    paths, _ = make_shards(tmp_path / "d", count=1)
    manifest = sl.merge(tmp_path / "d" / "manifest.json", paths)
    body = json.loads(manifest.read_text())
    for key in ("num_sequences", "num_positions", "num_labels"):
        evil = json.loads(json.dumps(body))
        evil["shards"][0][key] = evil[key] = 1 << 40
        (tmp_path / "d" / "evil.json").write_text(json.dumps(evil))
        with pytest.raises(FormatError, match=r"more than a .*-byte file holds"):
            sl.open_labels(tmp_path / "d" / "evil.json")
    evil = json.loads(json.dumps(body))
    evil["shards"][0]["bytes"] = 1 << 50  # and the size must be the file's
    (tmp_path / "d" / "evil.json").write_text(json.dumps(evil))
    with pytest.raises(FormatError, match="the manifest says 1125899906842624"):
        sl.open_labels(tmp_path / "d" / "evil.json")
    (tmp_path / "d" / "bomb.json").write_text("[" + "{}," * 100_000 + "{}]")
    with pytest.raises(FormatError, match="more maps and arrays than a manifest"):
        sl.open_labels(tmp_path / "d" / "bomb.json")


def test_malformed_manifests(tmp_path):
    bad = tmp_path / "m.json"
    for text in ["{", "[]", '{"format": "other"}',
                 '{"format": "sparselabels-manifest", "manifest_version": 1, "shards": [], "metadata": {}}',
                 '{"format": "sparselabels-manifest", "manifest_version": 1, "metadata": {}, '
                 '"shards": [{"path": "a.slbl", "bytes": -1}]}']:
        bad.write_text(text)
        with pytest.raises(FormatError):
            sl.open_labels(bad)


def test_manifest_booleans_and_floats_are_not_integers(tmp_path):
    """The spec: true/false are not integers; manifest_version true (== 1 in Python) or totals given as true or
    1.0 are refused, as they are in a shard entry."""
    paths, _ = make_shards(tmp_path / "d", count=1)
    manifest = sl.merge(tmp_path / "d" / "manifest.json", paths)
    body = json.loads(manifest.read_text())
    evil_path = tmp_path / "d" / "evil.json"
    cases = [("manifest_version", True), ("manifest_version", 1.0)]
    cases += [(key, float(body[key])) for key in ("num_sequences", "num_positions", "num_labels")]
    for key, value in cases:
        evil = json.loads(json.dumps(body))
        evil[key] = value
        evil_path.write_text(json.dumps(evil))
        with pytest.raises(FormatError, match=key) as info:
            sl.open_labels(evil_path)
        assert info.value.field == key
    one = json.loads(json.dumps(body))  # a one-sequence shard: num_sequences true equals its sum in Python
    one["shards"][0]["num_sequences"] = 1
    one["num_sequences"] = True
    evil_path.write_text(json.dumps(one))
    with pytest.raises(FormatError, match="num_sequences"):
        sl.open_labels(evil_path)


def test_a_manifest_that_is_not_a_regular_file_is_refused_not_waited_on(tmp_path):
    """A FIFO named *.json blocked open_labels and `sparselabels validate` forever (a label file there is refused
    as not a regular file); run in a subprocess with a timeout so the old behaviour fails instead of hanging."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "m.json")
    code = ("import sparselabels as sl\ntry:\n    sl.open_labels('m.json')\n"
            "except sl.FormatError as exc:\n    print(exc)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(sl.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("open_labels waited on a FIFO") from None
    assert "m.json" in done.stdout and "not a regular file" in done.stdout, done.stderr


def test_a_local_manifest_over_url_inputs_is_refused_up_front(tmp_path, monkeypatch):
    """A manifest lists files relative to its directory: a URL input became a local path "s3:/bucket/..." and
    failed with a confusing FileNotFoundError after the inputs were read; it is refused before anything is read."""
    from sparselabels.errors import InputError

    monkeypatch.chdir(tmp_path)
    paths, _ = make_shards(tmp_path / "d", count=1)
    with pytest.raises(InputError, match="copy=True"):
        sl.merge("m.json", [paths[0], "s3://bucket/labels/part.slbl"])
    assert not (tmp_path / "m.json").exists()


def test_a_shard_path_through_a_file_is_missing_not_a_raw_oserror(tmp_path):
    """A manifest naming "part.slbl/x.slbl" where part.slbl is a file: stat() raises NotADirectoryError, which
    escaped open_labels raw; it is a missing shard like any other."""
    paths, _ = make_shards(tmp_path / "d", count=1)
    body = json.loads(sl.merge(tmp_path / "d" / "manifest.json", paths).read_text())
    body["shards"][0]["path"] = paths[0].name + "/x.slbl"
    (tmp_path / "d" / "evil.json").write_text(json.dumps(body))
    with pytest.raises(FormatError, match=r"shard 0 .*file is missing"):
        sl.open_labels(tmp_path / "d" / "evil.json")


def test_shard_sets_pickle_and_reopen(tmp_path):
    import pickle

    paths, seqs = make_shards(tmp_path / "d", count=2)
    manifest = sl.merge(tmp_path / "d" / "manifest.json", paths)
    labels = sl.open_labels(manifest)
    clone = pickle.loads(pickle.dumps(labels))
    assert_same(clone[9], seqs[9])
    single = pickle.loads(pickle.dumps(sl.open_labels(paths[0])))
    assert_same(single[2], seqs[2])


def test_shard_sets_are_thread_safe_and_evict_without_closing(tmp_path):
    """Four threads reading at random with max_open=1 (every read may evict the shard another thread is reading),
    with the interpreter switching threads as often as it can: every read matches and none fails (an unlocked cache
    raised KeyError, 'file is closed', EBADF or ChecksumError on thousands of these reads)."""
    import sys
    import threading

    _, seqs = make_shards(tmp_path / "d", count=4, per_shard=5)
    errors, mismatches = [], []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for mmap in (True, False):
            labels = sl.open_labels(tmp_path / "d", max_open=1, mmap=mmap)

            def work(seed, labels=labels):
                rng = np.random.default_rng(seed)
                for i in rng.integers(0, len(seqs), size=1500):
                    try:
                        s = labels[int(i)]
                    except Exception as exc:  # every failure is collected and reported
                        errors.append(repr(exc))
                        continue
                    if not (np.array_equal(s.ids, seqs[i][0]) and np.array_equal(s.counts, seqs[i][1])):
                        mismatches.append(int(i))

            threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            labels.close()
    finally:
        sys.setswitchinterval(interval)
    assert errors[:5] == [] and mismatches[:5] == []


def test_directory_sets_keep_at_most_max_open(tmp_path):
    make_shards(tmp_path / "d", count=6, per_shard=2)
    fds = Path("/proc/self/fd")
    before = len(list(fds.iterdir()))
    opened_at_once = []
    real_init = sl.LabelFile.__init__

    def counting_init(self, *args, **kwargs):  # descriptors in use as each shard is opened
        real_init(self, *args, **kwargs)
        opened_at_once.append(len(list(fds.iterdir())) - before)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sl.LabelFile, "__init__", counting_init)
        labels = sl.open_labels(tmp_path / "d", max_open=2)
    with labels:
        # the directory's files are opened to count them, never more than 2 at a time (600 shards under a
        # limit of 1,024 descriptors could not be opened)
        assert len(labels._open) == 2 and max(opened_at_once) <= 3
        assert [labels[i].ids.tolist() for i in range(12)] == [labels[i].ids.tolist() for i in range(12)]
        assert len(labels._open) == 2
    for bad in (0, -3, 2.5, "3"):
        with pytest.raises(sl.InputError, match="max_open"):
            sl.open_labels(tmp_path / "d", max_open=bad)
    with pytest.raises(sl.InputError, match="max_sequence_positions"):
        sl.open_labels(tmp_path / "d", max_sequence_positions=2.5)


def test_closed_shard_sets_refuse_reads_and_pickling(tmp_path):
    import pickle

    make_shards(tmp_path / "d")
    labels = sl.open_labels(tmp_path / "d")
    labels.close()
    with pytest.raises(ValueError, match="closed"):
        labels[0]
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(labels)


def test_max_sequence_positions_reaches_every_shard(tmp_path):
    _, seqs = make_shards(tmp_path / "d", count=2, per_shard=3)
    longest = max(len(s[2]) - 1 for s in seqs)
    sl.write_manifest(tmp_path / "d" / "manifest.json", sorted((tmp_path / "d").glob("*.slbl")))
    for target in (tmp_path / "d", tmp_path / "d" / "manifest.json", tmp_path / "d" / "shard-00000.slbl"):
        with sl.open_labels(target, max_sequence_positions=1) as labels, pytest.raises(
                FormatError, match="max_sequence_positions"):
            for i in range(len(labels)):
                labels[i]
        with sl.open_labels(target, max_sequence_positions=longest) as labels:
            labels[0]


def test_directories_of_unfinished_or_incomplete_runs_are_refused(tmp_path):
    """A labeling run's directory read before its manifest exists (a rank still writing, or killed) used to read
    as a complete dataset without that rank's sequences; validate called it valid."""
    run = tmp_path / "run"
    run.mkdir()
    for rank in (0, 1):
        with sl.LabelWriter(run / f"shard-{rank:05d}-of-00003.slbl", vocab_size=300, rounds=50) as w:
            w.write([1], [50], [0, 1])
    with pytest.raises(FormatError, match="3-rank labeling run but not as one complete run \\(shard 2 is missing"):
        sl.open_labels(run)
    assert not sl.validate(run).ok
    w = sl.LabelWriter(run / "shard-00002-of-00003.slbl", vocab_size=300, rounds=50)  # the last rank, still writing
    w.write([1], [50], [0, 1])
    w.flush()
    with pytest.raises(FormatError, match=r"shard-00002-of-00003\.slbl\.partial, an unfinished label file"):
        sl.open_labels(run)
    w.close()
    with sl.open_labels(run) as labels:
        assert len(labels) == 3
    shutil.copyfile(run / "shard-00000-of-00003.slbl", run / "shard-00005-of-00003.slbl")  # no such rank
    with pytest.raises(FormatError, match="not as one complete run \\(a shard numbered 5"):
        sl.open_labels(run)


def test_commands_over_more_shards_than_descriptors(tmp_path):
    """info, merge --copy and export read a directory of 400 shards under a limit of 350 descriptors: each
    keeps at most max_open (256) shards open, and none holds on to the ones it dropped."""
    import subprocess
    import sys
    import textwrap

    d = tmp_path / "d"
    d.mkdir()
    for k in range(400):
        with sl.LabelWriter(d / f"s{k:04d}.slbl", vocab_size=300, rounds=50, durable=False) as w:
            w.write([k % 300], [50], [0, 1])
    script = textwrap.dedent(f"""
        import resource, sys
        import h5py, torch  # imported before the limit: their libraries are not what is tested
        from sparselabels.cli.main import main
        resource.setrlimit(resource.RLIMIT_NOFILE, (350, 350))
        d, out = {str(d)!r}, {str(tmp_path)!r}
        for argv in (["info", d], ["merge", "--copy", out + "/all.slbl", d], ["export", d, out + "/all.h5"]):
            code = main(argv)
            print(argv[0], code, file=sys.stderr)
            if code:
                sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with sl.open_labels(tmp_path / "all.slbl") as merged:
        assert len(merged) == 400 and merged[399].ids.tolist() == [399 % 300]
