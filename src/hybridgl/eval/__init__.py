"""Evaluation on RefCOCO, RefCOCO+, RefCOCOg (REFER layout) and custom COCO-style data.

Not imported by ``import hybridgl``: import it explicitly::

    from hybridgl.eval import load_refer, run_evaluation
    data = load_refer("data", "refcocog", "val")
    report = run_evaluation(data, Segmenter.from_pretrained(), "runs/refcocog-val")

Metric definitions: :mod:`hybridgl.eval.metrics`; data layout: :mod:`hybridgl.eval.refer`.
"""

from hybridgl.errors import DataError
from hybridgl.eval.annotations import annotation_to_mask
from hybridgl.eval.datasets import load_dataset
from hybridgl.eval.generic import load_generic
from hybridgl.eval.metrics import (
    THRESHOLDS,
    intersection_union,
    iou_from_counts,
    summarize_counts,
    summarize_records,
)
from hybridgl.eval.refer import (
    DATASETS,
    EXPECTED_COUNTS,
    EvalData,
    Expression,
    load_refer,
)
from hybridgl.eval.report import build_report
from hybridgl.eval.runner import run_evaluation
from hybridgl.eval.task import select_expressions

__all__ = [
    "DATASETS",
    "EXPECTED_COUNTS",
    "THRESHOLDS",
    "DataError",
    "EvalData",
    "Expression",
    "annotation_to_mask",
    "build_report",
    "intersection_union",
    "iou_from_counts",
    "load_dataset",
    "load_generic",
    "load_refer",
    "run_evaluation",
    "select_expressions",
    "summarize_counts",
    "summarize_records",
]
