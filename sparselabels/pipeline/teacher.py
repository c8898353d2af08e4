"""The teacher: a Hugging Face causal LM (a local directory or a hub id in the local cache), and what identifies it.

Everything that needs only the model's ``config.json`` (its context length, its input vocabulary) is read by
:func:`inspect_teacher` before any weight is loaded, so bad tokens or options fail in seconds, not after minutes
of loading a large teacher.

Fingerprints (stored in the metadata so that labels from different teachers are never mixed):

- ``teacher_fingerprint`` of a model directory is ``"files-blake2b:<32 hex>"``: BLAKE2b (16-byte digest) over
  ``config.json`` and every weight file (``*.safetensors``, ``pytorch_model*.bin`` and their ``*.index.json``),
  in name order, each contributing its name, its size and its bytes. Files are hashed in streaming fashion
  (several at a time), so a 1B model (2.5 GB) costs a few seconds and no memory; the bytes are the ones
  ``from_pretrained`` reads anyway. Training state, READMEs and generation settings do not count.
- For a model handed over as an ``nn.Module`` it is ``"state-blake2b:<32 hex>"`` over the config's JSON and
  the state dict (name, dtype, shape and bytes of each tensor, in name order). The two schemes never compare
  equal: a file fingerprint identifies files, a state fingerprint identifies tensors in memory.
- ``tokenizer_fingerprint`` is ``"files-blake2b:<32 hex>"`` over the tokenizer files present
  (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``, ...), or None when there are none.

The vocabulary written to labels is the model's output dimension, unless a tokenizer is present and smaller
(output layers are often padded, e.g. 152,064 outputs for 151,936 tokens): then the tokenizer's length.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparselabels.errors import CompatibilityError, InputError

DTYPES = ("bfloat16", "float16", "float32")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
# Config attributes that hold a model's maximum number of positions, in the order they are looked up.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length",
                "max_seq_len")
_BLOCK = 8 << 20
_DIGEST = 16


@dataclass(frozen=True)
class TeacherSpec:
    """What is known of a teacher before its weights load: where it lives and what its config says.

    ``context``: the most positions one forward may hold (None when the config names no limit);
    ``context_key``: the config attribute it came from; ``input_size``: the config's vocabulary (token ids
    must be below it; None when the config has none).
    """

    model: Any  # the resolved directory (Path) or the nn.Module handed over
    name: str  # stored as ``teacher``: the directory's name, the hub id, or the module's name_or_path
    config: Any
    context: int | None
    context_key: str | None
    input_size: int | None


@dataclass
class Teacher:
    """A loaded teacher and its identity. ``vocab_size`` is the label vocabulary (see the module docstring)."""

    model: Any  # torch.nn.Module
    name: str
    fingerprint: str
    tokenizer_fingerprint: str | None
    vocab_size: int
    output_size: int
    input_size: int  # rows of the input embedding: token ids must be below it
    device: Any  # torch.device
    dtype: Any  # torch.dtype


def torch_dtype(name: str):
    """``"bfloat16"`` → ``torch.bfloat16`` (only the dtypes a teacher is run in)."""
    import torch

    if name not in DTYPES:
        raise InputError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _file_digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.digest()


def files_fingerprint(paths: list[Path], *, threads: int = 4) -> str:
    """``files-blake2b:<hex>`` over (name, size, digest of bytes) of each file, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # hashlib releases the GIL on large buffers
        digests = list(pool.map(_file_digest, paths))
    h = hashlib.blake2b(digest_size=_DIGEST)
    for path, digest in zip(paths, digests, strict=True):
        name = path.name.encode()
        h.update(len(name).to_bytes(8, "little") + name + path.stat().st_size.to_bytes(8, "little") + digest)
    return f"files-blake2b:{h.hexdigest()}"


def model_files(directory: Path) -> list[Path]:
    """config.json and the weight files of a model directory, in name order."""
    config = directory / "config.json"
    if not config.is_file():
        raise InputError(f"model directory {str(directory)!r} has no config.json")
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()})
    if not weights:
        raise InputError(f"model directory {str(directory)!r} holds no weight files ({', '.join(WEIGHT_PATTERNS)})")
    return [config, *weights]


def tokenizer_files(directory: Path) -> list[Path]:
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def state_fingerprint(model) -> str:
    """``state-blake2b:<hex>`` over the config JSON and every tensor of the state dict (name order)."""
    import torch

    h = hashlib.blake2b(digest_size=_DIGEST)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return f"state-blake2b:{h.hexdigest()}"


def _tokenizer_length(directory: Path) -> int:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types here
        raise InputError(
            f"cannot load the tokenizer in {str(directory)!r} ({type(exc).__name__}: {exc}); pass vocab_size "
            "explicitly to skip it"
        ) from None
    return len(tokenizer)


def label_vocab_size(output_size: int, *, tokenizer_length: int | None, vocab_size: int | None) -> int:
    """The vocabulary labels are drawn from: explicit, else the tokenizer's length when smaller, else the output."""
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= output_size:
            raise InputError(f"vocab_size must be an integer in 1..{output_size} (the model's output size), "
                             f"got {vocab_size!r}")
        return vocab_size
    if tokenizer_length is None:
        return output_size
    if tokenizer_length > output_size:
        raise CompatibilityError(
            f"the tokenizer has {tokenizer_length} tokens but the model predicts only {output_size}; pass "
            "vocab_size explicitly if this is intended"
        )
    return tokenizer_length


def _model_sizes(model) -> tuple[int, int]:
    """(logits per position, rows of the input embedding)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output_size = getattr(out, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(output_size, int):
        raise InputError(f"cannot tell the output size of {type(model).__name__}: it has no output embedding and "
                         "no config.vocab_size")
    input_size = getattr(inp, "num_embeddings", None) or output_size
    return output_size, int(input_size)


def _cast_parameters(module, dtype):
    """Cast floating parameters only: ``module.to(dtype)`` would also cast buffers that models keep in float32
    on purpose (rotary ``inv_freq``), giving other logits than ``from_pretrained(dtype=...)`` does."""
    for param in module.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return module


def _model_name(model: Any, directory: Path) -> str:
    """The directory's name, or a hub id as given (a cache snapshot's directory is named by its commit)."""
    if isinstance(model, str | os.PathLike) and not Path(model).is_dir():
        return os.fspath(model)
    return directory.resolve().name


def resolve_device(device: str | None):
    """``"cuda"`` means the local rank's GPU under torchrun (``LOCAL_RANK``), GPU 0 otherwise."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def resolve_model(model: str | os.PathLike) -> Path:
    """A local model directory for ``model``: the directory itself, or a hub id (``org/name``) resolved from the
    local Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), never downloading: a labeling run under
    torchrun must not fetch a model once per rank."""
    directory = Path(model)
    if directory.is_dir():
        return directory
    if directory.exists():
        raise InputError(f"model {str(model)!r} is a file; pass a model directory or a hub id")
    text = os.fspath(model)
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises validation, missing-entry and OS errors here
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise InputError(
            f"model {text!r} is neither a local directory nor a model in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}; {reason}); download it first (`huggingface-cli download {text}`) or "
            "pass its directory"
        ) from None


def context_limit(config: Any) -> tuple[int | None, str | None]:
    """(maximum positions, config attribute) of a model config; (None, None) when it names no limit."""
    configs = [config]
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        configs.insert(0, text_config())
    for cfg in configs:
        for key in CONTEXT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, (getattr(cfg, "attribute_map", None) or {}).get(key, key)  # GPT-2: n_positions
    return None, None


def _read_config(directory: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad config
        raise InputError(f"model {str(directory)!r}: cannot read config.json ({type(exc).__name__}: {exc})") from None


def inspect_teacher(model) -> TeacherSpec:
    """Resolve ``model`` and read its config, loading no weights: a directory or hub id, or an ``nn.Module``."""
    if isinstance(model, str | os.PathLike):
        directory = resolve_model(model)
        model_files(directory)  # config.json and weight files present
        config = _read_config(directory)
        vocab = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size",
                        None)
        context, key = context_limit(config)
        return TeacherSpec(directory, _model_name(model, directory), config, context, key,
                           vocab if isinstance(vocab, int) else None)
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a directory path, a hub id or a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    context, key = context_limit(config) if config is not None else (None, None)
    module_name = getattr(config, "name_or_path", "") or type(model).__name__
    return TeacherSpec(model, Path(str(module_name)).name or type(model).__name__, config, context, key,
                       _model_sizes(model)[1])


def load_teacher(model, *, dtype: str = "bfloat16", device: str | None = None,
                 tokenizer: str | os.PathLike | None = None, vocab_size: int | None = None, name: str | None = None,
                 fingerprint: str | None = None) -> Teacher:
    """Load (or adopt) a teacher and work out its identity and label vocabulary.

    ``model``: a local model directory or a hub id in the local cache (loaded with ``from_pretrained(dtype=...)``),
    a :class:`TeacherSpec` from :func:`inspect_teacher`, or an already built ``nn.Module`` (moved to ``device``;
    floating parameters, not buffers, cast to ``dtype``).
    ``tokenizer``: a directory with tokenizer files (default: the model directory).
    ``name``/``fingerprint`` override the computed identity (e.g. when the module came from elsewhere).
    """
    dt = torch_dtype(dtype)
    dev = resolve_device(device)
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else None
    if tokenizer_dir is not None and not tokenizer_files(tokenizer_dir):  # a typo must not drop the tokenizer
        raise InputError(f"tokenizer {str(tokenizer_dir)!r}: holds no tokenizer files (tokenizer.json, ...)")
    spec = model if isinstance(model, TeacherSpec) else inspect_teacher(model)
    if isinstance(spec.model, Path):
        directory = spec.model
        files = model_files(directory)
        if fingerprint is None:
            fingerprint = files_fingerprint(files)
        from transformers import AutoModelForCausalLM

        module = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dt, local_files_only=True)
        name = name or spec.name
        tokenizer_dir = tokenizer_dir or directory
    else:
        module = spec.model
        name = name or spec.name
    module = _cast_parameters(module.to(device=dev), dt).eval()
    if fingerprint is None:
        fingerprint = state_fingerprint(module)
    tok_files = tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else []
    tok_fingerprint = files_fingerprint(tok_files) if tok_files else None
    tok_length = _tokenizer_length(tokenizer_dir) if tok_files and vocab_size is None else None
    output_size, input_size = _model_sizes(module)
    vocab = label_vocab_size(output_size, tokenizer_length=tok_length, vocab_size=vocab_size)
    return Teacher(module, name, fingerprint, tok_fingerprint, vocab, output_size, input_size, dev, dt)
