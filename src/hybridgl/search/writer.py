"""Writing an index: encode new images on an engine, commit their rows, prune, remove,
verify and optimize (the :class:`IndexWriter` half of :class:`~hybridgl.search.index.Index`)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridgl.errors import ImageError
from hybridgl.limits import DEFAULT_MAX_PIXELS
from hybridgl.names import is_text, safe_text, show
from hybridgl.search import fingerprint as fpmod
from hybridgl.search import rows as row_encoding
from hybridgl.search.hits import AddReport
from hybridgl.search.inputs import CocoProposals, collect_images, image_id_for
from hybridgl.search.rows import (
    IndexTask,
    _failures_table,
    _images_table,
    _proposals_table,
    _rows_for,
    decode_rows,
)
from hybridgl.search.stages import AUTO_ANN_ROWS, _has_vector_index, build_ann, store_rows
from hybridgl.search.store import Store
from hybridgl.search.tables import IMAGES, PROPOSALS

log = logging.getLogger("hybridgl.search.index")


def _progress(total: int, enabled: bool) -> Any:
    from hybridgl.jobs.engine import progress_bar

    return progress_bar(total, "index", "img", enabled)


class IndexWriter:
    """The writing half of :class:`~hybridgl.search.index.Index` (add, remove, verify,
    optimize); a mixin, the model and reading half is in ``index.py``."""

    # provided by Index
    db: str
    gem_dtype: str | None
    _seg: Any
    _given: dict[str, Any]

    if TYPE_CHECKING:

        def segmenter(self, store: Store | None = None, *, need_sam: bool = False) -> Any: ...
        def close(self) -> None: ...
        def _current_fingerprint(self, need_sam: bool) -> dict[str, Any]: ...
        def _build_segmenter(self, stored: dict[str, Any] | None, *, need_sam: bool) -> Any: ...
        def _spec(self, *, need_sam: bool) -> Any: ...

    # ------------------------------------------------------------------ writing
    def _open_writer(self, *, need_sam: bool, rebuild: bool) -> Store:
        store = Store(
            self.db,
            create=True,
            writer=True,
            fingerprint=lambda: self._current_fingerprint(need_sam),
        )
        try:
            if rebuild and not store.created:
                # --rebuild: start the index again with the models this run asks for
                if self._seg is None:
                    self._seg = self._build_segmenter(store.fingerprint, need_sam=need_sam)
                fp = fpmod.fingerprint_of_segmenter(self._seg)
                if fp["sam"] is None:
                    fp["sam"] = self._given.get("sam") or store.fingerprint.get("sam") or "vit_h"
                store.drop_all(fp)
            self.segmenter(store, need_sam=need_sam)
        except BaseException:
            store.close()
            raise
        return store

    def add(
        self,
        paths: Iterable[str | os.PathLike] | str | os.PathLike,
        progress: bool = True,
        *,
        proposals_from: str | os.PathLike | None = None,
        prune: bool = False,
        rebuild: bool = False,
        commit_every: int = 32,
        commit_seconds: float = 20.0,
        on_failure: Callable[[str, str], None] | None = None,
        engine: Any = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> AddReport:
        """Index images: folders (recursive), image files and list files.

        Unchanged images (same SHA-256, same proposals) are skipped; changed ones are
        re-encoded; unreadable ones are recorded in the ``failures`` table and skipped.
        Work is committed every ``commit_every`` images or ``commit_seconds``, so an
        interrupted run loses at most one batch and the next run resumes.

        Args:
            paths: what to index.
            progress: show a progress bar on stderr.
            proposals_from: a COCO instances JSON whose masks replace SAM's proposals.
            prune: remove entries whose file no longer exists.
            rebuild: empty the index first when it was built with other models.
            on_failure: called with ``(path, error)`` for each image that failed.
            engine: :class:`hybridgl.jobs.engine.EngineOptions`; ``engine="ray"`` encodes
                the images on Ray actors (one model each) and writes their rows here.
            max_pixels: an image above this many pixels (from its header) is a recorded
                failure (None: no limit of ours; the CLI's ``--max-pixels``).
        """
        t0 = time.perf_counter()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files, listed_missing = collect_images(paths)
        coco = CocoProposals(proposals_from) if proposals_from is not None else None
        report = AddReport()
        store = self._open_writer(need_sam=coco is None, rebuild=rebuild)
        try:
            from hybridgl.search.files import roots_of

            # the folders whose files the index may serve back (search/files.py)
            store.add_roots(roots_of(paths, (f for f in files if is_text(str(f)))))
            self._add(
                store,
                files,
                listed_missing,
                coco,
                prune,
                progress,
                commit_every,
                commit_seconds,
                report,
                on_failure,
                engine,
                max_pixels,
            )
            if store_rows(store) >= AUTO_ANN_ROWS and not _has_vector_index(
                store.latest(PROPOSALS)
            ):
                build_ann(store)
                store.commit()  # publish the indexed table versions to readers
                report.ann_built = True
        finally:
            store.close()
            self.close()  # the next read sees this run's commits
        report.seconds = time.perf_counter() - t0
        return report

    def _add(
        self,
        store: Store,
        files: list[Path],
        listed_missing: list[tuple[str, str]],
        coco: CocoProposals | None,
        prune: bool,
        progress: bool,
        commit_every: int,
        commit_seconds: float,
        report: AddReport,
        on_failure: Callable[[str, str], None] | None,
        engine: Any = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        from hybridgl.images import load_image

        seg = self.segmenter(store, need_sam=coco is None)
        use_ray = engine is not None and getattr(engine, "engine", "local") == "ray"
        units: list[Any] = []
        snap = store.snapshot()
        existing = {
            r["path"]: r
            for r in snap[IMAGES]
            .search()
            .select(["image_id", "path", "sha256", "proposals_key", "gem_dtype"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        }
        delete_ids: list[str] = []
        image_rows: list[dict[str, Any]] = []
        prop_parts: list[dict[str, list[Any]]] = []
        failures: list[tuple[str, str]] = []
        done_paths: list[str] = []
        last_commit = time.monotonic()
        wanted_gem = self.gem_dtype or "none"

        def fail(path: str, error: str) -> None:
            path, error = safe_text(path), safe_text(error)  # the failures table is UTF-8
            failures.append((path, error))
            report.failed.append((path, error))
            bar.write(show(f"hybridgl: failed {path}: {error}"), file=sys.stderr)
            if on_failure is not None:
                on_failure(path, error)

        batch = uuid.uuid4().hex  # names the pending batch: a retried commit publishes it once

        def flush() -> None:
            nonlocal last_commit, batch
            if delete_ids or image_rows or failures or done_paths:
                store.commit(
                    delete_ids=delete_ids,
                    images=_images_table(image_rows) if image_rows else None,
                    proposals=_proposals_table(prop_parts, store.dim) if prop_parts else None,
                    failures=_failures_table(failures) if failures else None,
                    clear_failures=done_paths,
                    batch=batch,
                )
            batch = uuid.uuid4().hex
            delete_ids.clear()
            image_rows.clear()
            prop_parts.clear()
            failures.clear()
            done_paths.clear()
            last_commit = time.monotonic()

        def accept(image_row: dict[str, Any], props: Any, path: str, replace: bool) -> None:
            if replace:  # an older version of the image: its rows go in the same commit
                delete_ids.append(image_row["image_id"])
            image_rows.append(image_row)
            prop_parts.append(props)
            done_paths.append(path)
            report.indexed += 1
            report.proposals += image_row["num_proposals"]

        def advance() -> None:
            """One file done: commit when the batch is big or old enough."""
            bar.update(1)
            if len(image_rows) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                flush()

        bar = _progress(len(files), progress)
        interrupted = False
        try:
            if prune:
                for path, row in existing.items():
                    if not Path(path).is_file():
                        delete_ids.append(row["image_id"])
                        report.pruned += 1
            for path, error in listed_missing:
                fail(path, error)
            for f in files:
                path = str(f)
                bar.set_postfix_str(
                    f"new {report.indexed} skipped {report.skipped} proposals {report.proposals} "
                    f"failed {len(report.failed)}",
                    refresh=False,
                )
                if not is_text(path):
                    fail(
                        path,
                        "the file name is not valid UTF-8 (its undecodable bytes are shown as "
                        "\\xNN); the index stores names as text: rename the file (e.g. with convmv)",
                    )
                    bar.update(1)
                    continue
                try:
                    data = f.read_bytes()
                    stat = f.stat()
                except OSError as e:
                    fail(path, f"cannot read: {e.strerror or e}")
                    bar.update(1)
                    continue
                sha = hashlib.sha256(data).hexdigest()
                image_id = image_id_for(path)
                try:
                    pkey = coco.key(f) if coco is not None else "sam"
                except ImageError as e:
                    fail(path, str(e))
                    bar.update(1)
                    continue
                prev = existing.get(path)
                if (
                    prev is not None
                    and prev["sha256"] == sha
                    and prev["proposals_key"] == pkey
                    and prev["gem_dtype"] == wanted_gem
                ):
                    report.skipped += 1
                    bar.update(1)
                    continue
                if use_ray:
                    from hybridgl.jobs.units import WorkUnit

                    entry = coco.entry(f) if coco is not None else None
                    units.append(
                        WorkUnit(
                            key=path,
                            rows=[{"path": path}],
                            data={
                                "path": path,
                                "image_id": image_id,
                                "proposals_key": pkey,
                                "replace": prev is not None,
                                "coco": entry,
                            },
                        )
                    )
                    continue
                try:
                    image = load_image(data, max_pixels=max_pixels)
                    masks = coco.masks(f, *image.shape[:2]) if coco is not None else None
                    state = row_encoding._encode_image(seg, image, masks)  # one patchable place
                except ImageError as e:
                    fail(path, str(e).replace("<bytes>", path))
                    bar.update(1)
                    continue
                except (ValueError, RuntimeError) as e:
                    fail(path, f"{type(e).__name__}: {e}")
                    bar.update(1)
                    continue
                image_row, props = _rows_for(
                    image_id,
                    f,
                    sha,
                    stat,
                    state,
                    "given" if coco is not None else "sam",
                    pkey,
                    self.gem_dtype,
                )
                accept(image_row, props, path, replace=prev is not None)
                advance()
            if units:
                from hybridgl.jobs.engine import run_units

                def sink(unit: Any, records: list[dict[str, Any]]) -> None:
                    rec = records[0]
                    path = unit.data["path"]
                    if rec.get("error"):
                        fail(path, str(rec["error"]))
                    else:
                        image_row, props = decode_rows(rec)
                        accept(image_row, props, path, replace=bool(unit.data["replace"]))
                    advance()

                run_units(
                    units,
                    IndexTask(self.gem_dtype, "given" if coco is not None else "sam", max_pixels),
                    sink,
                    spec=self._spec(need_sam=coco is None),
                    options=engine,
                )
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            bar.set_postfix_str(
                f"new {report.indexed} skipped {report.skipped} proposals {report.proposals} "
                f"failed {len(report.failed)}"
            )
            bar.close()
            if interrupted:
                flush()  # keep the finished images: the next run resumes after them
        flush()

    def remove(
        self, items: Iterable[str | os.PathLike] | str | os.PathLike, *, dry_run: bool = False
    ) -> int:
        """Remove images by path (files or folders, as indexed) or by image id.

        An empty item, ``.``, ``..`` or a filesystem root is refused (it would name every
        image under the current folder, or all of them): name the folder itself.

        Args:
            dry_run: change nothing; :attr:`last_removed` lists what would go.

        Returns:
            How many images were removed (or would be, with ``dry_run``); their
            ``(image_id, path)`` are in :attr:`last_removed`.

        Raises:
            ValueError: an empty, ``.``/``..`` or root item.
        """
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        wanted = [os.fspath(i) for i in items]
        prefixes = []
        for w in wanted:
            text = w.strip()
            norm = os.path.normpath(text) if text else ""
            if not text or norm == "." or all(part == ".." for part in Path(norm).parts):
                raise ValueError(
                    f"refusing to remove {w!r}: it would remove every image under the current "
                    "folder (or above it); give the folder or file by name"
                )
            a = str(Path(text).absolute())
            if Path(a).parent == Path(a):
                raise ValueError(f"refusing to remove {w!r}: a filesystem root")
            prefixes.append((text, a, a.rstrip("/") + "/"))
        with Store(self.db, writer=True) as store:
            rows = (
                store.snapshot()[IMAGES]
                .search()
                .select(["image_id", "path"])
                .limit(None)
                .to_arrow()
                .to_pylist()
            )
            found = [
                (r["image_id"], r["path"])
                for r in rows
                if any(
                    r["image_id"] == text or r["path"] == a or r["path"].startswith(folder)
                    for text, a, folder in prefixes
                )
            ]
            if found and not dry_run:
                store.commit(delete_ids=[i for i, _ in found])
        self.close()
        self.last_removed = found
        return len(found)
