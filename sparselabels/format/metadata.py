"""The metadata block: a msgpack map with required keys, decoded under strict limits.

Metadata is untrusted input when a file is read: it is size-capped by the header, decoded with msgpack's
length limits, without extension types, and its nesting depth and key types are checked before use.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

import msgpack

from sparselabels._version import __version__
from sparselabels.errors import CompatibilityError, FormatError, InputError
from sparselabels.format.checks import MAX_ROUNDS
from sparselabels.format.layout import MAX_METADATA_BYTES, VERSION_MAJOR, VERSION_MINOR
from sparselabels.format.values import VALUE_KINDS

REQUIRED_KEYS = ("format_version", "vocab_size", "value_kind", "rounds", "codec", "library_version")
MAX_DEPTH = 32
# Maps and arrays in all: an empty one costs 1 byte to store and ~70 to decode, so without a bound 16 MiB of
# them would take >1 GB at every open (and in every DataLoader worker).
MAX_CONTAINERS = 65_536
MAX_VOCAB = 1 << 32

# Optional keys the library knows; their types are checked when present. Any other str key is user metadata.
OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "teacher": (str,),
    "teacher_fingerprint": (str,),
    "tokenizer_fingerprint": (str,),
    "temperature": (float, int),
    "seed": (int,),
    "source_fingerprint": (str,),
    "topk": (int,),
    "codec_options": (dict,),
    "generation": (dict,),
    "shard": (dict,),
    "converted_from": (dict,),
    "user": (dict,),
}

# Keys that must agree between shards that are read or merged together.
COMPATIBILITY_KEYS = ("vocab_size", "value_kind", "rounds", "teacher", "teacher_fingerprint",
                      "tokenizer_fingerprint", "temperature", "topk")


def build(*, vocab_size: int, value_kind: str, rounds: int | None, codec: str, extra: dict | None) -> dict:
    """The metadata dict a writer stores: the required keys plus the caller's ``extra`` keys."""
    extra = dict(extra or {})
    vocab_size, rounds = _plain_int(vocab_size), _plain_int(rounds)
    clash = sorted(set(extra) & set(REQUIRED_KEYS))
    if clash:
        raise InputError(f"metadata: keys {clash} are set by the library; pass them as LabelWriter arguments")
    meta = {
        "format_version": f"{VERSION_MAJOR}.{VERSION_MINOR}",
        "vocab_size": vocab_size,
        "value_kind": value_kind,
        "rounds": rounds,
        "codec": codec,
        "library_version": __version__,
        **extra,
    }
    try:
        check(meta)
    except FormatError as exc:
        raise InputError(str(exc).replace("metadata:", "metadata argument:", 1), field=exc.field) from None
    return meta


def check_same_settings(stored: dict, requested: dict, *, where: str, stored_in: str) -> None:
    """Resuming continues a file only under the settings it was started with (the writer's version may differ)."""
    for key in sorted(set(stored) | set(requested)):
        if key != "library_version" and not _same(_as_stored(stored.get(key)), _as_stored(requested.get(key))):
            raise CompatibilityError(
                f"{where}: cannot resume: {key} is {stored.get(key)!r} in {stored_in} but {requested.get(key)!r} "
                "was requested"
            )


_UNSTORABLE = object()


def _as_stored(value: Any) -> Any:
    """``value`` if it can be stored (else a marker: build/encode reject it with a clear message)."""
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return _UNSTORABLE
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: ``==`` (so 1 equals 1.0 and maps compare whatever their key order), except that NaN
    equals NaN and a tuple equals the list it is stored as."""
    if a is _UNSTORABLE or b is _UNSTORABLE:
        return a is b  # both: left to build/encode, which name the value
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def encode(meta: dict) -> bytes:
    try:
        data = msgpack.packb(meta, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"metadata: cannot be stored as msgpack ({exc}); use str, int, float, bool, None, "
                         "bytes, lists and str-keyed dicts") from None
    if len(data) > MAX_METADATA_BYTES:
        raise InputError(f"metadata: {len(data)} bytes encoded, more than the limit of {MAX_METADATA_BYTES}")
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise FormatError(f"metadata: msgpack extension type {code} is not allowed")


def decode(data: bytes) -> dict:
    """Decode and check a metadata block read from a file."""
    n = len(data)
    containers = 0

    def counted(value: Any) -> Any:  # called as each map or array is complete: stops decoding early
        nonlocal containers
        containers += 1
        if containers > MAX_CONTAINERS:
            raise FormatError(f"metadata: more than {MAX_CONTAINERS} maps and arrays")
        return value

    try:
        meta = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=0,
            object_pairs_hook=lambda pairs: counted(_unique_keys(pairs)),
            list_hook=counted,
        )
    except FormatError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise FormatError(f"metadata: not valid msgpack ({type(exc).__name__}: {exc})") from None
    check(meta)
    return meta


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
    """A map from msgpack pairs; a key given twice is invalid (readers would otherwise disagree on its value)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(f"metadata: key {key!r} appears more than once in a map")
    return out


def check(meta: Any) -> None:
    """Check structure, required keys and the types of known keys; raise FormatError naming the key."""
    if not isinstance(meta, dict):
        raise FormatError(f"metadata: top level is {type(meta).__name__}, expected a map")
    if _check_tree(meta, 0) > MAX_CONTAINERS:
        raise FormatError(f"metadata: more than {MAX_CONTAINERS} maps and arrays")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise FormatError(f"metadata: required keys missing: {missing}")
    version = meta["format_version"]
    if not isinstance(version, str) or not re.fullmatch(rf"{VERSION_MAJOR}\.(0|[1-9][0-9]*)", version):
        raise FormatError(f"metadata: format_version {version!r} does not match major version {VERSION_MAJOR}",
                          field="format_version")
    vocab = meta["vocab_size"]
    if not _is_int(vocab) or not 1 <= vocab <= MAX_VOCAB:
        raise FormatError(f"metadata: vocab_size {vocab!r} must be an integer in 1..2**32", field="vocab_size")
    kind = meta["value_kind"]
    if kind not in VALUE_KINDS:
        raise FormatError(f"metadata: value_kind {kind!r} must be one of {list(VALUE_KINDS)}", field="value_kind")
    rounds = meta["rounds"]
    if kind == "count":
        if not _is_int(rounds) or not 1 <= rounds <= MAX_ROUNDS:
            raise FormatError(f"metadata: rounds {rounds!r} must be an integer in 1..{MAX_ROUNDS} for value_kind "
                              "'count'", field="rounds")
    elif rounds is not None:
        raise FormatError(f"metadata: rounds must be nil for value_kind {kind!r}, got {rounds!r}", field="rounds")
    if not isinstance(meta["codec"], str) or not meta["codec"]:
        raise FormatError(f"metadata: codec {meta['codec']!r} must be a non-empty string", field="codec")
    if not isinstance(meta["library_version"], str):
        raise FormatError("metadata: library_version must be a string", field="library_version")
    for key, types in OPTIONAL_TYPES.items():
        if key in meta and meta[key] is not None and (not isinstance(meta[key], types) or isinstance(meta[key], bool)):
            raise FormatError(f"metadata: {key} must be {' or '.join(t.__name__ for t in types)}, got {meta[key]!r}",
                              field=key)
    temp = meta.get("temperature")
    if temp is not None and not (math.isfinite(temp) and temp > 0):
        raise FormatError(f"metadata: temperature {temp!r} must be finite and > 0", field="temperature")


def check_common_metadata(meta: Any) -> None:
    """Check what a shard set's metadata (the keys all its shards share) must hold: the label settings every
    shard agrees on (``vocab_size``, ``value_kind``, ``rounds``), and valid values for the other keys present.
    The per-file keys (codec, versions) may differ between shards and be absent."""
    if not isinstance(meta, dict):
        raise FormatError(f"metadata: top level is {type(meta).__name__}, expected a map")
    missing = [k for k in ("vocab_size", "value_kind", "rounds") if k not in meta]
    if missing:
        raise FormatError(f"metadata: required keys missing: {missing}")
    per_file = {"format_version": f"{VERSION_MAJOR}.{VERSION_MINOR}", "codec": "any", "library_version": ""}
    check({**per_file, **meta})


def _plain_int(value: Any) -> Any:
    """A numpy integer as a Python int (msgpack stores only the latter); anything else unchanged, for check()."""
    if isinstance(value, bool | int) or value is None:
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tree(value: Any, level: int) -> int:
    """``level``: the containers (maps, arrays) around ``value``; the top-level map is at level 1, and a
    container at level 33 is too deep whatever it holds. Returns the number of containers in ``value``."""
    if isinstance(value, dict | list | tuple) and level + 1 > MAX_DEPTH:
        raise FormatError(f"metadata: maps and arrays nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise FormatError(f"metadata: map key {key!r} is not a string")
        return 1 + sum(_check_tree(item, level + 1) for item in value.values())
    if isinstance(value, list | tuple):
        return 1 + sum(_check_tree(item, level + 1) for item in value)
    if not isinstance(value, str | bytes | int | float | bool | type(None)):
        raise FormatError(f"metadata: value of type {type(value).__name__} is not allowed")
    return 0
