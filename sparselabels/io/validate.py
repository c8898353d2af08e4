"""Validating label files: every checksum, every structure, every label rule, reported rather than raised.

``open_labels`` checks structure (and the index checksum) at open; ``validate`` additionally reads every
chunk and decodes every sequence (``io.verify``), so it costs one pass over the file. It reports problems with
their location instead of raising, for the ``sparselabels validate`` command and for pipelines that must know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sparselabels.errors import FormatError, InputError, SparseLabelsError
from sparselabels.io.open import open_labels, refuse_remote_options
from sparselabels.io.reader import LabelFile
from sparselabels.io.remote import is_url
from sparselabels.io.shards import LabelShards
from sparselabels.io.verify import problems as file_problems


@dataclass(frozen=True)
class Problem:
    """One problem ``validate`` found: where it is (each part None when unknown) and what it is.

    ``str()`` gives the message, which names the same place in words."""

    message: str
    error: str  # the class of the exception it was raised as, e.g. "ChecksumError" ("OSError": cannot open)
    path: str | None = None
    chunk: int | None = None
    sequence: int | None = None
    position: int | None = None
    label: int | None = None
    field: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Problem:
        def get(name: str) -> object:
            return getattr(exc, name, None)

        path = get("path") if isinstance(exc, SparseLabelsError) else get("filename")
        return cls(str(exc), type(exc).__name__, None if path is None else os.fspath(path), get("chunk"),
                   get("sequence"), get("position"), get("label"), get("field"))

    def __str__(self) -> str:
        return self.message


@dataclass
class ValidationReport:
    """What ``validate`` found: ``ok`` is True only when ``problems`` is empty."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    num_sequences: int = 0
    num_positions: int = 0
    num_labels: int = 0
    files: int = 0
    #: the exception behind the first problem of a file, when one was caught
    first_error: SparseLabelsError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, exc: SparseLabelsError | OSError, message: str | None = None) -> None:
        """Record a problem raised as ``exc`` (and the exception itself if it is the first); ``message``
        replaces its text where the exception alone would not say enough."""
        problem = Problem.from_exception(exc)
        if message is not None:
            problem = Problem(message, problem.error, problem.path)
        if self.first_error is None and not self.problems and isinstance(exc, SparseLabelsError):
            self.first_error = exc
        self.problems.append(problem)

    def __bool__(self) -> bool:
        return self.ok


def validate_file(path: str | os.PathLike, *, labels: LabelFile | None = None,
                  max_problems: int = 20) -> ValidationReport:
    """Check one file completely (``labels``: the file already open, else it is opened here); stop collecting
    after ``max_problems`` (at least 1)."""
    _check_max_problems(max_problems)
    report = ValidationReport(os.fspath(path), files=1)
    own = labels is None
    if own:
        try:
            labels = LabelFile(path, verify="index")
        except FormatError as exc:
            report.add(exc)
            return report
        except OSError as exc:
            report.add(exc, f"file {os.fspath(path)!r}: cannot open ({exc})")
            return report
    try:
        report.num_sequences, report.num_positions, report.num_labels = (
            len(labels), labels.num_positions, labels.num_labels)
        for exc in file_problems(labels):
            report.add(exc)
            if len(report.problems) >= max_problems:
                break
    finally:
        if own:
            labels.close()
    return report


def _check_max_problems(max_problems: int) -> None:
    # 0 would stop before the first check and report a corrupt file as valid.
    if isinstance(max_problems, bool) or not isinstance(max_problems, int) or max_problems < 1:
        raise InputError(f"max_problems must be an integer >= 1, got {max_problems!r}")


def validate(path: str | os.PathLike, *, max_problems: int = 20, **open_options) -> ValidationReport:
    """Validate a file, a manifest or a shard directory; every shard is checked completely. A URL is read as
    :func:`~sparselabels.open_labels` reads it (``open_options``: ``storage_options``, ``cache_dir``, ...)."""
    _check_max_problems(max_problems)
    if is_url(path):
        return _validate_url(path, max_problems, open_options)
    refuse_remote_options(path, list(open_options))
    path = Path(path)
    if path.is_file() and path.suffix != ".json":
        return validate_file(path, max_problems=max_problems)
    report = ValidationReport(os.fspath(path))
    try:
        shards = open_labels(path, verify="structure")
    except (SparseLabelsError, OSError) as exc:
        report.add(exc)
        return report
    assert isinstance(shards, LabelShards)
    with shards:
        _validate_shards(report, shards, max_problems, reuse_open_shards=False)
    return report


def _validate_url(url: str, max_problems: int, open_options: dict) -> ValidationReport:
    """``validate`` of a remote store: every shard opened with its index CRC checked, then checked completely."""
    report = ValidationReport(url)
    try:
        labels = open_labels(url, verify="index", **open_options)
    except (SparseLabelsError, OSError) as exc:
        report.add(exc)
        return report
    with labels:
        if not isinstance(labels, LabelShards):
            return validate_file(url, labels=labels, max_problems=max_problems)
        _validate_shards(report, labels, max_problems, reuse_open_shards=True)
    return report


def _validate_shards(report: ValidationReport, shards: LabelShards, max_problems: int, *,
                     reuse_open_shards: bool) -> None:
    """Check every shard completely into ``report``. A local shard is reopened by its path (its own open checks
    run again); a remote one is checked through the shard set's open file (its byte source and cache)."""
    for k in range(shards.num_shards):
        if len(report.problems) >= max_problems:
            break
        try:
            shard = shards.shard(k)
        except (SparseLabelsError, OSError) as exc:
            report.add(exc)
            continue
        sub = validate_file(shard.path, labels=shard if reuse_open_shards else None,
                            max_problems=max_problems - len(report.problems))
        if report.first_error is None and not report.problems:
            report.first_error = sub.first_error
        report.problems.extend(sub.problems)
        report.files += 1
        report.num_sequences += sub.num_sequences
        report.num_positions += sub.num_positions
        report.num_labels += sub.num_labels
