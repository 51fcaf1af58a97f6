"""The model service: the segmenter, the image cache and the bounds on work and memory.

No FastAPI here: the routes call :meth:`ModelService.admit` and
:meth:`ModelService.segment`, and the tests can drive the service directly.

Bounds, in the order a request meets them:

1. **Admission** (:meth:`ModelService.admit`): at most ``max_queue`` requests hold a
   ticket at once (503 ``busy`` above, with ``Retry-After``). The route reads the upload
   into memory only after admission, so uploads held in memory are bounded by
   ``max_queue x max_upload_bytes``. A ticket is returned when the request is answered
   *and* every job it started has finished (a timed-out job still counts).
2. **Images in flight**: checking an upload's headers (:meth:`ModelService.inspect`)
   runs on the image pool too, so it is bounded like decoding. Decoding an upload and encoding it (SAM proposals, hybrid
   features, GEM tokens) run as one job on a pool of ``images_in_flight`` threads, so at
   most that many decoded images exist outside the cache; further uploads wait, still
   encoded. Requests for the same image (and proposals) wait for the first one and then
   hit the cache: each image is encoded once. Likewise, predicting and building the
   answer run as one job on a second pool of that size, so at most ``images_in_flight``
   requests hold their dense masks (expressions x H x W bytes) and per-pixel answer
   buffers (RLE, polygons, PNG) at once.
3. **The model**: every segmenter call runs on one dedicated thread, so calls never
   interleave and the event loop never waits on the model. It uses the explicit-state
   API (``encode_image`` then ``predict_many(..., state=...)``); the segmenter's current
   image is never used.
4. **Time**: everything after admission must finish within ``request_timeout_s`` (504).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hybridgl.server.cache import LRUCache
from hybridgl.server.errors import ApiError
from hybridgl.server.inputs import (
    ProposalsBuilder,
    Upload,
    decode_upload,
    inspect_upload,
    too_large,
)
from hybridgl.server.settings import ServerSettings
from hybridgl.server.targets import predict_expressions
from hybridgl.server.tickets import Gauge, Ticket

if TYPE_CHECKING:
    from hybridgl.protocols import SegmenterLike

log = logging.getLogger("hybridgl.server")


@dataclass
class Outcome:
    """What one segment request produced."""

    upload: Upload
    state: Any  # the ImageState the predictions were scored on
    predictions: list[Any]
    cache_hit: bool
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds


class ModelService:
    """Owns the segmenter, the image cache, the model thread and the request bounds.

    Args:
        segmenter: a ready segmenter (:class:`hybridgl.protocols.SegmenterLike`), or a
            zero-argument factory returning one (called by :meth:`load`).
        settings: the limits; :class:`ServerSettings` defaults when None.
    """

    def __init__(self, segmenter: Any, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        if _is_segmenter(segmenter):
            self._segmenter, self._factory = segmenter, None
        elif callable(segmenter):
            self._segmenter, self._factory = None, segmenter
        else:
            raise TypeError("segmenter must be a Segmenter or a callable returning one")
        self.load_error: str | None = None
        self.cache: LRUCache[Any] = LRUCache(
            self.settings.cache_size, max_bytes=self.settings.cache_max_bytes
        )
        self.images = Gauge()  # decoded images outside the cache (decode -> encoded)
        self.answers = Gauge()  # requests holding dense predictions (predict -> answer)
        self.inspections = Gauge()  # uploads whose headers are being checked
        self.started_at = time.time()
        self._model: concurrent.futures.ThreadPoolExecutor | None = None
        self._image_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._answer_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._flights: dict[str, tuple[asyncio.Lock, int]] = {}

    # lifecycle ------------------------------------------------------------------------
    @property
    def segmenter(self) -> SegmenterLike | None:
        return self._segmenter

    @property
    def ready(self) -> bool:
        return self._segmenter is not None

    @property
    def pending(self) -> int:
        with self._pending_lock:
            return self._pending

    def start(self) -> None:
        """Start the model thread and the image pool (idempotent)."""
        if self._model is None:
            self._model = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="hybridgl-model"
            )
        if self._image_pool is None:
            self._image_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.settings.images_in_flight, thread_name_prefix="hybridgl-image"
            )
        if self._answer_pool is None:
            self._answer_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.settings.images_in_flight, thread_name_prefix="hybridgl-answer"
            )

    def load(self) -> None:
        """Build the segmenter from the factory, if one was given (blocking)."""
        if self._segmenter is not None or self._factory is None:
            return
        try:
            self._segmenter = self._factory()
        except BaseException as e:  # noqa: BLE001 - reported by /health and every request
            self.load_error = f"{type(e).__name__}: {e}".strip()
            log.error("loading the model failed: %s", self.load_error)

    def close(self) -> None:
        for pool in (self._answer_pool, self._image_pool, self._model):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._answer_pool = self._image_pool = self._model = None

    def require_model(self) -> SegmenterLike:
        """The segmenter, or a 503 ``model_unavailable`` saying why there is none."""
        seg = self._segmenter
        if seg is not None:
            return seg
        if self.load_error:
            raise ApiError(
                503,
                "model_unavailable",
                f"the model failed to load: {self.load_error}",
                headers={"Retry-After": "60"},
            )
        raise ApiError(503, "model_unavailable", "the model is still loading; retry shortly")

    # admission ------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A place in the queue, or a 503 ``busy`` when ``max_queue`` requests hold one.

        Use it as ``with service.admit() as ticket:``; pass the ticket to :meth:`segment`.
        """
        self.require_model()
        with self._pending_lock:
            if self._pending >= self.settings.max_queue:
                raise ApiError(
                    503,
                    "busy",
                    f"{self._pending} requests are already queued (limit "
                    f"{self.settings.max_queue}); retry shortly",
                )
            self._pending += 1
        return Ticket(self._leave_queue)

    def _leave_queue(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    # the work -------------------------------------------------------------------------
    async def inspect(self, ticket: Ticket, data: bytes) -> Upload:
        """Check an upload's headers (:func:`~hybridgl.server.inputs.inspect_upload`) on
        an image thread: under the same ``images_in_flight`` bound as decoding, within
        the request deadline."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s

        def job() -> Upload:
            with self.inspections.running():
                return inspect_upload(data, self.settings)

        upload: Upload = await self._wait(self._submit(self._image_pool, job), ticket, deadline)
        return upload

    async def segment(
        self,
        ticket: Ticket,
        upload: Upload,
        expressions: list[str],
        *,
        top_k: int,
        guidance: bool,
        proposals: ProposalsBuilder | None = None,
        proposals_key: str = "",
        render: Callable[[Outcome], Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Any:
        """Segment each expression in the uploaded image.

        Args:
            ticket: from :meth:`admit`.
            upload: a checked upload (:func:`hybridgl.server.inputs.inspect_upload`).
            expressions: checked expressions.
            top_k, guidance: scoring options; ``options``: further ``predict_many``
                keywords (targets, thresholds: :mod:`hybridgl.server.targets`).
            proposals: builds caller proposals ``(N, H, W)`` bool for the decoded image's
                size; called on an image thread after decoding (so its memory is bounded
                too). None: the segmenter's own proposals (SAM).
            proposals_key: identifies those proposals in the cache key (their hash).
            render: turns the :class:`Outcome` into the answer (JSON body, PNG) on an
                answer thread; the dense masks of the predictions are dropped when it
                returns. None returns the Outcome itself.

        Returns:
            ``render(outcome)``, or the :class:`Outcome` when ``render`` is None.
        """
        seg = self.require_model()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        key = upload.sha256 if not proposals else f"{upload.sha256}+{proposals_key}"
        t0 = time.perf_counter()
        state, hit, image_ms = await self._image_state(
            seg, ticket, key, upload, proposals, deadline
        )

        def predict() -> tuple[list[Any], float]:
            start = time.perf_counter()
            preds = predict_expressions(seg, expressions, top_k, guidance, state, options)
            return list(preds), (time.perf_counter() - start) * 1000.0

        def answer() -> Any:
            # on an answer thread: at most images_in_flight requests hold dense
            # predictions (expressions x H x W masks) and build answers at once
            assert self._model is not None
            with self.answers.running():
                predictions, predict_ms = self._model.submit(predict).result()
                elapsed = (time.perf_counter() - t0) * 1000.0
                timings = {
                    "wait_ms": max(0.0, elapsed - image_ms - predict_ms),
                    "image_ms": image_ms,
                    "predict_ms": predict_ms,
                }
                outcome = Outcome(upload, state, predictions, hit, timings)
                return outcome if render is None else render(outcome)

        return await self._wait(self._submit(self._answer_pool, answer), ticket, deadline)

    async def _image_state(
        self,
        seg: SegmenterLike,
        ticket: Ticket,
        key: str,
        upload: Upload,
        proposals: ProposalsBuilder | None,
        deadline: float,
    ) -> tuple[Any, bool, float]:
        """The cached ImageState for ``key``, or a fresh one (decoded and encoded once)."""
        state = self.cache.get(key)
        if state is not None:
            return state, True, 0.0
        lock = self._enter_flight(key)
        try:
            await self._wait_for(lock.acquire(), deadline)
            try:
                state = self.cache.peek(key)  # a request for the same image got there first
                if state is not None:
                    return state, True, 0.0
                job = self._submit(self._image_pool, self._encode_job, seg, upload, proposals, key)
                state, image_ms = await self._wait(job, ticket, deadline)
                return state, False, image_ms
            finally:
                lock.release()
        finally:
            self._leave_flight(key)

    def _encode_job(
        self,
        seg: SegmenterLike,
        upload: Upload,
        proposals: ProposalsBuilder | None,
        key: str,
    ) -> tuple[Any, float]:
        """On an image thread: decode, build proposals, encode on the model thread, cache."""
        from hybridgl.errors import ImageError, ImageTooLargeError

        start = time.perf_counter()
        with self.images.running():
            image = decode_upload(upload, self.settings)
            masks = proposals(*image.shape[:2]) if proposals is not None else None

            def encode() -> Any:
                try:
                    return seg.encode_image(
                        image, proposals=masks, max_pixels=self.settings.pixel_limit
                    )  # pure: no current image
                except ImageTooLargeError as e:
                    h, w = image.shape[:2]
                    raise too_large(w, h, e.limit or self.settings.pixel_limit) from None
                except ImageError as e:
                    raise ApiError(415, "invalid_image", str(e)) from None
                except ValueError as e:  # the segmenter's checks of caller proposals
                    if masks is None:
                        raise
                    raise ApiError(422, "invalid_proposals", str(e)) from None

            assert self._model is not None
            state = self._model.submit(encode).result()
        self.cache.put(key, state)
        return state, (time.perf_counter() - start) * 1000.0

    async def run_on_model(self, ticket: Ticket, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread within the request deadline (e.g. a collection
        search, which calls the segmenter's text and scoring stages)."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        return await self._wait(self._submit(self._model, fn), ticket, deadline)

    # plumbing -------------------------------------------------------------------------
    @staticmethod
    def _submit(
        pool: concurrent.futures.ThreadPoolExecutor | None, fn: Callable[..., Any], *args: Any
    ) -> concurrent.futures.Future:
        if pool is None:
            raise ApiError(503, "model_unavailable", "the server is not running")
        return pool.submit(fn, *args)

    async def _wait(self, fut: concurrent.futures.Future, ticket: Ticket, deadline: float) -> Any:
        """Await a job within the deadline; the ticket stays held until the job ends."""
        ticket.hold(fut)
        try:
            return await self._wait_for(asyncio.wrap_future(fut), deadline)
        except ApiError:
            fut.cancel()  # drops it if it has not started; a running job finishes
            raise

    async def _wait_for(self, awaitable: Any, deadline: float) -> Any:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(awaitable, timeout=max(remaining, 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(
                504, "timeout", f"request took longer than {self.settings.request_timeout_s:g} s"
            ) from None

    def _enter_flight(self, key: str) -> asyncio.Lock:
        lock, users = self._flights.get(key, (asyncio.Lock(), 0))
        self._flights[key] = (lock, users + 1)
        return lock

    def _leave_flight(self, key: str) -> None:
        lock, users = self._flights[key]
        if users <= 1:
            del self._flights[key]
        else:
            self._flights[key] = (lock, users - 1)

    # information ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The body of ``GET /health`` (its status is 200 when ``model_loaded``)."""
        from hybridgl import __version__

        status = "ok" if self.ready else "error" if self.load_error else "loading"
        return {
            "status": status,
            "model_loaded": self.ready,
            "error": self.load_error,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "queue": {"pending": self.pending, "max": self.settings.max_queue},
            "images": {**self.images.info(), "max": self.settings.images_in_flight},
            "answers": {**self.answers.info(), "max": self.settings.images_in_flight},
            "inspections": {**self.inspections.info(), "max": self.settings.images_in_flight},
            "cache": self.cache.info(),
        }

    def model_info(self) -> dict[str, Any]:
        seg = self._segmenter
        return dict(seg.model_info) if seg is not None else {}  # JSON-ready by contract

    def stats(self) -> dict[str, int]:
        seg = self._segmenter
        counter = getattr(seg, "stats", {}) if seg is not None else {}
        for _ in range(5):  # the model thread may be incrementing it
            try:
                return {str(k): int(v) for k, v in dict(counter).items()}
            except RuntimeError:
                continue
        return {}


def _is_segmenter(obj: Any) -> bool:
    return hasattr(obj, "predict_many") and hasattr(obj, "encode_image")


def proposals_digest(data: bytes) -> str:
    """Cache-key part for caller proposals."""
    return hashlib.sha256(data).hexdigest()
