"""The core works with numpy, numba and msgpack alone; a part that needs an extra says which to install.

Each check runs in a fresh interpreter where the optional packages cannot be imported: a ``sitecustomize``
in a temporary directory puts a finder at the front of ``sys.meta_path`` that refuses them, as if they were
not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OPTIONAL = ("torch", "transformers", "h5py", "matplotlib", "safetensors", "tokenizers", "triton", "datasets")

BLOCKER = f"""
import importlib.abc
import sys

BLOCKED = {OPTIONAL!r}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("core-site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def run_core(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_optional_packages_are_blocked(core_env, tmp_path):
    for name in OPTIONAL:
        result = run_core(core_env, "-c", f"import {name}", cwd=tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name


@pytest.mark.slow
def test_core_writes_reads_validates_and_the_cli_inspects(core_env, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import sparselabels as sl

        path = {str(tmp_path / "core.slbl")!r}
        with sl.LabelWriter(path, vocab_size=100, rounds=4) as w:
            w.write(np.array([1, 2, 3], np.uint32), np.array([2, 2, 4], np.uint8), np.array([0, 2, 3], np.int64))
            w.write(np.array([7], np.uint32), np.array([4], np.uint8), np.array([0, 1], np.int64))
        with sl.open_labels(path) as f:
            assert len(f) == 2 and f.num_positions == 3
            assert f[0].ids.tolist() == [1, 2, 3] and f[1].counts.tolist() == [4]
        assert sl.validate(path).ok
        for codec in ("raw", "rans"):  # merge, into either codec
            merged = sl.merge({str(tmp_path)!r} + f"/merged-{{codec}}.slbl", [path], copy=True, codec=codec)
            assert sl.validate(merged).ok
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {OPTIONAL!r})
        assert not loaded, loaded
        print("core ok")
    """)
    result = run_core(core_env, "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "core ok" in result.stdout

    path = str(tmp_path / "core.slbl")
    info = run_core(core_env, "-m", "sparselabels.cli.main", "info", "--json", path, cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["sequences"] == 2
    valid = run_core(core_env, "-m", "sparselabels.cli.main", "validate", path, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert "valid (1 file(s), 2 sequences, 3 positions, 4 labels)" in valid.stdout
    stats = run_core(core_env, "-m", "sparselabels.cli.main", "stats", path, cwd=tmp_path)
    assert stats.returncode == 0 and "sequences 2" in stats.stdout, stats.stderr

    export = run_core(core_env, "-m", "sparselabels.cli.main", "export", path, str(tmp_path / "out.h5"),
                      cwd=tmp_path)
    assert export.returncode == 2
    assert "needs torch, which is not installed: pip install 'sparselabels[hf]'" in export.stderr
    assert "Traceback" not in export.stderr


def test_star_import_works_in_the_core(core_env, tmp_path):
    """``from sparselabels import *`` imports every name of ``__all__``: names that need an extra (generate,
    sample_counts, ...) stay attributes (and in dir()) but are not in it, or the core install could not do it."""
    code = ("from sparselabels import *\nimport sparselabels as sl\n"
            "assert open_labels and validate and merge and LabelFile and MissingExtraError\n"
            "extra = {'generate', 'sample_counts'}\n"
            "assert extra <= set(dir(sl)) and not extra & set(globals())\n"
            "print('ok')")
    result = run_core(core_env, "-c", code, cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize(("code", "message"), [
    ("import sparselabels as sl; sl.data", "sparselabels.data needs torch, which is not installed: "
                                           "pip install 'sparselabels[torch]'"),
    ("import sparselabels as sl; sl.sample_counts", "pip install 'sparselabels[torch]'"),
    ("import sparselabels.loss", "sparselabels.loss needs torch"),
    ("from sparselabels.data import SparseLabelDataset", "sparselabels.data needs torch"),
    ("import sparselabels as sl; sl.generate('m', [[1]], 'out')", "sparselabels.pipeline (generate, convert, "
     "export_hdf5) needs torch, which is not installed: pip install 'sparselabels[hf]'"),
    ("import sparselabels.hf", "sparselabels.hf needs torch, which is not installed: pip install 'sparselabels[hf]'"),
])
def test_a_missing_extra_is_an_import_error_naming_it(core_env, tmp_path, code, message):
    check = f"""
import sparselabels as sl
try:
    exec({code!r})
except ImportError as exc:
    assert isinstance(exc, sl.MissingExtraError), type(exc)
    print(exc)
else:
    raise SystemExit("no ImportError")
"""
    result = run_core(core_env, "-c", check, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert message in result.stdout
