"""One entry point for every dataset of :data:`hybridgl.eval.refer.DATASETS` by name.

RefCOCO, RefCOCO+ and RefCOCOg are in the REFER layout (:func:`~hybridgl.eval.refer.
load_refer`); gRefCOCO (:func:`~hybridgl.eval.grefcoco.load_grefcoco`,
``<root>/grefcoco/``) and PhraseCut (:func:`~hybridgl.eval.phrasecut.load_phrasecut`,
``<root>/phrasecut/``) in their own published layouts.
"""

from __future__ import annotations

from pathlib import Path

from hybridgl.eval.grefcoco import load_grefcoco
from hybridgl.eval.phrasecut import load_phrasecut
from hybridgl.eval.refer import DataError, EvalData, check_dataset_split, load_refer

__all__ = ["load_dataset"]


def load_dataset(data_root: str | Path, dataset: str, split: str) -> EvalData:
    """Read one split of a named dataset under ``data_root``.

    Raises:
        DataError: unknown dataset or split, missing or unreadable files.
    """
    check_dataset_split(dataset, split)
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    if dataset == "grefcoco":
        return load_grefcoco(root, split)
    if dataset == "phrasecut":
        return load_phrasecut(root / "phrasecut", split)
    return load_refer(root, dataset, split)
