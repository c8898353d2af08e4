"""The benchmark tables in docs/ are exactly what ``tools/readme_tables.py`` prints from the committed JSON in
``tools/results/``: a number in the docs is a measured number, and a rerun benchmark shows up as a diff here."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "tools" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


@pytest.mark.parametrize("table", sorted(readme_tables.TABLES))
def test_docs_hold_the_table_the_json_gives(table):
    markdown = readme_tables.TABLES[table]().strip()
    assert markdown.count("\n") >= 2  # a header, a rule and at least one row
    doc = readme_tables.DOCS[table]
    assert readme_tables.block(table) in doc.read_text(), (
        f"{doc.relative_to(ROOT)}'s {table} table differs from `python tools/readme_tables.py {table}` "
        "(`python tools/readme_tables.py --write` rewrites it)")


def test_write_replaces_a_stale_table_and_nothing_else(tmp_path, monkeypatch):
    doc = tmp_path / "performance.md"
    shutil.copy(readme_tables.DOCS["io"], doc)
    original = doc.read_text()
    stale = original.replace(readme_tables.TABLES["io"](), "| stale |\n|---|\n| 1 |")
    assert stale != original
    doc.write_text(stale)
    monkeypatch.setitem(readme_tables.DOCS, "io", doc)
    assert readme_tables.write("io") and doc.read_text() == original
    assert not readme_tables.write("io")


def test_the_front_page_stays_a_front_page():
    """The README is what a newcomer reads first: everything else lives in docs/, linked from it."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    for link in ("docs/performance.md", "docs/errors.md", "docs/reliability.md", "docs/codecs.md"):
        assert f"]({link}" in readme and (ROOT / link).is_file(), link


def test_quick_runs_never_write_the_committed_results():
    """A smoke run (``--quick``, as the tools' docstrings show it) must not overwrite tools/results/: the docs'
    tables would then be printed from its numbers."""
    import argparse
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import benchlib

    def parse(*argv):
        parser = argparse.ArgumentParser()
        benchlib.add_common_args(parser, "bench_x")
        return parser.parse_args(list(argv))

    assert parse().out == benchlib.RESULTS_DIR / "bench_x.json"
    assert benchlib.RESULTS_DIR not in parse("--quick").out.parents and parse("--quick").quick
    assert parse("--out", "a.json", "--quick").out.name == "a.json"
    assert parse("--quick", "--out", "a.json").out.name == "a.json"
