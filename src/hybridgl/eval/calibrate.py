"""``hybridgl calibrate``: fit the target thresholds on a labelled split from one pass.

1. One evaluation pass (:func:`hybridgl.eval.runner.run_evaluation`, local or Ray, resumable)
   with the no-target tests open (:func:`open_rules`): every record carries the
   :class:`~hybridgl.eval.sweep.Sample` that replays the rules offline.
2. Each threshold of :data:`~hybridgl.eval.sweep.SWEPT` is swept over a grid and fitted
   (:func:`~hybridgl.eval.sweep.fit`) on the GRES metrics (gIoU, cIoU, N-acc, T-acc)
   computed from the samples: no model runs again.
3. ``thresholds.json`` (what ``--thresholds FILE`` / ``thresholds=`` load), the tables
   (``calibration.json``, ``calibration.md``) and a plot (``calibration.png``).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from hybridgl.eval.sweep import OBJECTIVES, SWEPT, Sample, fit, metrics, objective_value
from hybridgl.targets import TargetRules

__all__ = ["THRESHOLDS", "calibrate", "open_rules", "read_samples", "table_markdown"]

THRESHOLDS = "thresholds.json"
TABLES_JSON = "calibration.json"
TABLES_MD = "calibration.md"
PLOT = "calibration.png"
COLUMNS = ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7")


def open_rules(base: TargetRules) -> TargetRules:
    """The rules of the calibration pass: ``base``'s pool size and contrast prompts (they
    change what the pass computes) with both no-target tests open (no cosine is below -2,
    no cosine difference below -3), so every expression's candidate pool is computed; the
    thresholds applied after the pool (margins, overlap tests, ``max_targets``) are set to
    the defaults, so a rerun from another start point reuses the pass."""
    d = TargetRules()
    return replace(
        d, floor=-2.0, contrast_margin=-3.0, pool=base.pool, contrast_prompts=base.contrast_prompts
    )


def read_samples(predictions: Path) -> list[Sample]:
    """The samples of the successful records of a calibration pass (the last record of
    each expression counts)."""
    from hybridgl.eval.task import record_key
    from hybridgl.jobs.records import read_records

    out = []
    for rec in read_records(predictions, key=record_key).current():
        if not rec.get("error") and isinstance(rec.get("calibration"), dict):
            out.append(Sample.from_dict(rec["calibration"]))
    return out


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def table_markdown(
    tables: dict[str, list[dict[str, Any]]], chosen: TargetRules, base_metrics: dict[str, Any]
) -> str:
    """The sweep tables as markdown; the fitted value of each threshold is marked ``*``."""
    lines = ["# Target thresholds calibration", ""]
    lines.append(
        f"{base_metrics['n']} expressions ({base_metrics['n_no_target']} with no target). "
        "Each table varies one threshold, the others at their fitted values."
    )
    for name, rows in tables.items():
        lines += ["", f"## {name} (fitted: {getattr(chosen, name):.4g})", ""]
        lines.append("| value | " + " | ".join(COLUMNS) + " |")
        lines.append("|---|" + "---|" * len(COLUMNS))
        for r in rows:
            mark = " *" if r["value"] == getattr(chosen, name) else ""
            cells = " | ".join(_fmt(r.get(c)) for c in COLUMNS)
            lines.append(f"| {r['value']:.4g}{mark} | {cells} |")
    return "\n".join(lines) + "\n"


def calibrate(
    samples: list[Sample],
    base: TargetRules,
    out_dir: Path,
    *,
    objective: str = "gIoU",
    points: int = 21,
    source: dict[str, Any] | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Fit the thresholds on ``samples`` and write the outputs under ``out_dir``.

    Returns:
        ``{"rules", "metrics" (at the fitted rules), "default_metrics" (at ``base``),
        "objective", "tables", "files"}``.

    Raises:
        ValueError: no sample, or an unknown objective.
    """
    from hybridgl.fileio import atomic_write_json, atomic_write_text

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if not samples:
        raise ValueError("no expression to calibrate on (every one failed or none selected)")
    rules, tables = fit(samples, base, objective, SWEPT, points=points)
    chosen = metrics(samples, rules)
    at_base = metrics(samples, base)
    doc = {
        "rules": rules.to_dict(),
        "calibration": {
            "objective": objective,
            "value": _finite_or_none(objective_value(chosen, objective)),
            "metrics": chosen,
            "default_metrics": at_base,
            "expressions": len(samples),
            **(source or {}),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"thresholds": str(out_dir / THRESHOLDS)}
    atomic_write_json(out_dir / THRESHOLDS, doc)
    atomic_write_json(out_dir / TABLES_JSON, {"objective": objective, "tables": tables})
    atomic_write_text(out_dir / TABLES_MD, table_markdown(tables, rules, chosen))
    files["tables"] = str(out_dir / TABLES_MD)
    if plot:
        from hybridgl.eval.calibrate_plot import write_plot

        write_plot(tables, rules, out_dir / PLOT)
        files["plot"] = str(out_dir / PLOT)
    return {
        "rules": rules,
        "metrics": chosen,
        "default_metrics": at_base,
        "objective": objective,
        "tables": tables,
        "files": files,
    }


def summary_text(result: dict[str, Any]) -> str:
    """The lines ``hybridgl calibrate`` prints: fitted values, metrics before and after."""
    rules, m, d = result["rules"], result["metrics"], result["default_metrics"]
    lines = [f"objective: {result['objective']}"]
    lines.append("| | " + " | ".join(COLUMNS) + " |")
    lines.append("|---|" + "---|" * len(COLUMNS))
    for label, row in (("defaults", d), ("fitted", m)):
        lines.append(f"| {label} | " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |")
    lines.append("fitted: " + ", ".join(f"{n}={getattr(rules, n):.4g}" for n in SWEPT))
    for name, path in result["files"].items():
        lines.append(f"{name}: {path}")
    return "\n".join(lines) + "\n"


def load_tables(path: Path) -> dict[str, Any]:
    """``calibration.json`` as written (for tests and reports)."""
    return json.loads(path.read_text(encoding="utf-8"))
