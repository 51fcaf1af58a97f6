"""Caller proposal files: ``.npy`` arrays of masks read from untrusted sources.

The header is read and checked (dtype, shape, size, pixels) before any array is allocated,
and a pickled object array is never loaded, so a hostile file can neither run code nor
take unbounded memory. Masks are then binarised by :func:`hybridgl.masks.as_proposal_masks`
(the one rule everywhere). Used by ``segment --proposals``, batch rows and the HTTP API.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.masks import as_proposal_masks

PathLike = str | os.PathLike

__all__ = ["MAX_PROPOSALS", "MAX_PROPOSAL_BYTES", "load_proposals_file", "read_proposals_npy"]


MAX_PROPOSALS = 4096
"""Most masks accepted in a caller's proposals file (SAM's generator keeps a few hundred)."""

MAX_PROPOSAL_BYTES = 4 << 30
"""Largest proposals array accepted from a file, in bytes as stored (4 GiB)."""


def read_proposals_npy(
    source: bytes | PathLike,
    height: int | None = None,
    width: int | None = None,
    *,
    max_proposals: int = MAX_PROPOSALS,
    max_bytes: int = MAX_PROPOSAL_BYTES,
) -> np.ndarray:
    """Read caller-supplied proposals from a ``.npy`` file (a path or its bytes).

    Everything that can be checked from the header is checked before any array memory
    is allocated: the dtype (bool, integer or float; object arrays, i.e. pickles, and
    strings are refused, and ``allow_pickle`` stays False), the shape (``(N, H, W)`` or
    ``(H, W)``, matching ``height`` x ``width`` when given, else at most
    :data:`~hybridgl.images.DEFAULT_MAX_PIXELS` per mask), ``N <= max_proposals``, the
    size ``N * H * W * itemsize <= max_bytes``, and that the file really holds that many
    bytes (a 1 KB file whose header claims 40 GB is refused at once).

    Returns:
        ``(N, H, W)`` bool masks, binarised by the one rule for proposals (``> 0.5`` for
        numeric arrays).

    Raises:
        ValueError: any of the above fails; the message says which check and the numbers.
    """
    from numpy.lib import format as npy_format

    if isinstance(source, (bytes, bytearray, memoryview)):
        fh: Any = io.BytesIO(bytes(source))
        name = "proposals"
    else:
        name = f"proposals {source}"
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise ValueError(f"cannot read {name}: {e.strerror or e}") from None
    with fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ValueError(f"{name} is not a .npy file (save it with numpy.save)")
        fh.seek(0)
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, OSError, SyntaxError, EOFError) as e:
            raise ValueError(f"{name}: bad .npy header ({e})") from None
        if dtype.hasobject or not (dtype == np.bool_ or dtype.kind in "iuf"):
            raise ValueError(
                f"{name} must hold bool or numeric masks, got dtype {dtype} "
                "(object arrays and pickles are not accepted)"
            )
        if len(shape) not in (2, 3):
            raise ValueError(f"{name} must be an N x H x W array, got shape {shape}")
        n = int(shape[0]) if len(shape) == 3 else 1
        h, w = int(shape[-2]), int(shape[-1])
        if height is not None and width is not None:
            if (h, w) != (int(height), int(width)):
                raise ValueError(
                    f"{name} have size {h}x{w} but the image is {height}x{width} (H x W)"
                )
        else:
            from hybridgl.images import DEFAULT_MAX_PIXELS

            if h * w > DEFAULT_MAX_PIXELS:
                raise ValueError(
                    f"{name}: masks of {w} x {h} pixels, above the limit of {DEFAULT_MAX_PIXELS:,}"
                )
        if n > max_proposals:
            raise ValueError(f"{name} hold {n:,} masks, more than the limit of {max_proposals:,}")
        nbytes = n * h * w * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(
                f"{name} would take {nbytes:,} bytes, more than the limit of {max_bytes:,}"
            )
        offset = fh.tell()
        fh.seek(0, io.SEEK_END)
        available = fh.tell() - offset
        if available < nbytes:
            raise ValueError(
                f"{name} is truncated: its header claims {nbytes:,} bytes of data, "
                f"the file holds {available:,}"
            )
        fh.seek(0)
        try:
            arr = npy_format.read_array(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"cannot read {name}: {e}") from None
    return as_proposal_masks(arr, h, w)


def load_proposals_file(
    path: str | Path, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Read caller proposals, ``(N, H, W)`` (or ``(H, W)``), from a ``.npy`` file.

    The header is checked before anything is allocated (:func:`read_proposals_npy`); with
    ``height`` and ``width`` the masks must match the image.

    Raises:
        InputError: the file is missing, not a plain .npy array of bool or numbers, too
            large, truncated, or of another size than the image.
    """
    from hybridgl.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"proposals file not found: {p}")
    try:
        return read_proposals_npy(p, height, width)
    except ValueError as e:
        raise InputError(str(e)) from None
