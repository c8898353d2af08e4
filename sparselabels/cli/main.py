"""Entry point of the ``sparselabels`` command. Each command lives in its own module with
``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sparselabels._extras import MissingExtraError, as_missing_extra
from sparselabels._version import __version__
from sparselabels.errors import SparseLabelsError

COMMANDS = ("demo", "generate", "convert", "export", "info", "validate", "stats", "merge")


def positive_int(text: str) -> int:
    """argparse type of counts such as --max-problems: a bad value is a usage error (exit 2), not a traceback."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparselabels",
        description="Random-Sampling KD label files: create, inspect, validate and merge them.",
    )
    parser.add_argument("--version", action="version", version=f"sparselabels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sparselabels.cli.{name}")
        command = module.add_parser(sub)
        command.set_defaults(_run=module.run)
    return parser


def cli_wording(message: str, args: argparse.Namespace) -> str:
    """Library messages name keyword arguments (``overwrite=True``); a command that has the same switch as a flag
    names the flag instead (``--overwrite``)."""
    for name in ("overwrite", "resume", "copy"):
        if hasattr(args, name):
            message = message.replace(f"{name}=True", f"--{name}")
    if hasattr(args, "codec"):
        message = message.replace("codec=...", "--codec")
    return message


def interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: for a resumable command, how to continue."""
    if hasattr(args, "resume"):
        return ("interrupted; what was written is kept: rerun the same command with --resume to continue where it "
                "stopped")
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at interpreter exit
        return code
    except SparseLabelsError as exc:
        print(f"sparselabels {args.command}: error: {cli_wording(str(exc), args)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a command whose optional packages are not installed
        error = as_missing_extra(exc, f"sparselabels {args.command}")
        if not isinstance(error, MissingExtraError):
            raise
        print(f"sparselabels {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sparselabels info FILE | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # missing or unreadable paths, read-only or full file systems, existing outputs
        print(f"sparselabels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:  # e.g. under `ulimit -v`, an index claiming a huge sequence (the file is named above it)
        print(f"sparselabels {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparselabels {args.command}: {interrupted_message(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
