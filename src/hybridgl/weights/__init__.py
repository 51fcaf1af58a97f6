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

The package: ``registry`` (the entries), ``locations`` (folders and environment),
``integrity`` (SHA-256), ``download`` and ``resolve``; this module is their public face.
"""

from hybridgl.weights.download import download, download_hub
from hybridgl.weights.integrity import hub_snapshot_complete, sha256_file, verify_file
from hybridgl.weights.locations import (
    CACHE_DIR_ENV,
    OFFLINE_ENV,
    URL_BASE_ENV,
    WEIGHTS_DIR_ENV,
    cache_dir,
    offline,
    search_dirs,
)
from hybridgl.weights.registry import (
    CLIP_SOURCES,
    REGISTRY,
    Checkpoint,
    clip_checkpoint_for_source,
    clip_checkpoint_name,
    clip_checkpoint_names,
    get_checkpoint,
    list_checkpoints,
    sam_checkpoint_name,
)
from hybridgl.weights.resolve import find_local, resolve, resolve_clip

__all__ = [
    "CACHE_DIR_ENV",
    "CLIP_SOURCES",
    "OFFLINE_ENV",
    "REGISTRY",
    "URL_BASE_ENV",
    "WEIGHTS_DIR_ENV",
    "Checkpoint",
    "cache_dir",
    "clip_checkpoint_for_source",
    "clip_checkpoint_name",
    "clip_checkpoint_names",
    "download",
    "download_hub",
    "find_local",
    "get_checkpoint",
    "hub_snapshot_complete",
    "list_checkpoints",
    "offline",
    "resolve",
    "resolve_clip",
    "sam_checkpoint_name",
    "search_dirs",
    "sha256_file",
    "verify_file",
]
