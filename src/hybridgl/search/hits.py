"""What a search returns (:class:`SearchHit`, :class:`SearchResults`) and what an index
run did (:class:`AddReport`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridgl.types import Prediction

log = logging.getLogger("hybridgl.search.index")


# --------------------------------------------------------------------------- results


@dataclass
class SearchHit:
    """One image found for a phrase.

    Attributes:
        path: the image file (absolute, as indexed).
        image_id: the image's id in the index.
        prediction: the full method's answer on this image (mask, box, candidates).
        similarity: cosine similarity between the phrase's text embedding and the chosen
            proposal's hybrid feature: the ranking value, comparable across images (the
            prediction's own ``score`` is the method's final score within the image).
        stage1_similarity: the best cosine among the image's proposals (stage 1's).
        rank: 1 for the best hit.
    """

    path: str
    image_id: str
    prediction: Prediction
    similarity: float
    stage1_similarity: float
    rank: int = 0
    width: int = 0
    height: int = 0
    candidate_masks: list[np.ndarray] = field(default_factory=list, repr=False)
    # what the file held when indexed: checked before the file is read back (files.py)
    sha256: str = field(default="", repr=False)
    size: int | None = field(default=None, repr=False)
    roots: list[str] | None = field(default=None, repr=False)

    def read_file(self) -> bytes:
        """The image file's bytes, checked against what was indexed.

        Raises:
            IndexedFileGone: missing, or outside the indexed folders (a symbolic link).
            IndexedFileChanged: other bytes than indexed.
        """
        from hybridgl.search.files import read_indexed_file

        return read_indexed_file(self.path, sha256=self.sha256, size=self.size, roots=self.roots)

    def to_dict(self, *, mask: bool = True, candidate_masks: bool = False) -> dict[str, Any]:
        """The one record shape: :meth:`Prediction.to_dict` (RLE mask) with the hit's own
        fields beside it: ``rank``, ``path``, ``image_id``, ``similarity`` and
        ``stage1_similarity`` (docs/FORMATS.md). ``mask`` False leaves the mask out;
        ``candidate_masks`` adds each candidate's mask as RLE."""
        pred = self.prediction.to_dict()
        if not mask:
            pred.pop("mask", None)
        if candidate_masks and self.candidate_masks:
            from hybridgl.masks import mask_to_rle

            for c, m in zip(pred.get("candidates", []), self.candidate_masks, strict=False):
                c["mask"] = mask_to_rle(m)
        return {
            "rank": self.rank,
            "path": self.path,
            "image_id": self.image_id,
            "similarity": self.similarity,
            "stage1_similarity": self.stage1_similarity,
            **pred,
        }


class SearchResults(list):  # list[SearchHit]
    """The hits of :meth:`Index.search`, best first, with what the search did.

    Attributes:
        expression: the phrase; parse: its parse (``Parse.to_dict``); commit: the index
        version searched; reranked: images that got the full method; no_target: of
        those, images dropped because the phrase has no target there (``targets`` many
        or auto, docs/TARGETS.md); timings: seconds per stage (``text``, ``stage1``,
        ``fetch``, ``stage2``, ``total``).
    """

    def __init__(
        self,
        hits: Iterable[SearchHit] = (),
        *,
        expression: str = "",
        parse: dict[str, Any] | None = None,
        commit: Any = None,
        reranked: int = 0,
        timings: dict[str, float] | None = None,
        no_target: int = 0,
    ) -> None:
        super().__init__(hits)
        self.expression = expression
        self.parse = parse or {}
        self.commit = commit
        self.reranked = reranked
        self.no_target = no_target
        self.timings = dict(timings or {})

    def info(self) -> dict[str, Any]:
        """The search's facts, JSON-ready (without the hits)."""
        return {
            "expression": self.expression,
            "parse": self.parse,
            "commit": self.commit,
            "reranked": self.reranked,
            "no_target": self.no_target,
            "timings": self.timings,
        }


@dataclass
class AddReport:
    """What an :meth:`Index.add` run did."""

    indexed: int = 0
    skipped: int = 0
    pruned: int = 0
    proposals: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    ann_built: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed"] = [{"path": p, "error": e} for p, e in self.failed]
        return d
