"""Display windows: stored values (HU for CT) -> 8-bit gray, the way radiologists look.

A window is a level (centre) and a width, in the volume's values after the modality
rescale. It maps values with the DICOM standard's linear VOI function (PS3.3 C.11.2.1.2.1,
"LINEAR"), so a window taken from a DICOM file shows the pixels as a conforming viewer
does::

    x <= c - 0.5 - (w - 1) / 2   -> 0
    x >  c - 0.5 + (w - 1) / 2   -> 255
    otherwise                    -> ((x - (c - 0.5)) / (w - 1) + 0.5) * 255

rounded to the nearest integer. Every value is windowed from its full precision (16-bit
and float data are never reduced to a high byte first).

Named CT presets (level / width in HU), from Radiopaedia, "Windowing (CT)"
(https://radiopaedia.org/articles/windowing-ct): see :data:`CT_PRESETS`. MR and other
modalities without calibrated units get a percentile window computed over the volume.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridgl.errors import ImageError

__all__ = [
    "CT_PRESETS",
    "Window",
    "apply_window",
    "parse_window",
    "percentile_window",
    "resolve_window",
]

#: Named CT windows: name -> (level, width) in HU (Radiopaedia, "Windowing (CT)").
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (50.0, 400.0),  # abdomen, soft tissues: W 400, L 50
    "soft_tissue": (50.0, 400.0),  # the same soft-tissue window
    "mediastinum": (50.0, 350.0),  # chest, mediastinum: W 350, L 50
    "lung": (-600.0, 1500.0),  # chest, lungs: W 1500, L -600
    "liver": (30.0, 150.0),  # abdomen, liver: W 150, L 30
    "bone": (400.0, 1800.0),  # spine/skeleton, bone: W 1800, L 400
    "brain": (40.0, 80.0),  # head, brain: W 80, L 40
    "subdural": (75.0, 215.0),  # head, subdural: W 130-300, L 50-100 (mid values)
    "stroke": (40.0, 40.0),  # head, stroke: W 40, L 40
}

#: Default percentiles of the automatic window for data without a calibrated scale (MR).
DEFAULT_PERCENTILES = (0.5, 99.5)

#: Voxels sampled (evenly strided) to compute a percentile window over a large volume.
PERCENTILE_SAMPLES = 1 << 22


@dataclass(frozen=True)
class Window:
    """A display window: ``level`` (centre) and ``width`` in the data's values.

    Attributes:
        level: window centre.
        width: window width (>= 1).
        source: where it came from: ``preset:NAME``, ``explicit``, ``dicom`` (the file's
            own Window Center/Width), ``percentile:LO-HI``.
        invert: show high values dark (MONOCHROME1 data).
    """

    level: float
    width: float
    source: str = "explicit"
    invert: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and math.isfinite(self.width)):
            raise ImageError(f"window level/width must be finite, got {self.level}/{self.width}")
        if self.width < 1:
            raise ImageError(f"window width must be at least 1, got {self.width:g}")

    @property
    def low(self) -> float:
        """Values at or below this show black (white when inverted)."""
        return self.level - 0.5 - (self.width - 1) / 2

    @property
    def high(self) -> float:
        """Values above this show white (black when inverted)."""
        return self.level - 0.5 + (self.width - 1) / 2

    def to_dict(self) -> dict[str, Any]:
        """The window as recorded in every output (JSON summary, overlays' metadata)."""
        return {
            "level": float(self.level),
            "width": float(self.width),
            "source": self.source,
            "invert": bool(self.invert),
            "function": "DICOM LINEAR (PS3.3 C.11.2.1.2.1)",
        }


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window ``values`` (any shape, any real dtype) to uint8 of the same shape."""
    x = np.asarray(values, dtype=np.float64)
    c, w = float(window.level), float(window.width)
    if w == 1:  # the linear function's degenerate case: a threshold
        y = np.where(x <= c - 0.5, 0.0, 255.0)
    else:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
        y = np.clip(y, 0.0, 255.0)
        y[x <= window.low] = 0.0
        y[x > window.high] = 255.0
    out = np.rint(y).astype(np.uint8)
    if window.invert:
        out = np.uint8(255) - out
    return out


def percentile_window(
    values: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    invert: bool = False,
) -> Window:
    """The window from the ``low``-th to the ``high``-th percentile of ``values``.

    Large volumes are sampled with an even stride (at most :data:`PERCENTILE_SAMPLES`
    values), so memory stays small and the result is deterministic.
    """
    if not 0 <= low < high <= 100:
        raise ImageError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        raise ImageError("cannot compute a percentile window of an empty volume")
    step = max(1, flat.size // PERCENTILE_SAMPLES)
    sample = np.asarray(flat[::step], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ImageError("cannot compute a percentile window: no finite value")
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    width = max(hi - lo, 1.0)
    return Window(
        level=(lo + hi) / 2, width=width, source=f"percentile:{low:g}-{high:g}", invert=invert
    )


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_EXPLICIT = re.compile(rf"^\s*({_NUMBER})\s*[,/:]\s*({_NUMBER})\s*$")
_PERCENT = re.compile(rf"^\s*p(?:ercentile)?[:=]?\s*({_NUMBER})\s*[-,]\s*({_NUMBER})\s*$", re.I)

WINDOW_FORMS = (
    "a CT preset ("
    + ", ".join(CT_PRESETS)
    + "), LEVEL,WIDTH (e.g. 40,400), pLO-HI (percentiles, e.g. p1-99), "
    "dicom (the file's own window) or auto (the file's own window, else p0.5-99.5)"
)
WINDOW_HELP = "display window: " + WINDOW_FORMS


def parse_window(text: str) -> str | tuple[float, float] | tuple[str, float, float]:
    """Check a window given as text (the CLI's ``--window``) without any data.

    Returns:
        ``"auto"``, ``"dicom"`` or a preset name; ``(level, width)`` for an explicit
        window; ``("percentile", lo, hi)`` for a percentile window.

    Raises:
        ImageError: an unknown name or a malformed value (the message lists the forms).
    """
    t = str(text).strip()
    name = t.lower().replace("-", "_").replace(" ", "_")
    if name in ("auto", "dicom") or name in CT_PRESETS:
        return name
    m = _EXPLICIT.match(t)
    if m:
        level, width = float(m.group(1)), float(m.group(2))
        Window(level, width)  # validates
        return (level, width)
    m = _PERCENT.match(t)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if not 0 <= lo < hi <= 100:
            raise ImageError(f"window {text!r}: percentiles must satisfy 0 <= LO < HI <= 100")
        return ("percentile", lo, hi)
    raise ImageError(f"unknown window {text!r}; use {WINDOW_FORMS}")


def resolve_window(
    spec: str | tuple[float, float] | Window | None,
    values: np.ndarray,
    *,
    file_window: Window | None = None,
    invert: bool = False,
) -> Window:
    """The concrete :class:`Window` for ``values``.

    Args:
        spec: None or ``"auto"`` (the file's own window when it has one, else the
            default percentile window), ``"dicom"`` (the file's own window; an error when
            it has none), a preset name, a ``"LEVEL,WIDTH"`` / ``"pLO-HI"`` string, a
            ``(level, width)`` pair, or a :class:`Window`.
        values: the data the window is for (percentile windows are computed on it).
        file_window: the window stored in the file (DICOM Window Center/Width), if any.
        invert: MONOCHROME1 data: the returned window shows high values dark.
    """
    if isinstance(spec, Window):
        return spec
    parsed: Any
    if spec is None:
        parsed = "auto"
    elif isinstance(spec, str):
        parsed = parse_window(spec)
    else:
        level, width = spec
        parsed = (float(level), float(width))
    if parsed == "auto":
        if file_window is not None:
            return Window(file_window.level, file_window.width, "dicom", invert)
        return percentile_window(values, *DEFAULT_PERCENTILES, invert=invert)
    if parsed == "dicom":
        if file_window is None:
            raise ImageError("--window dicom: the file stores no Window Center/Width")
        return Window(file_window.level, file_window.width, "dicom", invert)
    if isinstance(parsed, str):
        level, width = CT_PRESETS[parsed]
        return Window(level, width, f"preset:{parsed}", invert)
    if parsed[0] == "percentile":
        return percentile_window(values, parsed[1], parsed[2], invert=invert)
    return Window(parsed[0], parsed[1], "explicit", invert)
