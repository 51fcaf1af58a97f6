"""The pixel limit of every image reader (photos, scans, video frames), torch- and Pillow-free.

Kept apart from :mod:`hybridgl.images` so that the readers it dispatches to
(:mod:`hybridgl.medical`) apply the same limit without importing the photo loader back.
"""

from __future__ import annotations

from hybridgl.errors import ImageTooLargeError

__all__ = ["DEFAULT_MAX_PIXELS", "check_pixels"]

DEFAULT_MAX_PIXELS = (1 << 30) // (2 * 12)
"""Largest image accepted by default: 44,739,242 pixels (about 44.7 MP, e.g. 8192 x 5461).

The same default as the server's, derived from its memory budget (docs/SERVER.md,
"Memory"): 1 GiB for decoded images, 2 images decoded at once, about 12 bytes per pixel at
the peak of one decode (Pillow's 4-byte RGB buffer, the RGB array, a rotation or mode
copy, the mask). The CLI and the Python API use it so that an image the server refuses is
refused everywhere, with the same message. Raise it with ``max_pixels`` /
``--max-pixels`` for larger photos (a 48 MP phone photo needs it)."""


def check_pixels(height: int, width: int, max_pixels: int | None, name: str = "image") -> None:
    """Refuse an image of ``height x width`` above ``max_pixels`` (None: no limit).

    Raises:
        ImageTooLargeError: the image is too large (an :class:`ImageError`); the message
            gives both numbers, the attributes the size and the limit.
    """
    if max_pixels is None:
        return
    pixels = int(height) * int(width)
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name} is too large: {width} x {height} = {pixels:,} pixels, "
            f"above the limit of {max_pixels:,} (max_pixels; the CLI's --max-pixels)",
            height=int(height),
            width=int(width),
            limit=int(max_pixels),
        )
