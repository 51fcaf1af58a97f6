"""``hybridgl.Index``: build a searchable index of images and query it with a phrase.

Stage 1 compares the method's text embedding ``f_text = w E(s) + (1 - w) E(np)``
(METHOD.md section 4) with every stored proposal feature by cosine (exact, or through an
IVF index when one was built). Stage 2 rebuilds each of the best ``rerank`` images'
:class:`~hybridgl.state.ImageState` from the database and runs the full method on it
(``Segmenter.score``): softmax within the image, relation guidance, GEM coherence. Hits
are ranked by the cosine between ``f_text`` and the proposal stage 2 chose; see
docs/SEARCH.md for why that score, and not ``Prediction.score``, is comparable across images.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ExpressionError
from hybridgl.search import fingerprint as fpmod
from hybridgl.search.errors import IndexStoreError
from hybridgl.search.hits import SearchHit, SearchResults
from hybridgl.search.rows import GEM_DTYPES, _score, state_from_rows, text_embedding
from hybridgl.search.stages import (
    MIN_ANN_ROWS,
    _has_vector_index,
    build_ann,
    fetch_images,
    stage1,
    store_rows,
)
from hybridgl.search.store import Store, is_remote
from hybridgl.search.tables import FAILURES, IMAGES, PROPOSALS
from hybridgl.search.writer import IndexWriter
from hybridgl.spec import dtype_option

log = logging.getLogger(__name__)

DEFAULT_DB = "hybridgl-index"


# --------------------------------------------------------------------------- the index


class Index(IndexWriter):
    """A searchable index of images in a LanceDB database (folder or object-store URI).

    Args:
        db: index folder or URI (default ``./hybridgl-index``).
        segmenter: a loaded :class:`~hybridgl.segmenter.Segmenter` to use; otherwise one is
            built on first use from the options below, each defaulting to what the index
            was built with (or the package defaults for a new index).
        sam, clip, preset, dtype, device, weights_dir, spacy_model: model options, as for
            ``Segmenter.from_pretrained``.
        options: any model options, keyed as :meth:`hybridgl.spec.ModelSpec.with_given`
            takes them (``sam.points_per_side``, ``config.fusion``, ``threads``...): what
            the CLI's option group gives. Options not given come from the index.
        gem: store GEM tokens (needed for the coherence guidance in stage 2).
        gem_dtype: ``float16`` (half the bytes) or ``float32`` (stage 2 bit-identical to
            ``Segmenter.predict``).

    Raises (from the methods):
        IndexStoreError: missing or non-index ``db``; FingerprintMismatch: other models.
    """

    def __init__(
        self,
        db: str | os.PathLike = DEFAULT_DB,
        segmenter: Any | None = None,
        *,
        sam: str | None = None,
        clip: str | None = None,
        preset: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        weights_dir: str | os.PathLike | None = None,
        spacy_model: str | None = None,
        gem: bool = True,
        gem_dtype: str = "float16",
        options: dict[str, Any] | None = None,
    ) -> None:
        if gem_dtype not in GEM_DTYPES:
            raise ValueError(f"gem_dtype must be one of {GEM_DTYPES}, got {gem_dtype!r}")
        self.db = os.fspath(db)
        self._seg = segmenter
        given: dict[str, Any] = {
            "sam": sam,
            "clip": clip,
            "preset": preset,
            "dtype": dtype_option(dtype),
            "device": device,
            "weights_dir": None if weights_dir is None else os.fspath(weights_dir),
            "spacy_model": spacy_model,
        }
        #: the model options given (spec keys); the rest come from the index
        self._given: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self._given.update(options or {})
        from hybridgl.spec import ModelSpec

        ModelSpec(sam=None).with_given(self._given)  # a bad option fails here
        self.gem_dtype: str | None = gem_dtype if gem else None
        self._reader: Store | None = None
        self.last_removed: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ model
    def _expected_spec(self, stored: dict[str, Any] | None, *, need_sam: bool) -> Any:
        """The spec this index's segmenter is built from: the index's own (from its
        fingerprint; the defaults for a new index) with the given options applied."""
        from hybridgl.spec import ModelSpec

        base = fpmod.spec_of_fingerprint(stored) if stored else ModelSpec()
        spec = base.with_given(self._given)
        if spec.sam is None:
            spec = spec.with_options(sam=base.sam or "vit_h")
        return spec if need_sam else spec.with_options(sam=None)

    def _expected_fingerprint(
        self, stored: dict[str, Any] | None, *, need_sam: bool
    ) -> dict[str, Any]:
        """The fingerprint the options ask for, without loading a model."""
        spec = self._expected_spec(stored, need_sam=True)
        return fpmod.fingerprint_of_spec(spec, int((stored or {}).get("dim", 0)))

    def _build_segmenter(self, stored: dict[str, Any] | None, *, need_sam: bool) -> Any:
        from hybridgl.segmenter import Segmenter

        return Segmenter.from_spec(self._expected_spec(stored, need_sam=need_sam))

    def segmenter(self, store: Store | None = None, *, need_sam: bool = False) -> Any:
        """The segmenter, built (and checked against the index's fingerprint) on first use."""
        stored = store.fingerprint if store is not None else None
        if self._seg is None:
            fp = self._expected_fingerprint(stored, need_sam=need_sam)
            if stored is not None:
                fp["dim"] = stored["dim"]
                fpmod.check(stored, fp, self.db, check_sam=need_sam)
            self._seg = self._build_segmenter(stored, need_sam=need_sam)
        elif need_sam and getattr(self._seg, "sam", None) is None:
            if (
                "sam" not in self._given
                and stored is None
                and getattr(self._seg, "spec", None) is None
            ):
                raise ValueError("this Index's segmenter has no SAM: pass proposals_from")
            self._seg = self._build_segmenter(stored, need_sam=True)
        if stored is not None:
            current = fpmod.fingerprint_of_segmenter(self._seg)
            if not need_sam:
                current["sam"] = stored.get("sam")
            fpmod.check(stored, current, self.db, check_sam=need_sam)
        return self._seg

    def _spec(self, *, need_sam: bool) -> Any:
        """How Ray workers build the same segmenter as this index's (checked) one."""
        spec = getattr(self._seg, "spec", None)
        if spec is None:
            stored = self._reader.fingerprint if self._reader is not None else None
            spec = self._expected_spec(stored, need_sam=need_sam)
        if need_sam and spec.sam is None:
            spec = spec.with_options(sam=self._given.get("sam") or "vit_h")
        elif not need_sam:
            spec = spec.with_options(sam=None)
        return spec.with_driver_env()

    def _current_fingerprint(self, need_sam: bool) -> dict[str, Any]:
        seg = self.segmenter(None, need_sam=need_sam)
        fp = fpmod.fingerprint_of_segmenter(seg)
        if fp["sam"] is None:
            fp["sam"] = self._given.get("sam") or "vit_h"
        return fp

    # ------------------------------------------------------------------ reading
    def check(self) -> dict[str, Any]:
        """Open the index and check it against this segmenter; returns its fingerprint.

        Raises:
            IndexStoreError: missing or non-index database.
            FingerprintMismatch: the index was built with other models or options.
        """
        store = self._store()
        self.segmenter(store, need_sam=False)
        return store.fingerprint

    def image_path(self, image_id: str) -> str | None:
        """The indexed file of ``image_id`` (None when the index has no such image)."""
        row = self.image_record(image_id)
        return row["path"] if row else None

    def image_record(self, image_id: str) -> dict[str, Any] | None:
        """``{"path", "sha256", "size", "roots"}`` of ``image_id`` (None: no such image):
        what :func:`hybridgl.search.files.read_indexed_file` checks before reading it."""
        from hybridgl.search.tables import sql_str

        store = self._store()
        rows = (
            store.snapshot()[IMAGES]
            .search()
            .where(f"image_id = {sql_str(image_id)}")
            .select(["path", "sha256", "size"])
            .limit(1)
            .to_arrow()
            .to_pylist()
        )
        return {**rows[0], "roots": store.roots} if rows else None

    def _store(self) -> Store:
        if self._reader is None:
            self._reader = Store(self.db)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def stats(self) -> dict[str, Any]:
        """Counts, fingerprint, failures, ANN state and bytes on disk."""
        store = self._store()
        snap = store.snapshot()
        props = snap[PROPOSALS]
        fails = snap[FAILURES].to_arrow().to_pylist()
        out: dict[str, Any] = {
            "db": self.db,
            "images": snap[IMAGES].count_rows(),
            "proposals": props.count_rows(),
            "failures": len(fails),
            "failed": [{"path": r["path"], "error": r["error"]} for r in fails[:100]],
            "fingerprint": store.fingerprint,
            "model": fpmod.describe(store.fingerprint),
            "ann_index": _has_vector_index(props),
            "commit": snap["seq"],
        }
        if not is_remote(self.db):
            out["bytes"] = sum(f.stat().st_size for f in Path(self.db).rglob("*") if f.is_file())
        return out

    def search(
        self,
        expression: str,
        top: int = 20,
        *,
        rerank: int | None = None,
        min_score: float | None = None,
        top_k: int = 3,
        guidance: bool = True,
        targets: str = "one",
        thresholds: Any = None,
    ) -> SearchResults:
        """Find the images (and the region in each) that ``expression`` describes.

        Args:
            expression: English referring expression.
            top: most hits to return.
            rerank: how many images (best by stage 1) get the full method; default ``top``.
            min_score: drop hits whose similarity (cosine) is below it.
            top_k: candidates kept in each hit's prediction.
            guidance: spatial guidance in stage 2 (needs GEM tokens in the index).
            targets, thresholds: zero, one or many targets in stage 2 (docs/TARGETS.md):
                with ``"many"`` / ``"auto"`` an image where the phrase has no target is
                dropped (counted in ``SearchResults.no_target``) and a hit carries every
                target; ``"one"`` (default) is the method's single answer.

        Returns:
            The hits, best first (at most ``min(top, rerank)``), with the search's facts
            (:class:`SearchResults`).
        """
        import torch

        from hybridgl import guidance as gd

        if not isinstance(expression, str) or not expression.strip():
            raise ExpressionError("expression is empty")
        if top < 1:
            raise ValueError("top must be >= 1")
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        if min_score is not None and not np.isfinite(min_score):
            raise ValueError(f"min_score must be a finite number, got {min_score!r}")
        from hybridgl.targets import target_kwargs

        options = target_kwargs(targets, thresholds)  # ValueError / ThresholdsError first
        m = int(rerank) if rerank is not None else int(top)
        if m < 1:
            raise ValueError("rerank must be >= 1")
        t0 = time.perf_counter()
        store = self._store()
        snap = store.snapshot()  # a damaged index fails here, before any model loads
        seg = self.segmenter(store, need_sam=False)
        parse = seg.parse(expression)
        with torch.no_grad():
            f_text = text_embedding(seg, parse).float().cpu()
        t1 = time.perf_counter()
        best = stage1(snap[PROPOSALS], f_text.numpy(), m)
        t2 = time.perf_counter()
        ids = [i for i, _ in best]
        images, props = fetch_images(snap, ids)
        t3 = time.perf_counter()
        hits: list[SearchHit] = []
        no_target = 0
        for image_id in ids:
            row = images.get(image_id)
            if row is None:  # pragma: no cover - the snapshot holds both or neither
                continue
            state = state_from_rows(row, props.get(image_id, []))
            has_gem = row.get("gem_dtype") in GEM_DTYPES
            with torch.no_grad():
                pred = _score(seg, state, parse, top_k, guidance and has_gem, options)
            if not pred.found or pred.index is None:
                no_target += pred.evidence.rule in ("below_floor", "contrast")
                continue
            cos = gd.clip_logits(state.features, f_text, 1.0)
            hits.append(
                SearchHit(
                    path=row["path"],
                    image_id=image_id,
                    prediction=pred,
                    similarity=float(cos[pred.index]),
                    stage1_similarity=float(cos.max()),
                    width=int(row["width"]),
                    height=int(row["height"]),
                    candidate_masks=[state.masks[c.index] for c in pred.candidates],
                    sha256=str(row["sha256"]),
                    size=None if row.get("size") is None else int(row["size"]),
                    roots=store.roots,
                )
            )
        t4 = time.perf_counter()
        if min_score is not None:
            hits = [h for h in hits if h.similarity >= min_score]
        hits.sort(key=lambda h: (-h.similarity, -h.stage1_similarity, h.path))
        hits = hits[:top]
        for r, h in enumerate(hits, start=1):
            h.rank = r
        return SearchResults(
            hits,
            expression=expression,
            parse=parse.to_dict(),
            commit=snap["seq"],
            reranked=len(ids),
            no_target=no_target,
            timings={
                "text": t1 - t0,
                "stage1": t2 - t1,
                "fetch": t3 - t2,
                "stage2": t4 - t3,
                "total": time.perf_counter() - t0,
            },
        )

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the index for what a crash can leave (``hybridgl index --check``) and,
        with ``repair``, fix it without re-encoding (:mod:`hybridgl.search.check`).

        Holds the writer lock (a running index run makes it an ``IndexBusyError``).

        Returns:
            ``{"ok", "problems", "uncommitted"}``, plus ``"repair"`` (what was done) and
            ``"ok_after_repair"`` / ``"problems_after_repair"`` when it repaired.
        """
        from hybridgl.search.check import check_index, repair_index

        self.close()
        with Store(self.db, writer=True, recover=False) as store:
            report = check_index(store)
            if repair and not report["ok"]:
                report["repair"] = repair_index(store)
                after = check_index(store)
                report["ok_after_repair"] = after["ok"]
                report["problems_after_repair"] = after["problems"]
        return report

    def optimize(self, *, ann: bool | None = None) -> dict[str, Any]:
        """Compact the tables and build the IVF index (``ann=None``: when big enough).

        Returns:
            ``{"ann_built": bool, "proposals": rows}``.
        """
        with Store(self.db, writer=True) as store:
            for name in (IMAGES, PROPOSALS, FAILURES):
                store.latest(name).optimize()
            rows = store_rows(store)
            built = False
            if ann or (ann is None and rows >= MIN_ANN_ROWS):
                if rows < MIN_ANN_ROWS:
                    raise IndexStoreError(
                        f"an IVF index needs at least {MIN_ANN_ROWS} proposals to train; "
                        f"this index has {rows} (exact search is fast at that size)"
                    )
                build_ann(store)
                built = True
            store.commit()
        self.close()
        return {"ann_built": built, "proposals": rows}
