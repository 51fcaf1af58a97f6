"""Zero, one or many targets on the HTTP API (docs/TARGETS.md, docs/SERVER.md).

The request's ``targets`` and ``thresholds`` parameters become ``predict_many`` keywords
(:func:`hybridgl.targets.target_kwargs`); a bad value is a 422 ``invalid_parameter``
naming it. :func:`predict_expressions` is the service's one call of the segmenter's
explicit-state API.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from hybridgl.server.errors import ApiError

#: Longest ``thresholds`` parameter accepted (a handful of numbers).
MAX_THRESHOLDS_CHARS = 4096


def target_options(
    targets: str | None, thresholds: str | None, default: str | None = None
) -> dict[str, Any]:
    """``predict_many`` keywords of a request: empty for the default (``"one"``, no
    thresholds), so the answer is the method's, as before the option existed.

    Args:
        targets: ``one``, ``many``, ``auto`` or None (``one``).
        thresholds: a JSON object of :class:`~hybridgl.targets.TargetRules` fields (the
            ``rules`` of a ``hybridgl calibrate`` file, or that whole file), or None.
        default: the server's thresholds file (``hybridgl serve --thresholds``), used
            when the request sends none; None: the rules' defaults.

    Raises:
        ApiError: 422 ``invalid_parameter`` naming the parameter and the problem.
    """
    from hybridgl.targets import TARGET_MODES, TargetRules, ThresholdsError, target_kwargs

    mode = "one" if targets is None or targets == "" else targets
    if mode not in TARGET_MODES:
        raise ApiError(
            422, "invalid_parameter", f"targets must be one of {list(TARGET_MODES)}, got {mode!r}"
        )
    rules = None
    if thresholds not in (None, ""):
        assert thresholds is not None
        if len(thresholds) > MAX_THRESHOLDS_CHARS:
            raise ApiError(
                422, "invalid_parameter", f"thresholds is longer than {MAX_THRESHOLDS_CHARS} chars"
            )
        try:
            data = json.loads(thresholds)
        except ValueError as e:
            raise ApiError(422, "invalid_parameter", f"thresholds is not JSON: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("rules"), dict):
            data = data["rules"]
        try:
            rules = TargetRules.from_dict(data, "thresholds")
        except ThresholdsError as e:
            raise ApiError(422, "invalid_parameter", str(e)) from None
    elif default and mode != "one":
        rules = _server_rules(default)
    return target_kwargs(mode, rules)


@functools.lru_cache(maxsize=4)
def _server_rules(path: str) -> Any:
    """The server's thresholds file, read once (``hybridgl serve`` checked it at start)."""
    from hybridgl.targets import TargetRules

    return TargetRules.load(path)


def predict_expressions(
    seg: Any,
    expressions: list[str],
    top_k: int,
    guidance: bool,
    state: Any,
    options: dict[str, Any] | None = None,
) -> list[Any]:
    """Every expression on the image's state (``predict_many(..., state=)``); a bad
    expression is a 422 ``invalid_expression``."""
    from hybridgl.errors import ExpressionError

    try:
        return seg.predict_many(
            expressions, top_k=top_k, guidance=guidance, state=state, **(options or {})
        )
    except ExpressionError as e:
        raise ApiError(422, "invalid_expression", str(e)) from None
