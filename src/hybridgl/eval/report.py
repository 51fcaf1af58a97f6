"""Reports of an evaluation: metrics and counts per split, Markdown tables, published figures.

:func:`build_report` (one split) and :func:`build_suite_report` (several, the paper's table)
turn the records of :mod:`hybridgl.eval.task` into ``report.json``; :func:`report_markdown`
and :func:`suite_markdown` into ``report.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from hybridgl.eval.metrics import THRESHOLDS, gres_from_records, metrics_table, summarize_records
from hybridgl.eval.refer import EvalData, Expression

# --------------------------------------------------------------------------- report


def build_report(
    data: EvalData,
    selected: Sequence[Expression],
    records: Iterable[dict[str, Any]],
    settings: dict[str, Any],
    selection: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics and counts over the selected expressions' records."""
    by_id = {str(r["sent_id"]): r for r in records}
    recs = [by_id[str(e.sent_id)] for e in selected if str(e.sent_id) in by_id]
    failed = [r for r in recs if r.get("error")]
    kinds = Counter(r.get("error_kind") or "other" for r in failed)
    count_warning = None
    limited = selection.get("limit") is not None or selection.get("sample") is not None
    if data.expected_count is not None and not limited:
        n = len(data.expressions)
        if n != data.expected_count:
            count_warning = (
                f"{data.name} {data.split} has {n} expressions; the published split has "
                f"{data.expected_count}"
            )
    done = [r for r in recs if not r.get("error")]
    report: dict[str, Any] = {
        **settings,
        "selection": dict(selection),
        "counts": {
            "in_split": len(data.expressions),
            "selected": len(selected),
            "evaluated": len(recs),
            "done": len(done),
            "failed": len(failed),
            "pending": len(selected) - len(recs),
            "images": len({str(e.image_id) for e in selected}),
            "data_problems": len(data.problems),
        },
        "expected_count": data.expected_count,
        "count_warning": count_warning,
        "metrics": summarize_records(recs, THRESHOLDS),
        "errors_by_kind": dict(sorted(kinds.items())),
        "errors": [
            {"sent_id": r["sent_id"], "error_kind": r.get("error_kind"), "error": r["error"]}
            for r in failed[:20]
        ],
        "data_problems": list(data.problems[:50]),
        "mean_time_s": (
            sum(float(r.get("time_s") or 0.0) for r in done) / len(done) if done else None
        ),
        "sources": dict(data.sources),
    }
    if data.format == "grefcoco" or any(isinstance(e.ann_id, tuple) for e in data.expressions):
        report["gres"] = gres_from_records(recs)
        report["published_gres"] = PUBLISHED_GRES.get(data.split, {})
    if extra:
        report.update(extra)
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (percentages; definitions in docs/EVALUATION.md)."""
    c = report["counts"]
    model = report.get("model") or {}
    lines = [
        f"# Evaluation: {report['dataset']} {report['split']}",
        "",
        f"- data: {report['format']} ({', '.join(f'{k}: {v}' for k, v in report['sources'].items())})",
        f"- proposals: {report['proposals']}; top_k: {report['top_k']}; "
        f"guidance: {report['guidance']}",
        "- model: " + (", ".join(f"{k}={v}" for k, v in model.items()) or "-"),
        f"- expressions: {c['selected']} selected of {c['in_split']} in the split; "
        f"{c['done']} done, {c['failed']} failed, {c['pending']} pending; "
        f"{c['images']} images",
        "",
        metrics_table(report["metrics"]),
        "",
        "mIoU, oIoU and P@t in percent over the done expressions; IoU = 0 when the union "
        "is empty; P@t counts IoU >= t.",
    ]
    if report.get("gres") is not None:
        lines += ["", *gres_markdown(report)]
    if report.get("count_warning"):
        lines += ["", f"**Warning:** {report['count_warning']}."]
    if report["errors_by_kind"]:
        lines += ["", "## Failed expressions", ""]
        lines += [f"- {k}: {n}" for k, n in report["errors_by_kind"].items()]
        lines += [""] + [f"  - sent_id {e['sent_id']}: {e['error']}" for e in report["errors"]]
    if report["data_problems"]:
        lines += ["", "## Data problems", ""] + [f"- {p}" for p in report["data_problems"]]
    return "\n".join(lines) + "\n"


#: Published figures to compare with (METHOD.md "Evaluation protocol"): CLIP ViT-B/16,
#: SAM ViT-H. Only RefCOCOg val is published there; the other splits have no figure in
#: this repository's documents.
PUBLISHED: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("refcocog", "val"): {
        "HybridGL (paper)": {"mIoU": 51.3},
        "released code, reproduced, pure": {"mIoU": 46.66, "oIoU": 37.14},
        "released code, reproduced, guided": {"mIoU": 46.04, "oIoU": 35.48},
    },
}

#: Splits of the paper's table, in its column order.
PAPER_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco", "val"),
    ("refcoco", "testA"),
    ("refcoco", "testB"),
    ("refcoco+", "val"),
    ("refcoco+", "testA"),
    ("refcoco+", "testB"),
    ("refcocog", "val"),
    ("refcocog", "test"),
)


def build_suite_report(
    parts: Sequence[tuple[EvalData, Sequence[Expression]]],
    records: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    selection: dict[str, Any],
    this_run: dict[str, Any],
    files: dict[str, Any],
) -> dict[str, Any]:
    """One report per split plus the paper-style table of a multi-split run."""
    splits: dict[str, Any] = {}
    for d, selected in parts:
        mine = [r for r in records if r.get("dataset") == d.name and r.get("split") == d.split]
        rep = build_report(
            d, selected, mine, {**settings, "dataset": d.name, "split": d.split}, selection
        )
        splits[f"{d.name}/{d.split}"] = rep
    images = len({str(d.image_path(e.image_id)) for d, selected in parts for e in selected})
    comparison = []
    for name, rep in splits.items():
        ds, sp = name.split("/", 1)
        guided = rep["metrics"].get("guided") or {}
        pure = rep["metrics"].get("pure") or {}
        for source, figs in PUBLISHED.get((ds, sp), {}).items():
            ours = pure if source.endswith("pure") else guided
            for metric, value in figs.items():
                value_ours = ours.get(metric)
                comparison.append(
                    {
                        "split": name,
                        "published": source,
                        "metric": metric,
                        "published_value": value,
                        "ours": value_ours,
                        "difference": (value_ours - value)
                        if isinstance(value_ours, (int, float))
                        else None,
                    }
                )
    return {
        **settings,
        "selection": dict(selection),
        "suite": True,
        "splits": splits,
        "counts": {
            "selected": sum(r["counts"]["selected"] for r in splits.values()),
            "done": sum(r["counts"]["done"] for r in splits.values()),
            "failed": sum(r["counts"]["failed"] for r in splits.values()),
            "pending": sum(r["counts"]["pending"] for r in splits.values()),
            "images": images,
            "expressions_per_image": None,
        },
        "data_problems": [p for r in splits.values() for p in r["data_problems"]],
        "comparison": comparison,
        "this_run": this_run,
        "files": files,
    }


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def suite_markdown(report: dict[str, Any]) -> str:
    """The paper's table layout: one column per split, mIoU / oIoU rows, published beside."""
    splits = report["splits"]
    names = [f"{d}/{s}" for d, s in PAPER_SPLITS if f"{d}/{s}" in splits]
    names += [n for n in splits if n not in names]
    c = report["counts"]
    tr = report["this_run"]
    lines = [
        f"# Evaluation suite: {len(names)} splits",
        "",
        f"- proposals: {report['proposals']}; top_k: {report['top_k']}; "
        f"guidance: {report['guidance']}",
        "- model: "
        + (", ".join(f"{k}={v}" for k, v in (report.get("model") or {}).items()) or "-"),
        f"- expressions: {c['selected']} selected; {c['done']} done, {c['failed']} failed, "
        f"{c['pending']} pending; {c['images']} distinct images",
        f"- this run: {tr['images_encoded']} images encoded for {tr['expressions']} expressions "
        f"({tr['engine']} engine), {tr['wall_s']:.1f} s",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind, label in (("pure", "pure (CLIP only)"), ("guided", "guided (HybridGL)"),
                        ("upper", "upper bound")):  # fmt: skip
        for metric in ("mIoU", "oIoU"):
            cells = [_fmt((splits[n]["metrics"].get(kind) or {}).get(metric)) for n in names]
            lines.append(f"| {label} {metric} | " + " | ".join(cells) + " |")
    sources = sorted({src for figs in PUBLISHED.values() for src in figs})
    for src in sources:
        for metric in ("mIoU", "oIoU"):
            cells = []
            for n in names:
                ds, sp = n.split("/", 1)
                cells.append(_fmt(PUBLISHED.get((ds, sp), {}).get(src, {}).get(metric)))
            if any(cell != "-" for cell in cells):
                lines.append(f"| {src} {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Published figures: METHOD.md (CLIP ViT-B/16, SAM ViT-H); only RefCOCOg val has one "
        "there, the other splits have no published figure in this repository (`-`).",
    ]
    if report["comparison"]:
        lines += ["", "| split | published | metric | published | ours | difference |",
                  "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for row in report["comparison"]:
            lines.append(
                f"| {row['split']} | {row['published']} | {row['metric']} | "
                f"{_fmt(row['published_value'])} | {_fmt(row['ours'])} | {_fmt(row['difference'])} |"
            )
    for n in names:
        rep = splits[n]
        if rep.get("count_warning"):
            lines += ["", f"**Warning:** {rep['count_warning']}."]
    if report["data_problems"]:
        lines += ["", "## Data problems", ""] + [f"- {p}" for p in report["data_problems"][:50]]
    return "\n".join(lines) + "\n"


#: Published gRefCOCO figures, all of TRAINED methods (ours is training-free).
#: ReLA val: checked. The GRES authors' code README, "Models" table
#: (github.com/henghuiding/ReLA: Swin-B 62.42 cIoU / 63.60 gIoU, Swin-T 52.26 / 54.44,
#: ResNet-50 39.53 / 38.62); issue henghuiding/ReLA#10 quotes 63.60 gIoU / 62.42 cIoU as the
#: CVPR paper's val figures, and the maintainer answers that the released weights score
#: slightly higher than the paper (a user measured 66.34 gIoU / 63.10 cIoU with them).
#: ReLA testA / testB: UNCHECKED. Recalled from the GRES paper's table (Liu, Ding and Jiang,
#: CVPR 2023); no source stored here shows them (searched the paper's pages, the ReLA and
#: gRefCOCO READMEs and issues), so their labels say "unchecked".
PUBLISHED_GRES: dict[str, dict[str, dict[str, float]]] = {
    "val": {
        "ReLA Swin-B (trained; GRES paper val = ReLA README)": {"cIoU": 62.42, "gIoU": 63.60},
        "ReLA Swin-T (trained; ReLA README)": {"cIoU": 52.26, "gIoU": 54.44},
        "ReLA ResNet-50 (trained; ReLA README)": {"cIoU": 39.53, "gIoU": 38.62},
    },
    "testA": {"ReLA Swin-B (trained; GRES paper, unchecked)": {"cIoU": 69.26, "gIoU": 70.03}},
    "testB": {"ReLA Swin-B (trained; GRES paper, unchecked)": {"cIoU": 59.88, "gIoU": 61.02}},
}


def gres_markdown(report: dict[str, Any]) -> list[str]:
    """The GRES metrics of a gRefCOCO report with the published (trained) figures beside."""
    g = report["gres"]
    cols = ["gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    lines = [
        "## gRefCOCO metrics (GRES definitions)",
        "",
        f"targets: {report.get('targets') or 'one'}; {g['n']} expressions, {g['n_target']} with "
        f"targets, {g['n_no_target']} without.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
        "| ours (training-free) | " + " | ".join(_fmt(g.get(c)) for c in cols) + " |",
    ]
    for name, figs in (report.get("published_gres") or {}).items():
        lines.append(f"| {name} | " + " | ".join(_fmt(figs.get(c)) for c in cols) + " |")
    lines += [
        "",
        "gIoU: mean per-expression IoU (a no-target expression counts 1 when answered with no "
        "target, else 0); cIoU: cumulative I / U (a no-target expression answered with a mask "
        "adds its area to U); N-acc / T-acc: no-target / target expressions answered as such; "
        "Pr@t over target expressions. Published figures are of trained methods.",
    ]
    return lines
