"""Options shared by ``hybridgl index`` and ``hybridgl search``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hybridgl.cli.common import EXIT_USAGE, PROG, eprint
from hybridgl.cli.options import (
    add_model_args,
    check_runtime,
    given_model_options,
    spec_from_options,
)
from hybridgl.errors import MissingExtraError
from hybridgl.search.errors import lancedb_available

DB_HELP = (
    "index folder, or an object-store URI such as s3://bucket/prefix (default: ./hybridgl-index)"
)


def missing_extra(args: argparse.Namespace) -> int | None:
    """Without LanceDB: print the one missing-extra line and return its exit code (2).

    Checked without importing LanceDB, so the parser and ``--help`` work without it.
    """
    if lancedb_available():
        return None
    eprint(f"{PROG}: error: {MissingExtraError(f'hybridgl {args.command}', 'search')}")
    return EXIT_USAGE


def add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="hybridgl-index", metavar="DB", help=DB_HELP)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The one model option group (:func:`hybridgl.cli.options.add_model_args`), without
    ``--top-k`` / ``--no-guidance`` (search has its own); each option not given comes from
    the index (a new index: the defaults), and one that conflicts with the index is
    refused naming it."""
    add_model_args(
        p,
        title="model (each option defaults to what the index was built with)",
        predict=False,
    )


def make_index(args: argparse.Namespace, **extra: Any) -> Any:
    """The :class:`~hybridgl.search.index.Index` the options ask for."""
    from hybridgl.search.index import Index

    options = given_model_options(args)
    if options.get("sam", "") is None:
        del options["sam"]  # none: the caller checked --proposals-from (no SAM is built)
    check_runtime(spec_from_options(options))
    return Index(os.fspath(args.db), options=options, **extra)
