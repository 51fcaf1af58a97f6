"""The index's storage: four LanceDB tables in one database (a folder or an object-store URI).

Tables (names and schemas in :mod:`hybridgl.search.tables`; the writer lock in
:mod:`hybridgl.search.locks`):

- ``images``: one row per indexed image (id, path, SHA-256 of the bytes, size, mtime,
  width, height, proposal count, proposal source, GEM tokens as float16 or float32 bytes);
- ``proposals``: one row per proposal (image id, proposal index, mask as COCO RLE, box
  XYWH, area, the hybrid feature vector, float32 and unnormalised as the method computes it);
- ``failures``: images an index run could not read, with the error;
- ``meta``: one row per key (format, model fingerprint, the committed table versions, the
  writer lease on object stores).

Consistency: every write to ``images``/``proposals``/``failures`` creates a new Lance
version; a batch becomes visible only when ``meta``'s ``commit`` row names those versions.
Readers check out exactly the committed versions, so a search during an index run sees the
state after some whole batch, never half of one. A writer that stops inside a commit (a
kill, a crash, Ctrl-C) leaves table versions past the committed ones; the next writer
rolls them back before it writes anything (:meth:`Store.rollback`), and a commit retried in
the same process rolls back its own partial writes first, so a batch is published once. Two writers: on a local folder an
exclusive ``flock`` on ``<db>/.hybridgl-index.lock`` refuses a second index run; on an
object store (no file locks) a lease row in ``meta`` does, best-effort (see docs/SEARCH.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hybridgl.search.errors import IndexBusyError, IndexStoreError, require_lancedb
from hybridgl.search.locks import LEASE_SECONDS, LOCK_NAME, FileLock
from hybridgl.search.tables import (
    DATA_TABLES,
    FAILURES,
    FORMAT,
    IMAGES,
    META,
    PROPOSALS,
    _meta_schema,
    failures_schema,
    images_schema,
    in_filter,
    proposals_schema,
)

_DELETE_CHUNK = 400

#: Fault injection for the tests: called with the name of each step of a commit, after
#: the step (``"delete"``, ``"clear_failures"``, ``"add_proposals"``, ``"add_images"``,
#: ``"add_failures"``, ``"meta"``). A hook that raises stops the writer right there, as a
#: kill would.
commit_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if commit_hook is not None:
        commit_hook(name)


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``s3://``, ``gs://``, ``az://``, ``memory://`` ...)."""
    return "://" in uri and not uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


class Store:
    """One opened index database.

    Args:
        uri: a folder path or an object-store URI.
        create: create the database (folder and tables) when it does not exist yet;
            needs ``fingerprint`` (which also gives the feature dimension).
        writer: hold the writer lock (flock or lease) until :meth:`close`, and roll back
            the writes of a writer that stopped inside a commit (:meth:`rollback`).
        recover: with ``writer``, whether to roll back at once (False for a check that
            wants to see them).
        fingerprint: the model fingerprint stored at creation, or a function returning it
            (called only when the index is created, after the lock is held).

    Raises:
        IndexStoreError: missing database (without ``create``), or a location that holds
            something other than an index.
        IndexBusyError: ``writer`` and another run holds the lock.
        MissingExtraError: LanceDB is not installed.
    """

    def __init__(
        self,
        uri: str | os.PathLike,
        *,
        create: bool = False,
        writer: bool = False,
        fingerprint: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        recover: bool = True,
    ) -> None:
        self.uri = os.fspath(uri)
        self.remote = is_remote(self.uri)
        self._lock: FileLock | None = None
        self._lease_id: str | None = None
        self.created = False
        lancedb = require_lancedb()
        if not self.remote:
            path = _local_path(self.uri)
            if path.exists() and not path.is_dir():
                raise IndexStoreError(f"--db {self.uri} is a file, not an index folder")
            if not path.exists():
                if not create:
                    raise IndexStoreError(
                        f"no index at {self.uri}: build one with `hybridgl index PATH --db {self.uri}`"
                    )
                path.mkdir(parents=True)
            elif not (path / f"{META}.lance").is_dir():
                others = [p.name for p in path.iterdir() if p.name != LOCK_NAME]
                if others or not create:
                    raise IndexStoreError(
                        f"{self.uri} is not a hybridgl index (no {META} table); "
                        "give an index folder or a new path"
                    )
            if writer:
                self._lock = FileLock(path / LOCK_NAME)
                self._lock.acquire(self.uri)
        try:
            self.db = lancedb.connect(self.uri)
            names = set(self._table_names())
            if META not in names:
                if not create:
                    raise IndexStoreError(
                        f"{self.uri} is not a hybridgl index (no {META} table); "
                        f"build one with `hybridgl index PATH --db {self.uri}`"
                    )
                if fingerprint is None:
                    raise IndexStoreError("creating an index needs the model fingerprint")
                self._create_tables(fingerprint() if callable(fingerprint) else fingerprint)
                self.created = True
            self.meta = self._read_meta()
            if int(self.meta.get("format", 0)) != FORMAT:
                raise IndexStoreError(
                    f"{self.uri} has index format {self.meta.get('format')}, this version of "
                    f"hybridgl reads format {FORMAT}; rebuild it with --rebuild"
                )
            if writer and self.remote:
                self._take_lease()
            if writer and recover and not self.created:
                self.rollback()
        except IndexStoreError:
            self.close()
            raise
        except Exception as e:  # the storage engine's own errors: a damaged index
            self.close()
            raise self.corrupt(e) from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _table_names(self) -> list[str]:
        return list(self.db.list_tables().tables)

    def _create_tables(self, fingerprint: dict[str, Any]) -> None:
        dim = int(fingerprint["dim"])
        images = self.db.create_table(IMAGES, schema=images_schema(), exist_ok=True)
        props = self.db.create_table(PROPOSALS, schema=proposals_schema(dim), exist_ok=True)
        fails = self.db.create_table(FAILURES, schema=failures_schema(), exist_ok=True)
        meta = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "created": time.time(),
            "commit": {
                IMAGES: images.version,
                PROPOSALS: props.version,
                FAILURES: fails.version,
                "seq": 0,
            },
        }
        # meta last: a folder without it is not an index, so a crash here leaves no half index
        self.db.create_table(META, data=self._meta_table(meta), schema=_meta_schema())

    @staticmethod
    def _meta_table(meta: dict[str, Any]) -> Any:
        import pyarrow as pa

        keys = sorted(meta)
        return pa.table(
            {"key": keys, "value": [json.dumps(meta[k], sort_keys=True) for k in keys]},
            schema=_meta_schema(),
        )

    def corrupt(self, error: BaseException) -> IndexStoreError:
        """The one-line error for an index the storage engine cannot read."""
        what = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return IndexStoreError(
            f"index {self.uri} is damaged or was changed by hand ({what}); check it with "
            f"`hybridgl index --db {self.uri} --check`, or rebuild it with --rebuild"
        )

    def _read_meta(self) -> dict[str, Any]:
        try:
            tbl = self.db.open_table(META).to_arrow().to_pylist()
            meta = {r["key"]: json.loads(r["value"]) for r in tbl}
            commit = meta["commit"]
            for name in DATA_TABLES:
                int(commit[name])
            meta["fingerprint"]["dim"]
        except IndexStoreError:
            raise
        except Exception as e:  # noqa: BLE001 - missing keys, bad JSON, engine errors
            raise self.corrupt(e) from None
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self.db.open_table(META).add(self._meta_table(meta), mode="overwrite")
        self.meta = meta

    def _take_lease(self) -> None:
        lease = self.meta.get("writer")
        now = time.time()
        if lease and now - float(lease.get("heartbeat", 0)) < LEASE_SECONDS:
            raise IndexBusyError(
                f"another index run is writing to {self.uri} (pid {lease.get('pid')} on "
                f"{lease.get('host')}, last seen {now - float(lease['heartbeat']):.0f} s ago); "
                f"wait for it, or for its lease to expire ({LEASE_SECONDS:.0f} s)"
            )
        self._lease_id = uuid.uuid4().hex
        meta = dict(self.meta)
        meta["writer"] = self._lease()
        self._write_meta(meta)

    def _lease(self) -> dict[str, Any]:
        return {
            "id": self._lease_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "heartbeat": time.time(),
        }

    def close(self) -> None:
        """Release the writer lock or lease (idempotent)."""
        if self._lease_id is not None:
            try:
                meta = self._read_meta()
                if (meta.get("writer") or {}).get("id") == self._lease_id:
                    meta.pop("writer", None)
                    self._write_meta(meta)
            except Exception:  # noqa: BLE001 - the lease then simply expires
                pass
            self._lease_id = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.meta["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.meta["fingerprint"]["dim"])

    def snapshot(self) -> dict[str, Any]:
        """The three data tables checked out at the last committed versions.

        Re-reads ``meta`` first, so a long-lived reader sees each new commit of a
        concurrent writer, and always a whole one.
        """
        self.meta = self._read_meta()
        commit = self.meta["commit"]
        out: dict[str, Any] = {}
        for name in (IMAGES, PROPOSALS, FAILURES):
            try:
                tbl = self.db.open_table(name)
                tbl.checkout(int(commit[name]))
            except Exception as e:  # noqa: BLE001 - a missing table or version
                raise self.corrupt(e) from None
            out[name] = tbl
        out["seq"] = int(commit.get("seq", 0))
        return out

    def latest(self, name: str) -> Any:
        """A writable handle on the latest version of a table (writers only)."""
        return self.db.open_table(name)

    def uncommitted(self) -> dict[str, tuple[int, int]]:
        """Data tables whose latest version is past the committed one (the writes of a
        writer that stopped inside a commit): ``{table: (committed, latest)}``."""
        commit = self._read_meta()["commit"]
        out = {}
        for name in DATA_TABLES:
            latest = int(self.db.open_table(name).version)
            if latest != int(commit[name]):
                out[name] = (int(commit[name]), latest)
        return out

    def rollback(self) -> dict[str, tuple[int, int]]:
        """Bring every data table back to its committed version (writers only).

        Lance keeps every version, so the committed state is restored as a new latest
        version with the committed content, which ``meta`` then names (readers see no
        change). Returns what :meth:`uncommitted` found.
        """
        stale = self.uncommitted()
        if not stale:
            return stale
        meta = self._read_meta()
        commit = dict(meta["commit"])
        for name, (committed, _latest) in stale.items():
            tbl = self.db.open_table(name)
            try:
                tbl.checkout(committed)
                tbl.restore()
            except Exception as e:  # noqa: BLE001 - the storage engine's own error types
                raise IndexStoreError(
                    f"{self.uri}: cannot roll table {name} back to its committed version "
                    f"{committed} ({type(e).__name__}); rebuild the index with --rebuild"
                ) from None
            commit[name] = int(self.db.open_table(name).version)
        meta["commit"] = commit
        self._write_meta(meta)
        return stale

    # ------------------------------------------------------------------ writing
    def commit(
        self,
        *,
        delete_ids: Iterable[str] = (),
        images: Any | None = None,
        proposals: Any | None = None,
        failures: Any | None = None,
        clear_failures: Iterable[str] = (),
        batch: str | None = None,
    ) -> int:
        """Apply one batch and publish it with one ``meta`` commit; returns its sequence.

        ``delete_ids``: image ids whose images/proposals rows are removed first (re-encoded
        or pruned images); ``images``/``proposals``/``failures``: Arrow tables to append;
        ``clear_failures``: paths whose failure rows are removed.

        Idempotent: a batch whose commit was interrupted (Ctrl-C) can be committed again;
        the partial writes of the first attempt are rolled back first (:meth:`rollback`),
        and a ``batch`` id that the last commit already published makes it a no-op (the
        interruption came after the commit record was written). A commit with no rows
        publishes the tables as they are (an index build).
        """
        if batch is not None:
            last = self._read_meta()["commit"]
            if last.get("batch") == batch:
                return int(last.get("seq", 0))
        ids = list(dict.fromkeys(delete_ids))
        clear = list(dict.fromkeys(clear_failures))
        if failures is not None and failures.num_rows:
            clear = list(dict.fromkeys([*clear, *failures.column("path").to_pylist()]))
        adds = [t for t in (images, proposals, failures) if t is not None and t.num_rows]
        if ids or clear or adds:
            self.rollback()
        imgs, props, fails = (self.latest(n) for n in (IMAGES, PROPOSALS, FAILURES))
        for i in range(0, len(ids), _DELETE_CHUNK):
            where = in_filter("image_id", ids[i : i + _DELETE_CHUNK])
            props.delete(where)
            imgs.delete(where)
        _step("delete")
        for i in range(0, len(clear), _DELETE_CHUNK):
            fails.delete(in_filter("path", clear[i : i + _DELETE_CHUNK]))
        _step("clear_failures")
        if proposals is not None and proposals.num_rows:
            props.add(proposals)
        _step("add_proposals")
        if images is not None and images.num_rows:
            imgs.add(images)
        _step("add_images")
        if failures is not None and failures.num_rows:
            fails.add(failures)
        _step("add_failures")
        meta = self._read_meta()
        if self._lease_id is not None:
            lease = meta.get("writer") or {}
            if lease.get("id") != self._lease_id:
                raise IndexBusyError(
                    f"another index run took over {self.uri} while this one was writing; "
                    "stopped without publishing this batch"
                )
            meta["writer"] = self._lease()
        seq = int(meta["commit"].get("seq", 0)) + 1
        meta["commit"] = {
            IMAGES: imgs.version,
            PROPOSALS: props.version,
            FAILURES: fails.version,
            "seq": seq,
        }
        if batch is not None:
            meta["commit"]["batch"] = batch
        self._write_meta(meta)
        _step("meta")
        return seq

    def add_roots(self, roots: Iterable[str]) -> None:
        """Record folders whose files this index may serve back (``meta["roots"]``)."""
        from hybridgl.search.files import minimal_roots

        meta = self._read_meta()
        old = list(meta.get("roots") or [])
        merged = minimal_roots([*old, *roots])
        if merged != sorted(old):
            meta["roots"] = merged
            self._write_meta(meta)

    @property
    def roots(self) -> list[str] | None:
        """The indexed folders (None for an index written before they were recorded)."""
        roots = self.meta.get("roots")
        return list(roots) if roots else None

    def set_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        meta = self._read_meta()
        meta["fingerprint"] = fingerprint
        self._write_meta(meta)

    def drop_all(self, fingerprint: dict[str, Any]) -> None:
        """Empty the index and start it again with ``fingerprint`` (``--rebuild``)."""
        for name in (META, IMAGES, PROPOSALS, FAILURES):
            if name in self._table_names():
                self.db.drop_table(name)
        self._create_tables(fingerprint)
        self.meta = self._read_meta()
        if self._lease_id is not None:
            meta = dict(self.meta)
            meta["writer"] = self._lease()
            self._write_meta(meta)
