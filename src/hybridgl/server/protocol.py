"""Running the app with uvicorn, with a read timeout uvicorn does not have.

uvicorn's ``timeout_keep_alive`` only runs between requests: a client that connects and
sends nothing, sends half a request head, or sends the head and then stalls in the body
holds its connection (and a file descriptor) forever. :func:`read_timeout_protocol` builds
an h11 protocol class that closes such connections:

* the request head must be complete within ``read_timeout_s`` of the connection opening
  (or of its first byte after a keep-alive pause); otherwise the connection is closed,
  after a 408 answer when part of a head had arrived (a connection that sent nothing is
  closed quietly, like an expired keep-alive);
* while the body streams in, no pause may be longer than ``read_timeout_s`` (the
  connection is closed; the app sees a disconnect). Pauses caused by the server itself
  (flow control while the app is busy) do not count.

:func:`uvicorn_config` is the one place that builds the uvicorn configuration for both
``hybridgl serve`` and the tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from hybridgl.server.errors import error_body

log = logging.getLogger("hybridgl.server")


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        error_body("request_timeout", f"the request was not received within {seconds:g} s")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ReadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a read timeout (see the module docstring)."""

    read_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._timer_phase: str | None = None  # "head" or "body"

    # protocol interface ------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._disarm()
            return
        # the next request's head may already be partly buffered (pipelining)
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self._disarm()  # nothing yet: uvicorn's keep-alive timer covers the wait
        else:
            self._watch()

    # timers ------------------------------------------------------------------------
    def _watch(self) -> None:
        """Arm, keep or stop the timer for the phase the request is in."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._timer_phase != "head":  # a deadline for the whole head, not per read
                self._arm("head")
        elif state is h11.SEND_BODY:
            self._arm("body")  # an idle timer: every read restarts it
        else:
            self._disarm()  # the request is in: the app's own timeout applies

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._timer_phase = phase
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._expired, phase)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._timer_phase = None

    def _expired(self, phase: str) -> None:
        self._read_timer = None
        self._timer_phase = None
        if self.transport.is_closing():
            return
        if phase == "body" and self.flow is not None and self.flow.read_paused:
            self._arm("body")  # we stopped reading (the app is busy), not the client
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        if phase == "head":
            if not self.conn.trailing_data[0]:
                # nothing of a request arrived: close quietly, as an idle keep-alive ends
                log.info("%s: no request within %gs; closing", client, self.read_timeout_s)
            else:
                log.warning(
                    "%s: request head not received within %gs; closing",
                    client,
                    self.read_timeout_s,
                )
                if self.conn.our_state is h11.IDLE:
                    self.transport.write(_timeout_response(self.read_timeout_s))
        else:
            log.warning("%s: request body stalled for %gs; closing", client, self.read_timeout_s)
        self.transport.close()


def read_timeout_protocol(read_timeout_s: float) -> type[ReadTimeoutH11Protocol]:
    """An h11 protocol class for uvicorn with the given read timeout in seconds."""
    if not read_timeout_s > 0:
        raise ValueError(f"read_timeout_s must be > 0, got {read_timeout_s}")
    return type(
        "ReadTimeoutH11Protocol",
        (ReadTimeoutH11Protocol,),
        {"read_timeout_s": float(read_timeout_s)},
    )


def uvicorn_config(
    app: Any, *, read_timeout_s: float | None = None, log_level: str = "info"
) -> Any:
    """The uvicorn ``Config`` for the app: h11 with the read timeout, lifespan on.

    ``read_timeout_s`` defaults to the app's settings (``app.state.settings``), else 30 s.
    """
    import uvicorn

    if read_timeout_s is None:
        settings = getattr(getattr(app, "state", None), "settings", None)
        read_timeout_s = float(getattr(settings, "read_timeout_s", 30.0))

    return uvicorn.Config(
        app,
        http=read_timeout_protocol(read_timeout_s),
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=5,
    )
