"""Downloads: a URL streamed, hashed and moved into place atomically, or a Hugging Face
Hub snapshot."""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hybridgl.errors import WeightsError
from hybridgl.fileio import atomic_dir, atomic_path
from hybridgl.weights.integrity import _CHUNK, _write_marker
from hybridgl.weights.locations import (
    CACHE_DIR_ENV,
    URL_BASE_ENV,
    WEIGHTS_DIR_ENV,
    _env,
    cache_dir,
    search_dirs,
)
from hybridgl.weights.registry import Checkpoint

logger = logging.getLogger("hybridgl.weights")


def _download_url(ckpt: Checkpoint, url: str | None = None) -> str:
    if url:
        return url
    base = _env(URL_BASE_ENV)
    if base is not None:
        return base.rstrip("/") + "/" + ckpt.filename
    return ckpt.url


def _how_to_get(ckpt: Checkpoint, dirs: list[Path], url: str | None = None) -> str:
    """The one hint for getting a checkpoint by hand: where from, and where to put it."""
    places = "\n".join(f"  - {d}" for d in dirs)
    if ckpt.is_hub:
        return (
            f"Download {', '.join(ckpt.hub_files)} of the Hugging Face Hub repository "
            f"{ckpt.hub_repo} (revision {ckpt.revision}) into a folder named {ckpt.filename} "
            f"in one of these directories, searched in this order:\n{places}\n"
            f"(`hybridgl weights download {ckpt.name}` does it.) Set {WEIGHTS_DIR_ENV} to add "
            f"a directory, {CACHE_DIR_ENV} to move the cache, or pass the folder's path."
        )
    return (
        f"Download {ckpt.filename} manually from {_download_url(ckpt, url)} "
        f"(SHA-256 {ckpt.sha256}) and put it in one of these directories, searched in "
        f"this order:\n{places}\n"
        f"Set {WEIGHTS_DIR_ENV} to add a directory, {CACHE_DIR_ENV} to move the cache, "
        f"or pass the file's path explicitly."
    )


def download_hub(ckpt: Checkpoint, dest_dir: Path | None = None, progress: bool = True) -> Path:
    """Fetch the files of a Hub entry into ``dest_dir/ckpt.filename`` with ``huggingface_hub``.

    The files land in a hidden temporary folder first, which is renamed into place only
    when every file arrived; a failure leaves nothing under the final name. ``HF_ENDPOINT``
    (huggingface_hub's own variable) selects a mirror.
    """

    if not ckpt.is_hub or ckpt.hub_repo is None:
        raise ValueError(f"{ckpt.name!r} is not a Hugging Face Hub entry")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            f"{ckpt.name} comes from the Hugging Face Hub, which needs huggingface_hub: "
            'pip install "hybridgl[transformers]"'
        ) from None
    target_dir = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    final = target_dir / ckpt.filename
    logger.info("downloading %s from %s@%s to %s", ckpt.name, ckpt.hub_repo, ckpt.revision, final)
    try:
        with atomic_dir(final) as tmp:
            for f in ckpt.hub_files:
                hf_hub_download(ckpt.hub_repo, f, revision=ckpt.revision, local_dir=tmp)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
    except Exception as exc:
        raise WeightsError(
            f"Downloading {ckpt.name} from the Hugging Face Hub ({ckpt.hub_repo}, revision "
            f"{ckpt.revision}) failed: {exc}. " + _how_to_get(ckpt, [target_dir])
        ) from exc
    return final


class _Progress:
    """A tqdm byte counter, or nothing at all when disabled or tqdm is missing."""

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a declared dependency
                return
            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def download(
    ckpt: Checkpoint,
    dest_dir: Path | None = None,
    progress: bool = True,
    url: str | None = None,
    timeout: float = 60,
) -> Path:
    """Download a checkpoint, check its SHA-256 and move it into place atomically.

    The file streams into a hidden temporary file in ``dest_dir`` while being hashed
    (:func:`hybridgl.fileio.atomic_path`); only a complete file with the right SHA-256 is
    renamed to ``dest_dir/ckpt.filename``. On any failure the temporary file is removed
    and nothing appears under the final name (an existing file there is left untouched).

    Args:
        ckpt: Checkpoint to download.
        dest_dir: Target directory, created if needed; defaults to :func:`cache_dir`.
        progress: Show a tqdm progress bar (only when stderr is a terminal).
        url: URL to use instead of ``$HYBRIDGL_WEIGHTS_URL_BASE/<filename>`` or
            ``ckpt.url``.
        timeout: Socket timeout in seconds for connecting and for each read.

    Returns:
        Path of the downloaded file.

    Raises:
        WeightsError: On a network error, an incomplete transfer, a SHA-256 mismatch or a
            folder that cannot be written; the message names the URL and how to fetch the
            file by hand.
    """
    if ckpt.is_hub:
        return download_hub(ckpt, dest_dir, progress=progress)
    target_dir = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    source = _download_url(ckpt, url)
    final = target_dir / ckpt.filename

    def hint() -> str:
        return _how_to_get(ckpt, search_dirs(), url)

    logger.info("downloading %s from %s to %s", ckpt.name, source, final)
    received = 0
    try:
        with atomic_path(final) as tmp:
            digest = hashlib.sha256()
            expected_length: int | None = None
            try:
                with open(tmp, "wb") as out:
                    request = urllib.request.Request(source, headers={"User-Agent": "hybridgl"})
                    with urllib.request.urlopen(request, timeout=timeout) as response:
                        header = response.headers.get("Content-Length")
                        if header is not None and header.strip().isdigit():
                            expected_length = int(header)
                        show = progress and sys.stderr.isatty()
                        bar = _Progress(expected_length or ckpt.size, ckpt.filename, show)
                        try:
                            while chunk := response.read(_CHUNK):
                                out.write(chunk)
                                digest.update(chunk)
                                received += len(chunk)
                                bar.update(len(chunk))
                        finally:
                            bar.close()
            except urllib.error.HTTPError as exc:
                raise WeightsError(
                    f"Downloading {ckpt.filename} from {source} failed: HTTP {exc.code} "
                    f"{exc.reason}. " + hint()
                ) from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                raise WeightsError(
                    f"Downloading {ckpt.filename} from {source} failed: {reason}. " + hint()
                ) from exc
            if expected_length is not None and received != expected_length:
                raise WeightsError(
                    f"Download of {ckpt.filename} from {source} was interrupted: received "
                    f"{received} of {expected_length} bytes; nothing was kept. Try again. " + hint()
                )
            actual = digest.hexdigest()
            if actual != ckpt.sha256:
                raise WeightsError(
                    f"Checksum mismatch for {ckpt.filename} downloaded from {source}: "
                    f"expected sha256 {ckpt.sha256}, got {actual} ({received} bytes). "
                    "The file was discarded. " + hint()
                )
    except WeightsError:
        raise
    except OSError as exc:  # the folder cannot be created or written, the disk is full
        raise WeightsError(
            f"Cannot write {ckpt.filename} into {target_dir}: {exc}. " + hint()
        ) from exc
    if ckpt.size is not None and received != ckpt.size:
        logger.warning(
            "%s has %d bytes, the registry says %d; accepted because its SHA-256 matches",
            ckpt.filename,
            received,
            ckpt.size,
        )
    _write_marker(final, ckpt.sha256)
    logger.info("saved %s (%d bytes, sha256 ok)", final, received)
    return final
