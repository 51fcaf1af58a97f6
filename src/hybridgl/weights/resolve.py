"""From a registry name to a local file: an explicit path, the weights folders, the cache,
then a download (unless offline), with a message naming every way to get a missing file."""

from __future__ import annotations

import logging
from pathlib import Path

from hybridgl.errors import WeightsError
from hybridgl.weights.download import _download_url, _how_to_get
from hybridgl.weights.download import download as _download
from hybridgl.weights.integrity import _acceptable, hub_snapshot_complete, verify_file
from hybridgl.weights.locations import (
    OFFLINE_ENV,
    cache_dir,
    offline,
    search_dirs,
)
from hybridgl.weights.registry import (
    REGISTRY,
    Checkpoint,
    clip_checkpoint_names,
    get_checkpoint,
)

logger = logging.getLogger("hybridgl.weights")


def find_local(
    ckpt: Checkpoint, weights_dir: str | Path | None = None, *, verify: bool = False
) -> Path | None:
    """Look for a checkpoint file in :func:`search_dirs`.

    Args:
        ckpt: Checkpoint to look for (by its file name).
        weights_dir: Directory searched before the environment and cache directories.
        verify: Check the SHA-256 of each candidate (cached by the verification marker).
            Without it a candidate is hashed only when its size disagrees with the registry.

    Returns:
        The first acceptable ``<dir>/<filename>``, or None. Rejected candidates are
        logged as warnings and skipped.
    """
    for directory in search_dirs(weights_dir):
        candidate = directory / ckpt.filename
        present = candidate.is_dir() if ckpt.is_hub else candidate.is_file()
        if present and _acceptable(ckpt, candidate, verify):
            logger.debug("checkpoint %s found at %s", ckpt.name, candidate)
            return candidate
    return None


def resolve(
    name: str,
    path: str | Path | None = None,
    weights_dir: str | Path | None = None,
    download: bool | None = None,
    progress: bool = True,
    verify: bool = False,
) -> Path:
    """Turn a registry name into a local checkpoint file, downloading it if allowed.

    Order: explicit ``path``; ``weights_dir`` and ``$HYBRIDGL_WEIGHTS_DIR``; the cache
    directory; a download into the cache directory.

    Args:
        name: Registry name, e.g. ``"sam_vit_h"``.
        path: Explicit checkpoint file (or a directory holding ``ckpt.filename``); it
            must exist. Its SHA-256 is checked only with ``verify`` (a fine-tuned file is
            allowed to differ).
        weights_dir: Directory searched before the environment variable and the cache.
        download: Allow downloading; None means allowed unless ``HYBRIDGL_OFFLINE`` is set.
        progress: Show a progress bar while downloading.
        verify: Check the SHA-256 of a local file before returning it (fast after the
            first time thanks to the verification marker). Downloads are always checked.

    Returns:
        Path of an existing checkpoint file.

    Raises:
        ValueError: If ``name`` is not registered.
        WeightsError: If the explicit path is missing or fails verification, or the
            checkpoint is not found locally and cannot be downloaded.
    """
    ckpt = get_checkpoint(name)
    if path is not None and ckpt.is_hub:
        explicit = Path(path).expanduser()
        if not hub_snapshot_complete(ckpt, explicit) and hub_snapshot_complete(
            ckpt, explicit / ckpt.filename
        ):
            explicit = explicit / ckpt.filename
        if not hub_snapshot_complete(ckpt, explicit):
            raise WeightsError(
                f"{explicit} is not a complete copy of {ckpt.name!r}: it needs "
                f"{', '.join(ckpt.hub_files)} from the Hugging Face Hub repository "
                f"{ckpt.hub_repo}."
            )
        return explicit
    if path is not None:
        explicit = Path(path).expanduser()
        if explicit.is_dir():
            explicit = explicit / ckpt.filename
        if not explicit.is_file():
            raise WeightsError(
                f"Checkpoint file {explicit} for {ckpt.name!r} does not exist. "
                f"The official file is {ckpt.filename} from {_download_url(ckpt)}."
            )
        if verify and not verify_file(ckpt, explicit):
            raise WeightsError(
                f"Checkpoint file {explicit} does not match the SHA-256 of {ckpt.name!r} "
                f"(expected {ckpt.sha256}); re-download it from {_download_url(ckpt)}."
            )
        return explicit

    found = find_local(ckpt, weights_dir, verify=verify)
    if found is not None:
        return found

    allowed = (not offline()) if download is None else bool(download)
    if not allowed:
        why = (
            f"{OFFLINE_ENV} is set"
            if download is None
            else "downloads are disabled (download=False)"
        )
        dirs = search_dirs(weights_dir)
        rejected = [
            d / ckpt.filename for d in dirs if (d / ckpt.filename).is_file() and not ckpt.is_hub
        ]
        note = "".join(f"Rejected {p}: its SHA-256 does not match.\n" for p in rejected)
        raise WeightsError(
            f"Checkpoint {ckpt.name!r} ({ckpt.filename}) was not found and {why}.\n"
            + note
            + _how_to_get(ckpt, dirs)
        )
    return _download(ckpt, cache_dir(), progress=progress)


def resolve_clip(
    model: str,
    path: str | Path | None = None,
    weights_dir: str | Path | None = None,
    download: bool | None = None,
) -> Path:
    """Resolve CLIP weights from either source: an explicit ``path``; else the first copy
    found locally (OpenAI's file, then the Hub copy); else a download of OpenAI's file.

    Raises:
        WeightsError: nothing found and no download allowed; the message names both copies.
    """
    names = clip_checkpoint_names(model)
    if path is not None:
        p = Path(path).expanduser()
        hub = REGISTRY[names[-1]]
        if hub.is_hub and (hub_snapshot_complete(hub, p) or p.suffix == ".safetensors"):
            if not p.exists():
                raise WeightsError(f"CLIP weights {p} do not exist")
            return p
        return resolve(names[0], path=path, weights_dir=weights_dir, download=download)
    for name in names:
        found = find_local(REGISTRY[name], weights_dir)
        if found is not None:
            return found
    try:
        return resolve(names[0], weights_dir=weights_dir, download=download)
    except WeightsError as e:
        others = [REGISTRY[n] for n in names[1:] if REGISTRY[n].is_hub]
        alt = "".join(
            f"\nOr use the Hugging Face Hub copy: `hybridgl weights download --source hf` "
            f"({c.hub_repo}, folder {c.filename})."
            for c in others
        )
        raise WeightsError(str(e) + alt) from None
