"""Work units and the worker that turns one unit into records.

A **work unit** is one image with all its rows (expressions): every image is encoded once,
by one worker, whichever engine runs it. A unit is plain JSON-ready data (paths as text,
rows as dicts), so it can cross process and machine boundaries unchanged.

A **task** says what a job does with a unit on a worker: load the image, encode it, answer
the rows, and return one JSON-ready record per row. Tasks hold only plain settings, so they
pickle to Ray actors; the segmenter is built on the worker from the job's
:class:`~hybridgl.spec.ModelSpec` (never from command-line arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hybridgl.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from hybridgl.protocols import SegmenterLike
    from hybridgl.spec import ModelSpec
    from hybridgl.state import ImageState

__all__ = [
    "Task",
    "UnitWorker",
    "WorkUnit",
    "encode_and_predict",
    "encode_state",
    "predict_on_state",
]


@dataclass
class WorkUnit:
    """One image and its rows.

    ``key`` is unique within a job (the image and, where it changes the encoding, the
    proposals); ``rows`` are the row payloads in the order their records are written;
    ``data`` holds what the task needs for the image (path, proposals, annotations).
    """

    key: str
    rows: list[dict[str, Any]]
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows, "data": self.data}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WorkUnit:
        return cls(key=obj["key"], rows=list(obj["rows"]), data=dict(obj.get("data") or {}))


class Task(Protocol):
    """What a job does with one unit on a worker (picklable; no open files)."""

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        """One record per row of ``unit``; per-row failures become error records."""
        ...

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        """Error records for every row of a unit whose processing raised ``error``."""
        ...


def build_from_spec(spec: ModelSpec) -> Any:
    """The segmenter a worker builds: ``Segmenter.from_spec(spec)``."""
    from hybridgl.segmenter import Segmenter

    return Segmenter.from_spec(spec)


class UnitWorker:
    """Holds one segmenter (built on first use) and runs a task on units."""

    def __init__(self, task: Task, factory: Callable[[], Any]) -> None:
        self.task = task
        self._factory = factory
        self._segmenter: Any = None
        self._built: dict[str, Any] | None = None
        self.units = 0

    @property
    def segmenter(self) -> Any:
        """The worker's segmenter; built on first access, so bad input never loads models."""
        if self._segmenter is None:
            self._segmenter = self._factory()
        return self._segmenter

    def ensure_segmenter(self) -> None:
        _ = self.segmenter

    def built(self) -> dict[str, Any] | None:
        """What this worker's segmenter runs with (:func:`hybridgl.spec.built_facts`), or
        None before it is built; engines collect it so a run can show what each worker built.

        Read once, after the build: the Ray engine asks after every unit.
        """
        if self._segmenter is None:
            return None
        if self._built is None:
            from hybridgl.spec import built_facts

            self._built = built_facts(self._segmenter)
        return self._built

    def process(self, unit: WorkUnit) -> list[dict[str, Any]]:
        """Records for every row of a unit; an unexpected error fails the unit's rows only.

        Missing weights (:class:`~hybridgl.errors.WeightsError`) and system errors
        (``OSError`` other than a missing or unreadable input) end the job instead.
        """
        from hybridgl.errors import WeightsError

        self.units += 1
        try:
            records = self.task.run(self, unit)
        except (WeightsError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one bad image never stops the job
            records = self.task.failed(unit, e)
        if len(records) != len(unit.rows):  # pragma: no cover - a task bug
            raise RuntimeError(
                f"task returned {len(records)} records for {len(unit.rows)} rows of {unit.key}"
            )
        return records


def encode_state(
    segmenter: SegmenterLike,
    image: Any,
    proposals: Any = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageState:
    """Encode an image into an ``ImageState`` without touching the current image.

    The explicit-state path (``encode_image``) keeps workers and threads independent.
    ``max_pixels`` is the run's limit (the CLI's ``--max-pixels``), the one the image was
    loaded under: the segmenter checks the size again with it.
    """
    return segmenter.encode_image(image, proposals=proposals, max_pixels=max_pixels)


def predict_on_state(
    segmenter: SegmenterLike,
    state: ImageState,
    expressions: list[str],
    top_k: int,
    guidance: bool,
    options: dict[str, Any] | None = None,
) -> list[Any]:
    """Answer every expression on an explicit state (``predict_many(..., state=)``).

    ``options``: further keyword arguments (``targets``, ``thresholds``:
    :func:`hybridgl.targets.target_kwargs`).

    A failing ``predict_many`` is retried one expression at a time so that the expression
    at fault gets the error (returned in its place) and the others their predictions.
    """
    if not expressions:
        return []
    try:
        return list(
            segmenter.predict_many(
                expressions, top_k=top_k, guidance=guidance, state=state, **(options or {})
            )
        )
    except Exception:  # noqa: BLE001 - find the expression at fault
        pass
    preds: list[Any] = []
    for text in expressions:
        try:
            preds.append(
                segmenter.predict(
                    text, top_k=top_k, guidance=guidance, state=state, **(options or {})
                )
            )
        except Exception as e:  # noqa: BLE001
            preds.append(e)
    return preds


def encode_and_predict(
    segmenter: SegmenterLike,
    image: Any,
    proposals: Any,
    expressions: list[str],
    top_k: int,
    guidance: bool,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[ImageState, list[Any]]:
    """:func:`encode_state` then :func:`predict_on_state`: ``(state, predictions)``."""
    state = encode_state(segmenter, image, proposals, max_pixels)
    return state, predict_on_state(segmenter, state, expressions, top_k, guidance)
