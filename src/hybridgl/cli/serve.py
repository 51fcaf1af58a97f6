"""``hybridgl serve``: run the HTTP API and the web demo with uvicorn.

The server's options are generated from :class:`hybridgl.server.settings.ServerSettings`
(each field's flag, environment variable, unit and help live in its metadata), so they are
never restated here. The parser needs no server extra; running does, and without it the
command says so in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import socket
import types
import typing
from collections.abc import Callable
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
    eprint,
    non_negative_int,
    positive,
)
from hybridgl.cli.options import add_model_args, build_segmenter
from hybridgl.errors import InputError, MissingExtraError
from hybridgl.server.settings import ServerSettings

DESCRIPTION = """\
Serve the HTTP API (POST /v1/segment, GET /health, GET /v1/models, the OpenAPI schema at
/openapi.json) and the web demo at / . The model loads once; each image's proposals and
features are cached (keyed by the SHA-256 of the upload), so further phrases on an image
are fast.

Example:
  hybridgl serve --port 8000 --sam vit_h
  curl -F image=@photo.jpg -F expression="the dog on the left" localhost:8000/v1/segment

Every option can also be set by the environment variable named in its help. Listen on
127.0.0.1 (the default) or set an API key (--api-key / HYBRIDGL_API_KEY): without one,
anyone who can reach the port can use the model. There is no TLS: put the server behind
a reverse proxy for that (docs/SECURITY.md).
"""

SERVER_EXTRA = ("fastapi", "uvicorn", "multipart")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """``int`` for ``int`` and ``int | None``, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _parser_for(f: dataclasses.Field, kind: type) -> Callable[[str], Any]:
    """The argparse ``type`` of a field (the value in the option's unit)."""
    if kind is str:
        return str
    scale = int(f.metadata.get("scale", 1))
    if scale != 1:
        return positive(float)  # e.g. MB, converted to bytes afterwards
    if kind is int:
        return non_negative_int if f.metadata.get("minimum", 1) == 0 else positive(int)
    return positive(kind)


def _cli_fields() -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(ServerSettings)
    return [
        (f, _base_type(hints[f.name]))
        for f in dataclasses.fields(ServerSettings)
        if f.metadata.get("cli", True)
    ]


def _shown_default(f: dataclasses.Field) -> str:
    if f.metadata.get("secret") or f.default is None:
        return "none" if f.name != "max_pixels" else f"{ServerSettings().pixel_limit}"
    scale = int(f.metadata.get("scale", 1))
    value: Any = f.default
    if scale != 1:
        value = value / scale
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`ServerSettings` field, grouped as the metadata says."""
    groups: dict[str, Any] = {}
    for f, kind in _cli_fields():
        meta = f.metadata
        group_name = meta.get("group", "limits")
        if group_name not in groups:
            title = "limits (each bad request gets a 4xx JSON error)"
            groups[group_name] = parser.add_argument_group(
                title if group_name == "limits" else group_name
            )
        env = meta.get("env")
        extra = f"default: {_shown_default(f)}" + (f"; env {env}" if env else "")
        groups[group_name].add_argument(
            _flag(f),
            dest=f"settings_{f.name}",
            type=_parser_for(f, kind),
            default=None,
            metavar=meta.get("metavar"),
            choices=meta.get("choices"),
            help=f"{meta['help']} ({extra})",
        )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``hybridgl`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="run the HTTP API and the web demo",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_settings_args(p)
    p.set_defaults(func=run)
    return p


def settings_from_args(
    args: argparse.Namespace, environ: typing.Mapping[str, str] | None = None
) -> ServerSettings:
    """The settings the options ask for: an option, else its variable, else the default.

    Raises:
        UsageError: a bad value in an environment variable, or values that do not fit
            together (exit code 2).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f, kind in _cli_fields():
        value = getattr(args, f"settings_{f.name}", None)
        env = f.metadata.get("env")
        if value is None and env and environ.get(env, "").strip():
            raw = environ[env].strip()
            try:
                value = _parser_for(f, kind)(raw)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"{env}={raw!r}: {e}") from None
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise UsageError(f"{env}={raw!r}: choose from {', '.join(choices)}")
        if value is None:
            continue
        scale = int(f.metadata.get("scale", 1))
        values[f.name] = int(value * scale) if scale != 1 else value
    top_k = int(getattr(args, "top_k", 3))
    values["top_k"] = top_k
    values["max_top_k"] = max(int(values.get("max_top_k", ServerSettings.max_top_k)), top_k)
    values["guidance"] = not getattr(args, "no_guidance", False)
    try:
        return ServerSettings(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r}: {e.strerror or e}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def missing_server_extra() -> list[str]:
    """The server extra's modules that are not installed."""
    return [m for m in SERVER_EXTRA if importlib.util.find_spec(m) is None]


def run(args: argparse.Namespace) -> int:
    """Handler of ``hybridgl serve``: build the model, bind, serve until Ctrl-C."""
    missing = missing_server_extra()
    if missing:
        missing_extra = MissingExtraError("hybridgl serve", "server", detail=", ".join(missing))
        eprint(f"{PROG}: error: {missing_extra}")
        return EXIT_USAGE
    import uvicorn

    from hybridgl.server.app import create_app
    from hybridgl.server.protocol import uvicorn_config

    settings = settings_from_args(args)
    if not settings.loopback and settings.api_key is None:
        eprint(
            f"{PROG}: warning: listening on {settings.host} without an API key: anyone "
            "who can reach this port can use the server (set --api-key or "
            "HYBRIDGL_API_KEY, or bind 127.0.0.1)"
        )
    if settings.thresholds:  # a bad thresholds file fails before the model load (exit 3)
        from hybridgl.targets import TargetRules, ThresholdsError

        try:
            TargetRules.load(settings.thresholds)
        except ThresholdsError as e:
            raise InputError(f"--thresholds: {e}") from None
    if settings.search_db:  # a bad --db fails before the slow model load (exit 3)
        from hybridgl.search.errors import lancedb_available
        from hybridgl.search.store import Store

        if not lancedb_available():
            eprint(f"{PROG}: error: {MissingExtraError('hybridgl serve --db', 'search')}")
            return EXIT_USAGE
        Store(settings.search_db).close()
    sock = _bind(settings.host, settings.port)  # before the slow model load: fail fast
    try:
        segmenter = build_segmenter(args)
        if settings.search_db:  # the index must match the server's model (exit 3)
            from hybridgl.search import Index

            Index(settings.search_db, segmenter=segmenter).check()
        app = create_app(segmenter, settings)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        eprint(f"{PROG}: serving on http://{shown}:{port}/ (Ctrl-C stops)")
        config = uvicorn_config(app, log_level=settings.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK
