"""File names and ids as text: valid Unicode for JSON and tables, escaped for terminals.

A POSIX file name is bytes; Python decodes the bytes that are not UTF-8 (common in old
archives: Latin-1, Shift-JIS) as lone surrogates (``os.fsdecode``), which no UTF-8 writer
accepts: JSON output would be invalid, an Arrow column refuses them, a strict stdout
raises. And any name may hold control characters (a newline, an ANSI escape) that would
split or repaint a terminal line.

Two views, one rule each:

* :func:`safe_text` for machine output (JSON, JSONL, index tables): the name unchanged
  when it is valid Unicode, else each undecodable byte written as ``\\xNN`` (so the text
  is valid UTF-8 and says which bytes the name holds). JSON escapes control characters
  itself, so they are kept.
* :func:`show` for a line meant for people: :func:`safe_text`, and every control or
  line/paragraph-separator or bidirectional-override character written as an escape
  (``\\n``, ``\\x1b``, ``\\u202e``), so one name is one line and cannot change the terminal.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any

__all__ = ["is_text", "safe_text", "show"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_text(value: str) -> bool:
    """True when ``value`` is valid Unicode (no lone surrogates from undecodable bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(value: Any) -> str:
    """``value`` (a str or path) as valid Unicode: undecodable file-name bytes as ``\\xNN``."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    text = str(text)
    if is_text(text):
        return text
    raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else None
    if raw is not None:
        return raw.decode("utf-8", "backslashreplace")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
    """True when every surrogate in ``text`` is a ``surrogateescape`` byte (U+DC80-U+DCFF)."""
    return all(not (0xD800 <= ord(c) <= 0xDFFF) or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(c: str) -> bool:
    # Cc: C0, DEL, C1 controls; Zl/Zp: line and paragraph separators; the bidi
    # embeddings, overrides and isolates that reorder what a terminal shows
    return (
        unicodedata.category(c) in ("Cc", "Zl", "Zp")
        or "\u202a" <= c <= "\u202e"
        or "\u2066" <= c <= "\u2069"
    )


def show(value: Any) -> str:
    """``value`` for one line of human output: :func:`safe_text` with control characters
    escaped (``\\n``, ``\\x1b``, ...); printable text, spaces included, is unchanged."""
    text = safe_text(value)
    if not any(_unsafe(c) for c in text):
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)
