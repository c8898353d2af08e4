"""Optional dependencies: which extra provides which package, and the error that says what to install.

``pip install sparselabels`` gives the format, codecs, reader, writer, shards, validate and the CLI's
info/validate/stats/merge with numpy, numba and msgpack alone. The rest needs an extra: ``[torch]`` (data,
loss, sampling), ``[hf]`` (generate, convert, export, sparselabels.hf), ``[demo]`` (the demo's plots), ``[all]``.
"""

from __future__ import annotations

import importlib.util

#: the extra that installs each optional top-level package
EXTRA_OF = {
    "torch": "torch",
    "transformers": "hf",
    "safetensors": "hf",
    "tokenizers": "hf",
    "h5py": "hf",
    "accelerate": "hf",
    "fsspec": "remote",
    "s3fs": "remote",
    "matplotlib": "demo",
}


class MissingExtraError(ModuleNotFoundError):
    """A part of sparselabels needs an optional package that is not installed; the message names the extra."""


def install_hint(extras: str) -> str:
    return f"pip install 'sparselabels[{extras}]'"


def missing_extra(feature: str, package: str, extras: str | None = None) -> MissingExtraError:
    """The error for ``feature`` needing ``package``; ``extras`` defaults to the extra that installs it."""
    extras = extras or EXTRA_OF.get(package, "all")
    return MissingExtraError(f"{feature} needs {package}, which is not installed: {install_hint(extras)}",
                             name=package)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module with no spec
        return False


def require(feature: str, *packages: str, extras: str | None = None) -> None:
    """Raise MissingExtraError naming the extra to install if any of ``packages`` is not importable (checked
    without importing them, so cheap enough for the start of a function)."""
    for package in packages:
        if not _installed(package):
            raise missing_extra(feature, package, extras)


def as_missing_extra(exc: ModuleNotFoundError, feature: str) -> ImportError:
    """``exc`` as MissingExtraError when the module it could not find comes from an extra, else ``exc`` (also
    when it already is one)."""
    package = (exc.name or "").partition(".")[0]
    if package in EXTRA_OF and not isinstance(exc, MissingExtraError):
        return missing_extra(feature, package)
    return exc
