"""Settings of the HTTP server: one frozen dataclass, the single source of its options.

Each field carries its ``hybridgl serve`` flag, environment variable, help text and unit in
its metadata (:func:`option`); :mod:`hybridgl.cli.serve` generates the command-line options
from them, so a new setting is one field here. Importing this module needs no server extra.

Memory budget (docs/SERVER.md, "Memory"): decoded images are the one request-dependent
cost that scales with the pixel count. At most ``images_in_flight`` uploads are decoded and
held at once, and decoding one peaks at about :data:`DECODE_BYTES_PER_PIXEL` bytes per pixel,
so the default ``max_pixels`` is ``image_memory_bytes // (images_in_flight *
DECODE_BYTES_PER_PIXEL)``: 1 GiB / (2 x 12 B) = 44 739 242 pixels, the library's
:data:`hybridgl.images.DEFAULT_MAX_PIXELS` (tests keep the two equal).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

MB = 1024 * 1024  # the options in "MB" count MiB

#: Peak bytes per pixel while one upload is decoded and held: Pillow's decode buffer
#: (RGB is stored 4 bytes per pixel) and the ``(H, W, 3)`` uint8 array copied out of it
#: (3; together 7.05 B/px measured for 20 MP PNG and JPEG files), a possible
#: EXIF-rotation or mode-conversion copy (4) and the chosen mask (1).
DECODE_BYTES_PER_PIXEL = 12

#: Paths answered without the API key (the health probe, and the web page and its static
#: files, which hold no data: the page asks for the key when the API answers 401).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = None,
    metavar: str | None = None,
    scale: int = 1,
    group: str = "limits",
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    cli: bool = True,
    minimum: int = 1,
) -> Any:
    """A settings field with what ``hybridgl serve`` needs to offer it as an option.

    Args:
        default: the field's default (in the field's own unit, e.g. bytes).
        help: one line for ``--help`` (the default and the variable are appended).
        flag: the option (default: ``--`` and the field name with dashes).
        env: the environment variable read when the option is not given.
        metavar: the value's name in ``--help``.
        scale: the option's value times ``scale`` is the field's value (MB -> bytes).
        group: the ``--help`` section.
        choices: allowed values (strings).
        secret: never shown in ``/v1/models`` or ``--help`` defaults.
        cli: False for fields that come from other options (``--top-k``, ``--no-guidance``).
        minimum: smallest value the option accepts (1, or 0 where 0 means "none"/"any").
    """
    meta = {
        "help": help,
        "flag": flag,
        "env": env,
        "metavar": metavar,
        "scale": scale,
        "group": group,
        "choices": choices,
        "secret": secret,
        "cli": cli,
        "minimum": minimum,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerSettings:
    """Network options, limits and defaults of the HTTP server.

    Every field has a ``hybridgl serve`` option and a ``HYBRIDGL_...`` environment variable
    (see ``hybridgl serve --help``); docs/SERVER.md lists them with what happens over each
    limit. ``max_pixels=None`` derives the pixel limit from the memory budget
    (:attr:`pixel_limit`).
    """

    # network -----------------------------------------------------------------------
    host: str = option(
        "127.0.0.1",
        "address to bind; anything but loopback warns unless an API key is set",
        env="HYBRIDGL_HOST",
        metavar="ADDR",
        group="network",
    )
    port: int = option(
        8000,
        "port to bind, 0 for any free one",
        env="HYBRIDGL_PORT",
        metavar="PORT",
        group="network",
        minimum=0,
    )
    log_level: str = option(
        "info",
        "uvicorn's log level",
        env="HYBRIDGL_LOG_LEVEL",
        group="network",
        choices=("critical", "error", "warning", "info", "debug"),
    )
    api_key: str | None = option(
        None,
        "require 'Authorization: Bearer KEY' on every route but /health and the page",
        env="HYBRIDGL_API_KEY",
        metavar="KEY",
        group="network",
        secret=True,
    )
    read_timeout_s: float = option(
        30.0,
        "a request's head must arrive within this many seconds, and its body may pause "
        "no longer (the connection is closed after)",
        flag="--read-timeout",
        env="HYBRIDGL_READ_TIMEOUT",
        metavar="SECONDS",
        group="network",
    )
    # limits ------------------------------------------------------------------------
    max_upload_bytes: int = option(
        20 * MB,
        "largest image file accepted, in MB (413 above)",
        flag="--max-upload-mb",
        env="HYBRIDGL_MAX_UPLOAD_MB",
        metavar="MB",
        scale=MB,
    )
    max_pixels: int | None = option(
        None,
        "largest image accepted, width x height, read from the header before decoding "
        "(413 above); by default image memory / (images in flight x 12 bytes)",
        env="HYBRIDGL_MAX_PIXELS",
        metavar="N",
    )
    image_memory_bytes: int = option(
        1024 * MB,
        "memory budget for decoded images in flight, in MB (sets the default --max-pixels "
        "and bounds caller proposals)",
        flag="--image-memory-mb",
        env="HYBRIDGL_IMAGE_MEMORY_MB",
        metavar="MB",
        scale=MB,
    )
    images_in_flight: int = option(
        2,
        "most uploads decoded and held at once; the rest wait, still encoded",
        env="HYBRIDGL_IMAGES_IN_FLIGHT",
        metavar="N",
    )
    max_expressions: int = option(
        16, "most expressions per request (422 above)", env="HYBRIDGL_MAX_EXPRESSIONS", metavar="N"
    )
    max_expression_chars: int = option(
        500,
        "longest expression in characters (422 above)",
        env="HYBRIDGL_MAX_EXPRESSION_CHARS",
        metavar="N",
    )
    max_proposals: int = option(
        256,
        "most caller proposals (masks) per request (422 above)",
        env="HYBRIDGL_MAX_PROPOSALS",
        metavar="N",
    )
    request_timeout_s: float = option(
        120.0,
        "longest a request may wait for and use the model (504 after)",
        flag="--timeout",
        env="HYBRIDGL_TIMEOUT",
        metavar="SECONDS",
    )
    max_queue: int = option(
        32,
        "most requests admitted at once, waiting for or using the model (503 above)",
        env="HYBRIDGL_MAX_QUEUE",
        metavar="N",
    )
    max_top_k: int = option(
        20, "largest top_k a client may ask for", env="HYBRIDGL_MAX_TOP_K", metavar="K"
    )
    # image cache -------------------------------------------------------------------
    cache_size: int = option(
        8,
        "images whose proposals and features are kept (0 disables)",
        env="HYBRIDGL_CACHE_SIZE",
        metavar="N",
        group="image cache",
        minimum=0,
    )
    cache_max_bytes: int = option(
        2048 * MB,
        "memory bound of the image cache, in MB",
        flag="--cache-mb",
        env="HYBRIDGL_CACHE_MB",
        metavar="MB",
        scale=MB,
        group="image cache",
    )
    # collection search -------------------------------------------------------------
    search_db: str | None = option(
        None,
        "a `hybridgl index` database (folder or URI) to serve at POST /v1/search and in "
        "the page's Search tab",
        flag="--db",
        env="HYBRIDGL_SEARCH_DB",
        metavar="DB",
        group="collection search",
        secret=True,  # a server-side path: not shown to clients
    )
    # zero, one or many targets (docs/TARGETS.md) -----------------------------------
    thresholds: str | None = option(
        None,
        "a thresholds JSON (hybridgl calibrate) for requests with targets many/auto that "
        "send no thresholds of their own",
        env="HYBRIDGL_THRESHOLDS",
        metavar="FILE",
        group="targets",
        secret=True,  # a server-side path: not shown to clients
    )
    # request defaults (from the model options --top-k and --no-guidance) -------------
    top_k: int = option(3, "default candidates per expression", cli=False)
    guidance: bool = option(True, "default for spatial guidance", cli=False)

    def __post_init__(self) -> None:
        positive = (
            "max_upload_bytes",
            "image_memory_bytes",
            "images_in_flight",
            "max_expressions",
            "max_expression_chars",
            "max_proposals",
            "max_queue",
            "top_k",
            "max_top_k",
            "cache_max_bytes",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        for name in ("request_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.top_k > self.max_top_k:
            raise ValueError(f"top_k ({self.top_k}) must not exceed max_top_k ({self.max_top_k})")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it unset to turn it off)")

    @property
    def pixel_limit(self) -> int:
        """``max_pixels``, or the one derived from the memory budget when it is None."""
        if self.max_pixels is not None:
            return int(self.max_pixels)
        return self.image_memory_bytes // (self.images_in_flight * DECODE_BYTES_PER_PIXEL)

    @property
    def loopback(self) -> bool:
        """Whether ``host`` only accepts connections from this machine."""
        if self.host in ("localhost", "ip6-localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def limits(self) -> dict[str, Any]:
        """The settings a client may see (``/v1/models``): no secrets, no bind address."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("secret") or f.metadata.get("group") == "network":
                continue
            out[f.name] = getattr(self, f.name)
        out["max_pixels"] = self.pixel_limit
        out["read_timeout_s"] = self.read_timeout_s
        out["api_key_required"] = self.api_key is not None
        return out
