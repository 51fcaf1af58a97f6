"""``hybridgl serve``: run the HTTP API and the web demo with uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import socket
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    UsageError,
    add_model_args,
    build_segmenter,
    eprint,
    non_negative_int,
    positive,
)

# Fail at import (the CLI then lists `serve` as unavailable with the install hint) rather
# than at run time, without paying for importing FastAPI on every `hybridgl` call.
_MISSING = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
if _MISSING:
    raise ImportError(f"hybridgl serve needs {', '.join(_MISSING)} (the 'server' extra)")

DESCRIPTION = """\
Serve the HTTP API (POST /v1/segment, GET /health, GET /v1/models, docs at /docs) and the
web demo at / . The model loads once; each image's proposals and features are cached
(keyed by the SHA-256 of the upload), so further phrases on an image are fast.

Example:
  hybridgl serve --port 8000 --sam vit_h
  curl -F image=@photo.jpg -F expression="the dog on the left" localhost:8000/v1/segment

Listen on 127.0.0.1 (the default) unless the network in front of it is trusted: there is no
authentication.
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {text!r}")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``hybridgl`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="run the HTTP API and the web demo",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    net.add_argument(
        "--port", type=_port, default=8000, help="port to bind, 0 for any free one (default: 8000)"
    )
    net.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: info)",
    )
    add_model_args(p)
    lim = p.add_argument_group("limits (each bad request gets a 4xx JSON error)")
    lim.add_argument(
        "--max-upload-mb",
        type=positive(float),
        default=20.0,
        metavar="MB",
        help="largest image file accepted, in MB (default: 20; 413 above)",
    )
    lim.add_argument(
        "--max-pixels",
        type=positive(int),
        default=40_000_000,
        metavar="N",
        help="largest image accepted, width x height (default: 40000000; 413 above)",
    )
    lim.add_argument(
        "--max-expressions",
        type=positive(int),
        default=16,
        metavar="N",
        help="most expressions per request (default: 16; 422 above)",
    )
    lim.add_argument(
        "--max-expression-chars",
        type=positive(int),
        default=500,
        metavar="N",
        help="longest expression in characters (default: 500; 422 above)",
    )
    lim.add_argument(
        "--timeout",
        type=positive(float),
        default=120.0,
        metavar="SECONDS",
        help="longest a request may wait for and use the model (default: 120; 504 after)",
    )
    lim.add_argument(
        "--max-queue",
        type=positive(int),
        default=32,
        metavar="N",
        help="most requests waiting for or using the model (default: 32; 503 above)",
    )
    lim.add_argument(
        "--max-top-k",
        type=positive(int),
        default=20,
        metavar="K",
        help="largest top_k a client may ask for (default: 20)",
    )
    cache = p.add_argument_group("image cache")
    cache.add_argument(
        "--cache-size",
        type=non_negative_int,
        default=8,
        metavar="N",
        help="images whose proposals and features are kept (default: 8; 0 disables)",
    )
    cache.add_argument(
        "--cache-mb",
        type=positive(int),
        default=2048,
        metavar="MB",
        help="memory bound of the image cache in MB (default: 2048)",
    )
    p.set_defaults(func=run)
    return p


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~hybridgl.server.app.ServerSettings` the options ask for."""
    from hybridgl.server.app import ServerSettings

    top_k = int(getattr(args, "top_k", 3))
    try:
        return ServerSettings(
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_expressions=args.max_expressions,
            max_expression_chars=args.max_expression_chars,
            request_timeout_s=args.timeout,
            max_queue=args.max_queue,
            cache_size=args.cache_size,
            cache_max_bytes=int(args.cache_mb) * 1024 * 1024,
            top_k=top_k,
            max_top_k=max(args.max_top_k, top_k),
            guidance=not getattr(args, "no_guidance", False),
        )
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


def run(args: argparse.Namespace) -> int:
    """Handler of ``hybridgl serve``: build the model, bind, serve until Ctrl-C."""
    import uvicorn

    from hybridgl.server.app import create_app

    settings = settings_from_args(args)
    sock = _bind(args.host, args.port)  # before the slow model load: fail fast on a busy port
    try:
        segmenter = build_segmenter(args)
        app = create_app(segmenter, settings)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        eprint(f"hybridgl: serving on http://{shown}:{port}/ (API docs at /docs; Ctrl-C stops)")
        config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK
