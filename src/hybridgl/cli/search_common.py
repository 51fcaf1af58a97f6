"""Options shared by ``hybridgl index`` and ``hybridgl search``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hybridgl.cli.common import EXIT_INTERNAL, PROG, UsageError, eprint
from hybridgl.search.errors import INSTALL_HINT, lancedb_available

DB_HELP = (
    "index folder, or an object-store URI such as s3://bucket/prefix (default: ./hybridgl-index)"
)


def missing_extra(args: argparse.Namespace) -> int | None:
    """Without LanceDB: print one line naming the extra and return the exit code (1).

    Checked without importing LanceDB, so the parser and ``--help`` work without it.
    """
    if lancedb_available():
        return None
    eprint(
        f"{PROG}: error: hybridgl {args.command} needs LanceDB, which is not installed: {INSTALL_HINT}"
    )
    return EXIT_INTERNAL


def add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="hybridgl-index", metavar="DB", help=DB_HELP)


def add_model_options(p: argparse.ArgumentParser, *, sam: bool) -> None:
    """Model options; each defaults to what the index was built with."""
    g = p.add_argument_group("model (each defaults to what the index was built with)")
    g.add_argument("--device", default=None, help="torch device: cpu, cuda, mps (default: best)")
    if sam:
        g.add_argument(
            "--sam",
            default=None,
            choices=("vit_h", "vit_l", "vit_b", "none"),
            help="SAM size for the proposals (new index: vit_h); none: no SAM, the "
            "proposals come from --proposals-from",
        )
    g.add_argument(
        "--preset",
        default=None,
        choices=("paper", "fixed"),
        help="method preset (new index: paper)",
    )
    g.add_argument(
        "--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="model precision (fp32)"
    )
    g.add_argument(
        "--weights-dir", default=None, metavar="DIR", help="folder searched first for checkpoints"
    )
    g.add_argument("--spacy-model", default=None, metavar="NAME", help="spaCy pipeline for parsing")


def make_index(args: argparse.Namespace, **extra: Any) -> Any:
    """The :class:`~hybridgl.search.index.Index` the options ask for."""
    from hybridgl.cli.common import _check_device
    from hybridgl.models import random_weights_mode
    from hybridgl.search.index import Index

    _check_device(getattr(args, "device", None))
    try:
        random_weights_mode()
    except ValueError as e:
        raise UsageError(str(e)) from None
    sam = getattr(args, "sam", None)
    return Index(
        os.fspath(args.db),
        sam=None if sam == "none" else sam,  # none: the caller checked --proposals-from
        preset=args.preset,
        dtype=args.dtype,
        device=args.device,
        weights_dir=args.weights_dir,
        spacy_model=args.spacy_model,
        **extra,
    )
