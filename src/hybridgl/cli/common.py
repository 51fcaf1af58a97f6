"""Shared pieces of the command line: exit codes, error handling, logging, argument types.

A subcommand's ``register(subparsers)`` adds its parser, calls
:func:`hybridgl.cli.options.add_model_args` when it loads a model, and sets ``func``
(``handler(args) -> int``) with ``parser.set_defaults``; :func:`hybridgl.cli.main.main`
runs the handler through :func:`run_guarded`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hybridgl.errors import (
    ExpressionError,
    HybridGLError,
    ImageError,
    InputError,
    MissingExtraError,
    UsageError,
    WeightsError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "EXIT_WEIGHTS",
    "InputError",
    "UsageError",
    "configure_logging",
    "eprint",
    "run_guarded",
]

PROG = "hybridgl"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_WEIGHTS = 4
EXIT_PARTIAL = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (rerun with --debug for the traceback), or a system "
    "error such as a full disk or a folder without write permission",
    EXIT_USAGE: "usage error: unknown option, bad option value, or a missing optional extra "
    '(the message names the pip install "hybridgl[...]" to run)',
    EXIT_INPUT: "bad input: unreadable or missing image, empty expression, bad data file",
    EXIT_WEIGHTS: "missing or corrupt model weights (see `hybridgl weights`)",
    EXIT_PARTIAL: "finished, but some rows/records failed (batch, evaluate)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

EXIT_CODES_HELP = "exit codes:\n" + "\n".join(
    f"  {code:<4} {text}" for code, text in EXIT_CODES.items()
)


def eprint(*parts: Any) -> None:
    """Print to stderr (messages for people; stdout is kept for results)."""
    print(*parts, file=sys.stderr, flush=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(verbose: int = 0) -> None:
    """Send the package's log records to stderr: warnings by default, ``-v`` info, ``-vv`` debug."""
    logger = logging.getLogger("hybridgl")
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    from hybridgl.names import show

    return show(text) or type(exc).__name__  # file names may hold newlines or non-UTF-8


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    if isinstance(exc, WeightsError):
        return EXIT_WEIGHTS
    if isinstance(exc, (UsageError, MissingExtraError)):
        return EXIT_USAGE
    if isinstance(exc, (ImageError, ExpressionError, InputError)):
        return EXIT_INPUT
    if isinstance(exc, HybridGLError):
        return EXIT_INPUT
    if isinstance(exc, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        # raised on bad arguments by the library (bad proposals, unknown names, missing files)
        return EXIT_INPUT
    return EXIT_INTERNAL


def run_guarded(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand handler, turning known errors into one-line messages.

    The message goes to stderr as ``hybridgl: error: ...``; the traceback is shown only
    with ``--debug`` (``args.debug``). Returns the handler's exit code (None counts as
    0), or the code of :func:`exit_code_for`; Ctrl-C gives 130.
    """
    debug = bool(getattr(args, "debug", False))
    try:
        code = fn(args)
        return EXIT_OK if code is None else int(code)
    except KeyboardInterrupt:
        eprint(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # e.g. `hybridgl ... | head`: the reader went away; silence the flush at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_OK
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the point of this wrapper
        code = exit_code_for(exc)
        if debug:
            traceback.print_exc(file=sys.stderr)
        if code == EXIT_INTERNAL and not isinstance(exc, OSError):
            eprint(
                f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}\n"
                f"{PROG}: rerun with --debug for the traceback"
            )
        else:
            eprint(f"{PROG}: error: {_one_line(exc)}")
        return code


def positive(kind: type = int) -> Any:
    """An argparse ``type`` accepting numbers of ``kind`` (int or float) above 0."""
    noun = "integer" if kind is int else "number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def unit_interval(text: str) -> float:
    """An argparse ``type`` accepting numbers in [0, 1] (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse ``type`` accepting integers >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type`` accepting numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value
