"""The calibration plot (``calibration.png``): each swept threshold against the GRES
metrics, and the no-target trade-off (N-acc against T-acc) of the floor. Needs matplotlib
(``pip install "hybridgl[plot]"``), imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridgl.errors import MissingExtraError
from hybridgl.targets import TargetRules

SERIES = (
    ("gIoU", "tab:blue"),
    ("cIoU", "tab:purple"),
    ("N-acc", "tab:red"),
    ("T-acc", "tab:green"),
)


def write_plot(tables: dict[str, list[dict[str, Any]]], chosen: TargetRules, path: Path) -> Path:
    """Draw one panel per threshold plus the floor's N-acc / T-acc curve; returns ``path``.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("the calibration plot", "plot", detail=str(e)) from None
    from hybridgl.fileio import atomic_write_bytes

    names = list(tables)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.6))
    for ax, name in zip(axes, names, strict=False):
        rows = tables[name]
        xs = [r["value"] for r in rows]
        for key, colour in SERIES:
            ys = [r.get(key) for r in rows]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", color=colour, label=key)
        ax.axvline(getattr(chosen, name), color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(name)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    floor = tables.get("floor") or []
    pts = [
        (r["T-acc"], r["N-acc"])
        for r in floor
        if r.get("T-acc") is not None and r.get("N-acc") is not None
    ]
    if pts:
        ax.plot(*zip(*pts, strict=True), marker=".", color="tab:red")
        fitted = [r for r in floor if r["value"] == chosen.floor and r.get("N-acc") is not None]
        if fitted:
            ax.plot([fitted[0]["T-acc"]], [fitted[0]["N-acc"]], "ko")
    ax.set_xlabel("T-acc (%)")
    ax.set_ylabel("N-acc (%)")
    ax.set_title("no-target trade-off (floor)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
