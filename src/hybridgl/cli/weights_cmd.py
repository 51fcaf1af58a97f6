"""``hybridgl weights list | download | verify | path``: the checkpoint registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_CODES_HELP, EXIT_OK, EXIT_WEIGHTS, UsageError, eprint
from hybridgl.errors import WeightsError

DEFAULT_DOWNLOAD = ("sam_vit_h", "clip_vit_b16_openai")

DESCRIPTION = """\
Inspect, fetch and check the model checkpoints.

  list       every registered checkpoint: name, file, size, present?, where
  download   fetch checkpoints into the cache (default: the ones `segment` needs by
             default, sam_vit_h and clip_vit_b16_openai, or clip_vit_b16_openai_hf
             with --source hf; --all for every one); files already present are not
             fetched again. Hugging Face Hub entries (transformers proposal backends,
             the Hub copy of CLIP) are folders of files pinned by revision
  verify     check the SHA-256 of every checkpoint file present in the search folders
             (Hub folders: that every file is there)
  path       the folders searched for checkpoints, in order (first match wins)

Search order: --weights-dir, $HYBRIDGL_WEIGHTS_DIR, the cache ($HYBRIDGL_CACHE_DIR,
else $XDG_CACHE_HOME/hybridgl, else ~/.cache/hybridgl). HYBRIDGL_OFFLINE=1 forbids
downloads everywhere except in `weights download`, which is an explicit request.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "weights",
        help="list, download, verify checkpoints; show where they are looked for",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--weights-dir", default=None, metavar="DIR", help="folder searched first")

    q = sub.add_parser("list", help="registered checkpoints and whether they are present")
    common(q)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=run_list)

    q = sub.add_parser("download", help="download checkpoints (checksum-verified)")
    common(q)
    q.add_argument("names", nargs="*", metavar="NAME", help="registry names (see `list`)")
    q.add_argument("--all", action="store_true", help="download every registered checkpoint")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument(
        "--source",
        choices=("openai", "hf"),
        default="openai",
        help="where the default CLIP weights come from: openai (OpenAI's ViT-B-16.pt, "
        "default) or hf (the Hugging Face Hub copy timm/vit_base_patch16_clip_224.openai "
        "that open_clip uses; same weights, loaded with strict keys)",
    )
    q.set_defaults(func=run_download)

    q = sub.add_parser("verify", help="check the SHA-256 of the checkpoint files present")
    common(q)
    q.add_argument("names", nargs="*", metavar="NAME", help="only these checkpoints")
    q.set_defaults(func=run_verify)

    q = sub.add_parser("path", help="print the folders searched for checkpoints")
    common(q)
    q.set_defaults(func=run_path)
    return p


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _names(names: list[str]) -> list[str]:
    from hybridgl import weights

    unknown = [n for n in names if n not in weights.REGISTRY]
    if unknown:
        raise UsageError(
            f"unknown checkpoint {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(weights.REGISTRY)}"
        )
    return list(dict.fromkeys(names))


def _random_note() -> None:
    from hybridgl.models import random_weights_mode

    try:
        mode = random_weights_mode()
    except ValueError:
        return
    if mode:
        eprint(
            f"hybridgl: note: HYBRIDGL_RANDOM_WEIGHTS={mode} is set: models are built with "
            "random weights and no checkpoint is read"
        )


def run_list(args: argparse.Namespace) -> int:
    from hybridgl import weights

    rows: list[dict[str, Any]] = []
    for ck in weights.list_checkpoints():
        where = weights.find_local(ck, args.weights_dir)
        rows.append(
            {
                "name": ck.name,
                "kind": ck.kind,
                "arch": ck.arch,
                "file": ck.filename,
                "size": ck.size,
                "present": where is not None,
                "where": str(where) if where is not None else None,
                "url": ck.url,
                "sha256": ck.sha256,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    headers = ("NAME", "FILE", "SIZE", "PRESENT", "WHERE")
    table: list[tuple[str, ...]] = [
        (
            r["name"],
            r["file"],
            human_size(r["size"]),
            "yes" if r["present"] else "no",
            r["where"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    for line in (headers, *table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    _random_note()
    return EXIT_OK


def run_download(args: argparse.Namespace) -> int:
    from hybridgl import weights

    if args.all and args.names:
        raise UsageError("give checkpoint names or --all, not both")
    default = [
        weights.clip_checkpoint_for_source("ViT-B-16", args.source) if n.startswith("clip") else n
        for n in DEFAULT_DOWNLOAD
    ]
    names = list(weights.REGISTRY) if args.all else _names(args.names) or default
    failed = 0
    for name in names:
        try:
            path = weights.resolve(
                name,
                weights_dir=args.weights_dir,
                download=True,
                progress=not args.no_progress,
            )
        except WeightsError as e:
            failed += 1
            eprint(f"hybridgl: error: {name}: {e}")
            continue
        print(f"{name}: {path}")
    return EXIT_WEIGHTS if failed else EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from hybridgl import weights

    names = _names(args.names) or list(weights.REGISTRY)
    checked = bad = 0
    for name in names:
        ck = weights.get_checkpoint(name)
        for d in weights.search_dirs(args.weights_dir):
            path = Path(d) / ck.filename
            if not (path.is_dir() if ck.is_hub else path.is_file()):
                continue
            checked += 1
            ok = weights.verify_file(ck, path)
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'}  {name}  {path}")
    if checked == 0:
        eprint("hybridgl: no checkpoint files found; see `hybridgl weights path`")
        _random_note()
        return EXIT_OK
    if bad:
        eprint(f"hybridgl: error: {bad} of {checked} checkpoint file(s) do not match their SHA-256")
        return EXIT_WEIGHTS
    return EXIT_OK


def run_path(args: argparse.Namespace) -> int:
    from hybridgl import weights

    for d in weights.search_dirs(args.weights_dir):
        print(d)
    return EXIT_OK
