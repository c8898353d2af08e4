"""Codecs: how one sequence's labels become bytes. ``raw`` is always present; see ``available()``."""

from __future__ import annotations

import importlib

from sparselabels.codecs.base import ChunkInput, Codec, EncodedChunk
from sparselabels.codecs.raw import RawCodec
from sparselabels.errors import FormatError, InputError

#: The codec new files use unless told otherwise: about a third of raw's bytes (docs/codecs.md).
DEFAULT_CODEC = "rans"

_REGISTRY: dict[str, Codec] = {}
# Modules that define a codec class; each is imported on first use of the registry.
_MODULES = {"sparselabels.codecs.raw": "RawCodec", "sparselabels.codecs.rans": "RansCodec"}


def _load() -> dict[str, Codec]:
    if not _REGISTRY:
        for module_name, class_name in _MODULES.items():
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            codec = getattr(module, class_name)()
            _REGISTRY[codec.name] = codec
    return _REGISTRY


def available() -> list[str]:
    """Names of the codecs this installation reads and writes."""
    return sorted(_load())


def get_codec(name: str, *, for_reading: bool = False) -> Codec:
    """The codec called ``name``; an unknown name is an InputError (writing) or FormatError (reading)."""
    codecs = _load()
    if name not in codecs:
        error, where = (FormatError, "metadata: ") if for_reading else (InputError, "")
        raise error(f"{where}codec {name!r} is not known to this sparselabels (available: {available()})")
    return codecs[name]


__all__ = ["DEFAULT_CODEC", "ChunkInput", "Codec", "EncodedChunk", "RawCodec", "available", "get_codec"]
