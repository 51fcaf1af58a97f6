"""The run file of a resumable job: what a folder's results were made with.

``DIR/run.json`` holds the job's settings, the :class:`~hybridgl.spec.ModelSpec` and its
``model_info``. A rerun into the same folder resumes only when its settings and model
options are the same; otherwise it is refused with one line naming each option that
differs (device, threads and the weights folder may change: they change how the models
run, not what they compute). ``batch`` and ``evaluate`` both use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridgl.errors import InputError
from hybridgl.spec import ModelSpec

__all__ = ["RUN_FILE", "RunConflictError", "check_run_file"]

RUN_FILE = "run.json"


class RunConflictError(InputError):
    """The output folder holds results of a run with other settings (CLI exit code 3)."""


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def _model_differences(
    old: dict[str, Any], spec: ModelSpec | None, model: dict[str, Any]
) -> list[str]:
    """The model options in which this run differs from the run file ``old``."""
    if spec is not None and isinstance(old.get("spec"), dict):
        try:
            recorded = ModelSpec.from_dict(old["spec"])
        except (TypeError, ValueError) as e:
            return [f"spec: unreadable ({e})"]
        return recorded.differences(spec)
    before = old.get("model")
    if isinstance(before, dict):  # no spec on one side: compare the model_info keys
        keys = sorted(set(before) | set(model)) if "spec" in old and spec is None else before
        return [
            f"{k}: {before.get(k)!r} -> {model.get(k)!r}"
            for k in sorted(keys)
            if k not in ("device", "options", "checkpoints", "seed")
            and not _same(before.get(k), model.get(k))
        ]
    return []


def check_run_file(
    out_dir: Path,
    settings: dict[str, Any],
    spec: ModelSpec | None,
    model_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/run.json`` for a new run, or check a resumed run against it.

    Args:
        out_dir: the run's folder (exists).
        settings: the job's own settings that must not change on resume (JSON-ready).
        spec: the model spec of this run (None for a segmenter built by hand: then
            ``model_info`` is what is recorded and compared).
        model_info: the model description to record (default: ``spec.model_info()``).

    Returns:
        The run file's content (the old one when resuming).

    Raises:
        RunConflictError: the folder holds a run with other settings or model options; the
            message names each (``option: there -> now``).
    """
    from hybridgl.fileio import atomic_write_text

    path = out_dir / RUN_FILE
    model = dict(model_info) if model_info is not None else (spec.model_info() if spec else {})
    model.pop("device", None)
    doc: dict[str, Any] = {**settings, "model": model}
    if spec is not None:
        doc["spec"] = spec.to_dict()
    if not path.exists():
        atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
        return doc
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise RunConflictError(
            f"{path} is unreadable ({e}); delete it or use another --out"
        ) from None
    diffs = [
        f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
        for k in settings
        if not _same(old.get(k), settings.get(k))
    ]
    diffs += _model_differences(old, spec, model)
    if diffs:
        raise RunConflictError(
            f"{out_dir} holds a run with other settings ({'; '.join(diffs)}); resume with the "
            "same options, use another --out, or delete that folder"
        )
    return old
