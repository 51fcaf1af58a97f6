"""The ``hybridgl`` command: argument parsing and dispatch to the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from hybridgl.cli.common import EXIT_CODES_HELP, EXIT_USAGE, PROG, configure_logging, run_guarded

DESCRIPTION = """\
HybridGL: segment the object an English phrase refers to (zero-shot referring image
segmentation with SAM proposals, hybrid global-local CLIP features and spatial guidance).

Examples:
  hybridgl segment photo.jpg "the dog on the left" --overlay out.jpg --json out.json
  hybridgl segment-volume CT_SERIES/ "the liver" --out liver/ --window abdomen --seg liver.dcm
  hybridgl track clip.mp4 "the dog on the left" --out results/ --overlay tracked.mp4
  hybridgl batch rows.jsonl --out results/
  hybridgl weights download
  hybridgl index ~/photos --db photos-index && hybridgl search "the red car" --db photos-index
"""


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--debug and -v, on the top parser and again on each subcommand.

    Subcommand copies default to SUPPRESS so they never overwrite a value given before
    the subcommand name.
    """
    default_debug: Any = False if top else argparse.SUPPRESS
    default_verbose: Any = 0 if top else argparse.SUPPRESS
    try:
        parser.add_argument(
            "--debug",
            action="store_true",
            default=default_debug,
            help="show the full traceback on errors",
        )
    except argparse.ArgumentError:
        pass  # the subcommand defines its own
    try:
        parser.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=default_verbose,
            help="more log output on stderr (-vv for debug)",
        )
    except argparse.ArgumentError:
        pass


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    from hybridgl import __version__
    from hybridgl.cli import (
        batch,
        calibrate_cmd,
        evaluate,
        index_cmd,
        search_cmd,
        segment,
        segment_volume,
        serve,
        track,
        weights_cmd,
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP + "\n\nRun `hybridgl COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    # every subcommand, in one place, in the order `hybridgl --help` lists them
    segment.register(subparsers)
    segment_volume.register(subparsers)
    track.register(subparsers)
    batch.register(subparsers)
    evaluate.register(subparsers)
    calibrate_cmd.register(subparsers)
    weights_cmd.register(subparsers)
    serve.register(subparsers)
    index_cmd.register(subparsers)
    search_cmd.register(subparsers)
    for sub in _all_subparsers(subparsers):
        _add_global_options(sub, top=False)
    return parser


def _all_subparsers(action: Any) -> list[argparse.ArgumentParser]:
    """Every parser under a subparsers action, nested ones included."""
    found: list[argparse.ArgumentParser] = []
    for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
        found.append(sub)
        for a in sub._actions:
            if isinstance(a, argparse._SubParsersAction):
                found.extend(_all_subparsers(a))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hybridgl`` command; returns the exit code (documented in ``--help``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_USAGE
    configure_logging(getattr(args, "verbose", 0) or 0)
    func = getattr(args, "func", None)
    if func is None:  # pragma: no cover - subparsers are required
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_guarded(func, args)


def console() -> None:  # pragma: no cover - thin wrapper for `python -m`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console()
