"""Registry of the official checkpoints and how to find, fetch and check them.

Every checkpoint the package can load has one :class:`Checkpoint` entry in
:data:`REGISTRY` with its download URL, file name, SHA-256 and size, or, for models published
on the Hugging Face Hub (the ``transformers`` proposal backends, the Hub copy of CLIP), the
Hub repository id, revision and files, kept locally as a folder named ``filename``.
:func:`resolve` turns a registry name into a local file (or folder), looking in this order:

1. an explicit ``path`` (it must exist);
2. the ``weights_dir`` argument, then ``$HYBRIDGL_WEIGHTS_DIR``;
3. the cache directory (:func:`cache_dir`);
4. a download into the cache directory, unless downloads are off
   (``download=False`` or ``HYBRIDGL_OFFLINE=1``).

Downloads stream to a temporary file beside the final one, hash while streaming and are
renamed into place only once the SHA-256 matches, so an interrupted or corrupt transfer
never leaves a file under the final name.

Environment variables:

- ``HYBRIDGL_CACHE_DIR``: cache directory (default ``$XDG_CACHE_HOME/hybridgl``, else
  ``~/.cache/hybridgl``).
- ``HYBRIDGL_WEIGHTS_DIR``: extra directory (or ``os.pathsep``-separated directories)
  searched before the cache.
- ``HYBRIDGL_OFFLINE``: ``1``/``true``/``yes`` forbids downloads.
- ``HYBRIDGL_WEIGHTS_URL_BASE``: mirror; the URL becomes ``<base>/<file name>``.

``HYBRIDGL_RANDOM_WEIGHTS`` (random weights instead of checkpoints) is read beside the
model builders, by :func:`hybridgl.models.random_weights_mode`.

Importing this module has no side effects: nothing is created, read or downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridgl.errors import WeightsError
from hybridgl.fileio import atomic_dir, atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_ENV",
    "OFFLINE_ENV",
    "REGISTRY",
    "URL_BASE_ENV",
    "WEIGHTS_DIR_ENV",
    "Checkpoint",
    "cache_dir",
    "clip_checkpoint_name",
    "download",
    "find_local",
    "get_checkpoint",
    "list_checkpoints",
    "offline",
    "resolve",
    "sam_checkpoint_name",
    "search_dirs",
    "sha256_file",
    "verify_file",
]

CACHE_DIR_ENV = "HYBRIDGL_CACHE_DIR"
WEIGHTS_DIR_ENV = "HYBRIDGL_WEIGHTS_DIR"
OFFLINE_ENV = "HYBRIDGL_OFFLINE"
URL_BASE_ENV = "HYBRIDGL_WEIGHTS_URL_BASE"

_KINDS = ("sam", "clip")
_HUB_URL = "https://huggingface.co"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # bytes per read, both when hashing and when downloading
_MARKER_SUFFIX = ".sha256.json"
_TRUE_VALUES = {"1", "true", "yes"}


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint.

    Attributes:
        name: Registry key, e.g. ``"sam_vit_h"``.
        kind: ``"sam"`` or ``"clip"``.
        arch: Architecture the weights belong to: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"``
            for SAM (the keys of ``segment_anything.sam_model_registry``), ``"ViT-B-16"``
            for CLIP (the open_clip model name).
        url: Official download URL.
        filename: File name on disk (the last part of the URL).
        sha256: Lower-case hex SHA-256 of the whole file; the authority on integrity.
        size: Size in bytes when known. Only a hint: a file whose SHA-256 matches is
            accepted whatever its size.
        hub_repo: Hugging Face Hub repository id for models published there; the local
            copy is then a folder named ``filename`` holding ``hub_files``, and ``sha256``
            may be None (the Hub pins content by ``revision``; per-file digests are not
            published in a form this registry can record offline).
        revision: Hub revision (a commit id where known, else a branch name).
        hub_files: the files of the Hub repository the model needs.
    """

    name: str
    kind: str
    arch: str
    url: str
    filename: str
    sha256: str | None
    size: int | None = None
    hub_repo: str | None = None
    revision: str | None = None
    hub_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Checkpoint {self.name!r}: kind must be one of {_KINDS}")
        if self.hub_repo is not None:
            if not self.hub_files or not self.revision:
                raise ValueError(f"Checkpoint {self.name!r}: a Hub entry needs files and revision")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"Checkpoint {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.sha256 is None and self.hub_repo is None:
            raise ValueError(f"Checkpoint {self.name!r}: sha256 is required off the Hub")
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"Checkpoint {self.name!r}: filename must be a bare file name")
        if self.size is not None and self.size < 0:
            raise ValueError(f"Checkpoint {self.name!r}: size must be >= 0 or None")

    @property
    def is_hub(self) -> bool:
        """True for a Hub snapshot kept as a folder (``filename``) of ``hub_files``."""
        return self.hub_repo is not None


def _hub(
    name: str, kind: str, arch: str, repo: str, revision: str, files: tuple[str, ...]
) -> Checkpoint:
    folder = repo.replace("/", "--")
    return Checkpoint(
        name=name,
        kind=kind,
        arch=arch,
        url=f"{_HUB_URL}/{repo}/tree/{revision}",
        filename=folder,
        sha256=None,
        hub_repo=repo,
        revision=revision,
        hub_files=files,
    )


_HF_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything"
_CLIP_VITB16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_CLIP_VITL14_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"

REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="sam_vit_h",
            kind="sam",
            arch="vit_h",
            url=f"{_SAM_BASE}/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size=2564550879,
        ),
        Checkpoint(
            name="sam_vit_l",
            kind="sam",
            arch="vit_l",
            url=f"{_SAM_BASE}/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size=1249524607,
        ),
        Checkpoint(
            name="sam_vit_b",
            kind="sam",
            arch="vit_b",
            url=f"{_SAM_BASE}/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size=375042383,
        ),
        Checkpoint(
            name="clip_vit_b16_openai",
            kind="clip",
            arch="ViT-B-16",
            # OpenAI names the folder after the file's SHA-256.
            url=f"https://openaipublic.azureedge.net/clip/models/{_CLIP_VITB16_SHA}/ViT-B-16.pt",
            filename="ViT-B-16.pt",
            sha256=_CLIP_VITB16_SHA,
            # Best belief, not confirmed against a second source: the SHA-256 decides.
            size=351334741,
        ),
        # The same OpenAI ViT-B/16 weights as open_clip keeps them on the Hugging Face Hub
        # (`open_clip.create_model("ViT-B-16", pretrained="openai")` downloads this file);
        # loaded with strict keys into the same model (hybridgl.models.clip).
        _hub(
            "clip_vit_b16_openai_hf",
            "clip",
            "ViT-B-16",
            "timm/vit_base_patch16_clip_224.openai",
            "main",
            ("open_clip_model.safetensors",),
        ),
        # OpenAI's ViT-L/14 (a larger CLIP, --clip ViT-L-14), from OpenAI and from the Hub
        Checkpoint(
            name="clip_vit_l14_openai",
            kind="clip",
            arch="ViT-L-14",
            url=f"https://openaipublic.azureedge.net/clip/models/{_CLIP_VITL14_SHA}/ViT-L-14.pt",
            filename="ViT-L-14.pt",
            sha256=_CLIP_VITL14_SHA,
        ),
        _hub(
            "clip_vit_l14_openai_hf",
            "clip",
            "ViT-L-14",
            "timm/vit_large_patch14_clip_224.openai",
            "main",
            ("open_clip_model.safetensors",),
        ),
        # Proposal backends through Hugging Face transformers (hybridgl[transformers]):
        # transformers-format checkpoints (config.json + model.safetensors) on the Hub.
        *(
            _hub(f"sam2.1_hiera_{s}", "sam", f"sam2.1_hiera_{s}",
                 f"facebook/sam2.1-hiera-{s.replace('_', '-')}", "main", _HF_MODEL_FILES)
            for s in ("tiny", "small", "base_plus", "large")
        ),
        _hub("slimsam_50", "sam", "slimsam_50", "nielsr/slimsam-50-uniform",
             "2a2699253149cf2eaf4097f9ff925ce41df4a2b9", _HF_MODEL_FILES),
        _hub("slimsam_77", "sam", "slimsam_77", "nielsr/slimsam-77-uniform", "main",
             _HF_MODEL_FILES),
        *(
            _hub(f"sam_hq_vit_{s[0]}", "sam", f"sam_hq_vit_{s[0]}",
                 f"syscv-community/sam-hq-vit-{s}", "main", _HF_MODEL_FILES)
            for s in ("base", "large", "huge")
        ),
        # EdgeTAM video tracker (hybridgl.video.hf_trackers; the SAM 2.1 trackers use the
        # sam2.1_hiera_* entries above: one Hub repository serves image and video models)
        _hub("edgetam", "sam", "edgetam", "yonigozlan/EdgeTAM-hf", "main",
             ("config.json", "model.safetensors")),
    )
}  # fmt: skip
"""Registry name -> :class:`Checkpoint` of every official checkpoint."""


# --------------------------------------------------------------------------- registry


def list_checkpoints() -> list[Checkpoint]:
    """Return every registered checkpoint, in registry order.

    Returns:
        The :class:`Checkpoint` entries of :data:`REGISTRY`.
    """
    return list(REGISTRY.values())


def get_checkpoint(name: str) -> Checkpoint:
    """Look up a checkpoint by registry name.

    Args:
        name: Registry key such as ``"sam_vit_h"`` or ``"clip_vit_b16_openai"``.

    Returns:
        The matching :class:`Checkpoint`.

    Raises:
        ValueError: If the name is not registered; the message lists the known names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"Unknown checkpoint {name!r}; known checkpoints: {known}") from None


def sam_checkpoint_name(arch: str) -> str:
    """Map a SAM architecture to its registry name.

    Args:
        arch: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"`` (``"vit-h"``, ``"default"`` (SAM's
            alias of ``vit_h``) and the registry name itself are accepted too).

    Returns:
        The registry name, e.g. ``"sam_vit_h"`` for ``"vit_h"``.

    Raises:
        ValueError: If no SAM checkpoint has this architecture.
    """
    key = str(arch).strip().lower().replace("-", "_")
    if key == "default":
        key = "vit_h"
    for k in (key, key.removeprefix("sam_")):
        for ckpt in REGISTRY.values():
            if ckpt.kind == "sam" and ckpt.arch.lower() == k:
                return ckpt.name
    known = ", ".join(c.arch for c in REGISTRY.values() if c.kind == "sam")
    raise ValueError(f"Unknown SAM architecture {arch!r}; known: {known}")


def clip_checkpoint_name(model: str) -> str:
    """Map a CLIP model name to its registry name.

    Args:
        model: open_clip model name such as ``"ViT-B-16"`` (OpenAI's spelling
            ``"ViT-B/16"`` and any letter case are accepted).

    Returns:
        The registry name, e.g. ``"clip_vit_b16_openai"`` for ``"ViT-B-16"``.

    Raises:
        ValueError: If no CLIP checkpoint has this architecture.
    """
    key = str(model).strip().lower().replace("/", "-")
    for ckpt in REGISTRY.values():
        if ckpt.kind == "clip" and ckpt.arch.lower() == key:
            return ckpt.name
    known = ", ".join(c.arch for c in REGISTRY.values() if c.kind == "clip")
    raise ValueError(f"Unknown CLIP model {model!r}; known: {known}")


CLIP_SOURCES = ("openai", "hf")


def clip_checkpoint_names(model: str) -> list[str]:
    """Registry names of every copy of a CLIP model's weights, OpenAI's own file first.

    ``ViT-B-16`` -> ``["clip_vit_b16_openai", "clip_vit_b16_openai_hf"]`` (the Hugging Face
    Hub copy that open_clip downloads); both load into the same model with strict keys.
    """
    first = clip_checkpoint_name(model)
    arch = REGISTRY[first].arch
    return [first] + [
        c.name for c in REGISTRY.values() if c.kind == "clip" and c.arch == arch and c.name != first
    ]


def clip_checkpoint_for_source(model: str, source: str) -> str:
    """The registry name of ``model``'s weights from ``source`` (``openai`` or ``hf``)."""
    if source not in CLIP_SOURCES:
        raise ValueError(f"unknown CLIP source {source!r}; use {' or '.join(CLIP_SOURCES)}")
    for name in clip_checkpoint_names(model):
        if REGISTRY[name].is_hub == (source == "hf"):
            return name
    raise ValueError(f"no {source} copy of CLIP {model!r} is registered")


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


# --------------------------------------------------------------------------- environment


def _env(name: str) -> str | None:
    """Return an environment variable stripped, or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def offline() -> bool:
    """Tell whether downloads are forbidden.

    Returns:
        True when ``HYBRIDGL_OFFLINE`` is ``1``, ``true`` or ``yes`` (any letter case).
    """
    value = _env(OFFLINE_ENV)
    return value is not None and value.lower() in _TRUE_VALUES


def cache_dir() -> Path:
    """Return the download cache directory (not created here).

    Returns:
        ``$HYBRIDGL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hybridgl``, else
        ``~/.cache/hybridgl``.
    """
    explicit = _env(CACHE_DIR_ENV)
    if explicit is not None:
        return Path(explicit).expanduser()
    xdg = _env("XDG_CACHE_HOME")
    if xdg is not None:
        return Path(xdg).expanduser() / "hybridgl"
    return Path.home() / ".cache" / "hybridgl"


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Return the directories searched for checkpoints, first match wins.

    Args:
        weights_dir: Directory given by the caller; searched first.

    Returns:
        ``weights_dir``, the directories in ``$HYBRIDGL_WEIGHTS_DIR`` (``os.pathsep``
        separated) and :func:`cache_dir`, in that order, without duplicates.
    """
    dirs: list[Path] = []
    if weights_dir is not None and str(weights_dir).strip():
        dirs.append(Path(weights_dir).expanduser())
    env_dirs = _env(WEIGHTS_DIR_ENV)
    if env_dirs is not None:
        dirs.extend(Path(p).expanduser() for p in env_dirs.split(os.pathsep) if p.strip())
    dirs.append(cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


# --------------------------------------------------------------------------- integrity


def sha256_file(path: str | Path) -> str:
    """Hash a file in chunks.

    Args:
        path: File to hash.

    Returns:
        Lower-case hex SHA-256 of the file's bytes.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _read_marker(path: Path) -> str | None:
    """Return the recorded SHA-256 of ``path`` if its marker matches size and mtime."""
    try:
        st = path.stat()
        data = json.loads(_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        isinstance(data, dict)
        and data.get("size") == st.st_size
        and data.get("mtime_ns") == st.st_mtime_ns
        and isinstance(data.get("sha256"), str)
    ):
        return data["sha256"]
    return None


def _write_marker(path: Path, sha256: str) -> None:
    """Record ``sha256`` with the file's size and mtime; silently skip read-only dirs."""
    try:
        st = path.stat()
        record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        atomic_write_json(_marker_path(path), record, indent=None)
    except OSError as exc:
        logger.debug("could not write verification marker for %s: %s", path, exc)


def _file_sha256(path: Path) -> str:
    """SHA-256 of ``path``, taken from its marker when the file is unchanged."""
    recorded = _read_marker(path)
    if recorded is not None:
        return recorded
    logger.info("verifying SHA-256 of %s", path)
    actual = sha256_file(path)
    _write_marker(path, actual)
    return actual


def hub_snapshot_complete(ckpt: Checkpoint, path: str | Path) -> bool:
    """True when ``path`` is a folder holding every file of a Hub entry."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in ckpt.hub_files)


def verify_file(ckpt: Checkpoint, path: str | Path) -> bool:
    """Check a file against a checkpoint's SHA-256.

    A successful hash is recorded in a ``<file>.sha256.json`` marker beside the file
    (size, mtime and digest), so later calls skip rehashing while the file is unchanged.

    Args:
        ckpt: Checkpoint whose SHA-256 is expected.
        path: File to check.

    Returns:
        True if the file exists and its SHA-256 matches; the size is not compared.
    """
    p = Path(path)
    if ckpt.sha256 is None:  # a Hub snapshot: pinned by revision, checked for completeness
        return hub_snapshot_complete(ckpt, p)
    if not p.is_file():
        return False
    actual = _file_sha256(p)
    if actual != ckpt.sha256:
        logger.warning(
            "%s does not match checkpoint %s: sha256 %s, expected %s",
            p,
            ckpt.name,
            actual,
            ckpt.sha256,
        )
        return False
    return True


def _acceptable(ckpt: Checkpoint, path: Path, verify: bool) -> bool:
    """Decide whether a local candidate file may be used.

    Without ``verify`` only a size that disagrees with the registry triggers hashing, and
    then the hash decides (the registry size is a hint, the SHA-256 the authority).
    """
    if ckpt.is_hub:
        return hub_snapshot_complete(ckpt, path)
    if verify:
        return verify_file(ckpt, path)
    if ckpt.size is not None:
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if size != ckpt.size:
            logger.warning(
                "%s has %d bytes, the registry says %d; checking its SHA-256",
                path,
                size,
                ckpt.size,
            )
            return verify_file(ckpt, path)
    return True


# --------------------------------------------------------------------------- lookup


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


def download_hub(ckpt: Checkpoint, dest_dir: Path | None = None, progress: bool = True) -> Path:
    """Fetch the files of a Hub entry into ``dest_dir/ckpt.filename`` with ``huggingface_hub``.

    The files land in a hidden temporary folder first, which is renamed into place only
    when every file arrived; a failure leaves nothing under the final name. ``HF_ENDPOINT``
    (huggingface_hub's own variable) selects a mirror.
    """
    import shutil

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


# --------------------------------------------------------------------------- download


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


# resolve's ``download`` argument shadows the function inside resolve; this is its name there.
_download = download
