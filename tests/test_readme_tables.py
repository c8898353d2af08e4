"""The README's benchmark tables are exactly what ``tools/readme_tables.py`` prints from the committed JSON in
``tools/results/``: a number in the README is a measured number, and a rerun benchmark shows up as a diff here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "tools" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


@pytest.mark.parametrize("table", sorted(readme_tables.TABLES))
def test_readme_holds_the_table_the_json_gives(table):
    markdown = readme_tables.TABLES[table]().strip()
    assert markdown.count("\n") >= 2  # a header, a rule and at least one row
    readme = (ROOT / "README.md").read_text()
    assert markdown in readme, f"README's {table} table differs from `python tools/readme_tables.py {table}`"


@pytest.mark.parametrize("table", sorted(getattr(readme_tables, "DOC_TABLES", {})))
def test_docs_hold_the_table_the_json_gives(table):
    make, page = readme_tables.DOC_TABLES[table]
    markdown = make().strip()
    assert markdown.count("\n") >= 2
    assert markdown in (ROOT / page).read_text(), f"{page}'s table differs from `python tools/readme_tables.py {table}`"


def test_quick_runs_never_write_the_committed_results():
    """A smoke run (``--quick``) as the tools' docstrings show it used to overwrite tools/results/, and the
    README's tables would then be printed from its numbers."""
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
