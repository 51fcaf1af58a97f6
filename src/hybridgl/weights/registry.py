"""Every checkpoint the package can load: one :class:`Checkpoint` per entry of
:data:`REGISTRY`, and the lookups by name, architecture and source."""

from __future__ import annotations

import re
from dataclasses import dataclass

_KINDS = ("sam", "clip", "text")
_HUB_URL = "https://huggingface.co"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint.

    Attributes:
        name: Registry key, e.g. ``"sam_vit_h"``.
        kind: ``"sam"``, ``"clip"`` or ``"text"`` (a CLIP's separate text tower
            configuration and tokenizer, e.g. BiomedCLIP's BiomedBERT).
        arch: Architecture the weights belong to: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"``
            for SAM (the keys of ``segment_anything.sam_model_registry``), ``"ViT-B-16"``
            for CLIP (the open_clip model name).
        url: Official download URL.
        filename: File name on disk (the last part of the URL).
        sha256: Lower-case hex SHA-256 of the whole file; the authority on integrity.
        size: Size in bytes when known. Only a hint: a file whose SHA-256 matches is
            accepted whatever its size.
        hub_repo: Hugging Face Hub repository id for models published there; the local
            copy is then a folder named ``filename`` holding ``hub_files``, and ``sha256``
            may be None (the Hub pins content by ``revision``; per-file digests are not
            published in a form this registry can record offline).
        revision: Hub revision (a commit id where known, else a branch name).
        hub_files: the files of the Hub repository the model needs.
    """

    name: str
    kind: str
    arch: str
    url: str
    filename: str
    sha256: str | None
    size: int | None = None
    hub_repo: str | None = None
    revision: str | None = None
    hub_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Checkpoint {self.name!r}: kind must be one of {_KINDS}")
        if self.hub_repo is not None:
            if not self.hub_files or not self.revision:
                raise ValueError(f"Checkpoint {self.name!r}: a Hub entry needs files and revision")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"Checkpoint {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.sha256 is None and self.hub_repo is None:
            raise ValueError(f"Checkpoint {self.name!r}: sha256 is required off the Hub")
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"Checkpoint {self.name!r}: filename must be a bare file name")
        if self.size is not None and self.size < 0:
            raise ValueError(f"Checkpoint {self.name!r}: size must be >= 0 or None")

    @property
    def is_hub(self) -> bool:
        """True for a Hub snapshot kept as a folder (``filename``) of ``hub_files``."""
        return self.hub_repo is not None


def _hub(
    name: str, kind: str, arch: str, repo: str, revision: str, files: tuple[str, ...]
) -> Checkpoint:
    folder = repo.replace("/", "--")
    return Checkpoint(
        name=name,
        kind=kind,
        arch=arch,
        url=f"{_HUB_URL}/{repo}/tree/{revision}",
        filename=folder,
        sha256=None,
        hub_repo=repo,
        revision=revision,
        hub_files=files,
    )


_HF_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything"
_CLIP_VITB16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_CLIP_VITL14_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"

REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="sam_vit_h",
            kind="sam",
            arch="vit_h",
            url=f"{_SAM_BASE}/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size=2564550879,
        ),
        Checkpoint(
            name="sam_vit_l",
            kind="sam",
            arch="vit_l",
            url=f"{_SAM_BASE}/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size=1249524607,
        ),
        Checkpoint(
            name="sam_vit_b",
            kind="sam",
            arch="vit_b",
            url=f"{_SAM_BASE}/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size=375042383,
        ),
        Checkpoint(
            name="clip_vit_b16_openai",
            kind="clip",
            arch="ViT-B-16",
            # OpenAI names the folder after the file's SHA-256.
            url=f"https://openaipublic.azureedge.net/clip/models/{_CLIP_VITB16_SHA}/ViT-B-16.pt",
            filename="ViT-B-16.pt",
            sha256=_CLIP_VITB16_SHA,
            # Best belief, not confirmed against a second source: the SHA-256 decides.
            size=351334741,
        ),
        # The same OpenAI ViT-B/16 weights as open_clip keeps them on the Hugging Face Hub
        # (`open_clip.create_model("ViT-B-16", pretrained="openai")` downloads this file);
        # loaded with strict keys into the same model (hybridgl.models.clip).
        _hub(
            "clip_vit_b16_openai_hf",
            "clip",
            "ViT-B-16",
            "timm/vit_base_patch16_clip_224.openai",
            "main",
            ("open_clip_model.safetensors",),
        ),
        # OpenAI's ViT-L/14 (a larger CLIP, --clip ViT-L-14), from OpenAI and from the Hub
        Checkpoint(
            name="clip_vit_l14_openai",
            kind="clip",
            arch="ViT-L-14",
            url=f"https://openaipublic.azureedge.net/clip/models/{_CLIP_VITL14_SHA}/ViT-L-14.pt",
            filename="ViT-L-14.pt",
            sha256=_CLIP_VITL14_SHA,
        ),
        # Not pinned to a commit: the only full commit id of this repository a search of
        # public pages found (46ce2a809729f52bd4ecbcb20e97a78d81ff0e45, "Add model", 2022)
        # holds timm's pytorch_model.bin but not open_clip_model.safetensors, added later;
        # the later commits were seen only as short ids, which a Hub revision cannot be.
        _hub(
            "clip_vit_l14_openai_hf",
            "clip",
            "ViT-L-14",
            "timm/vit_large_patch14_clip_224.openai",
            "main",
            ("open_clip_model.safetensors",),
        ),
        # BiomedCLIP (--clip BiomedCLIP, hybridgl[biomed]): open_clip's
        # hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, its config and
        # weights. Revision: the full commit id shown by the Hub's blame page of README.md in
        # this repository (huggingface.co/<repo>/blame/2584124.../README.md), found through a
        # search of public pages; that these two files are in that commit was not checked
        # from here (no Hub access): `hybridgl weights download` fails loudly if they are not.
        _hub("clip_biomedclip", "clip", "BiomedCLIP",
             "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
             "2584124ff32fcf3f2946e901aff906086e2d39bf",
             ("open_clip_config.json", "open_clip_pytorch_model.bin")),
        # BiomedCLIP's text tower configuration and WordPiece vocabulary (its weights are in
        # the BiomedCLIP checkpoint). Not pinned: no commit id of this repository was found.
        _hub("biomedbert_base_uncased_abstract", "text", "BiomedBERT",
             "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract", "main",
             ("config.json", "vocab.txt")),
        # Proposal backends through Hugging Face transformers (hybridgl[transformers]):
        # transformers-format checkpoints (config.json + model.safetensors) on the Hub.
        *(
            _hub(f"sam2.1_hiera_{s}", "sam", f"sam2.1_hiera_{s}",
                 f"facebook/sam2.1-hiera-{s.replace('_', '-')}", "main", _HF_MODEL_FILES)
            for s in ("tiny", "small", "base_plus", "large")
        ),
        _hub("slimsam_50", "sam", "slimsam_50", "nielsr/slimsam-50-uniform",
             "2a2699253149cf2eaf4097f9ff925ce41df4a2b9", _HF_MODEL_FILES),
        _hub("slimsam_77", "sam", "slimsam_77", "nielsr/slimsam-77-uniform", "main",
             _HF_MODEL_FILES),
        *(
            _hub(f"sam_hq_vit_{s[0]}", "sam", f"sam_hq_vit_{s[0]}",
                 f"syscv-community/sam-hq-vit-{s}", "main", _HF_MODEL_FILES)
            for s in ("base", "large", "huge")
        ),
        # EdgeTAM video tracker (hybridgl.video.hf_trackers; the SAM 2.1 trackers use the
        # sam2.1_hiera_* entries above: one Hub repository serves image and video models)
        _hub("edgetam", "sam", "edgetam", "yonigozlan/EdgeTAM-hf", "main",
             ("config.json", "model.safetensors")),
    )
}  # fmt: skip
"""Registry name -> :class:`Checkpoint` of every official checkpoint."""


def list_checkpoints() -> list[Checkpoint]:
    """Return every registered checkpoint, in registry order.

    Returns:
        The :class:`Checkpoint` entries of :data:`REGISTRY`.
    """
    return list(REGISTRY.values())


def get_checkpoint(name: str) -> Checkpoint:
    """Look up a checkpoint by registry name.

    Args:
        name: Registry key such as ``"sam_vit_h"`` or ``"clip_vit_b16_openai"``.

    Returns:
        The matching :class:`Checkpoint`.

    Raises:
        ValueError: If the name is not registered; the message lists the known names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"Unknown checkpoint {name!r}; known checkpoints: {known}") from None


def sam_checkpoint_name(arch: str) -> str:
    """Map a SAM architecture to its registry name.

    Args:
        arch: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"`` (``"vit-h"``, ``"default"`` (SAM's
            alias of ``vit_h``) and the registry name itself are accepted too).

    Returns:
        The registry name, e.g. ``"sam_vit_h"`` for ``"vit_h"``.

    Raises:
        ValueError: If no SAM checkpoint has this architecture.
    """
    key = str(arch).strip().lower().replace("-", "_")
    if key == "default":
        key = "vit_h"
    for k in (key, key.removeprefix("sam_")):
        for ckpt in REGISTRY.values():
            if ckpt.kind == "sam" and ckpt.arch.lower() == k:
                return ckpt.name
    known = ", ".join(c.arch for c in REGISTRY.values() if c.kind == "sam")
    raise ValueError(f"Unknown SAM architecture {arch!r}; known: {known}")


def clip_checkpoint_name(model: str) -> str:
    """Map a CLIP model name to its registry name.

    Args:
        model: open_clip model name such as ``"ViT-B-16"`` (OpenAI's spelling
            ``"ViT-B/16"`` and any letter case are accepted).

    Returns:
        The registry name, e.g. ``"clip_vit_b16_openai"`` for ``"ViT-B-16"``.

    Raises:
        ValueError: If no CLIP checkpoint has this architecture.
    """
    key = str(model).strip().lower().replace("/", "-")
    for ckpt in REGISTRY.values():
        if ckpt.kind == "clip" and ckpt.arch.lower() == key:
            return ckpt.name
    known = ", ".join(c.arch for c in REGISTRY.values() if c.kind == "clip")
    raise ValueError(f"Unknown CLIP model {model!r}; known: {known}")


CLIP_SOURCES = ("openai", "hf")


def clip_checkpoint_names(model: str) -> list[str]:
    """Registry names of every copy of a CLIP model's weights, OpenAI's own file first.

    ``ViT-B-16`` -> ``["clip_vit_b16_openai", "clip_vit_b16_openai_hf"]`` (the Hugging Face
    Hub copy that open_clip downloads); both load into the same model with strict keys.
    """
    first = clip_checkpoint_name(model)
    arch = REGISTRY[first].arch
    return [first] + [
        c.name for c in REGISTRY.values() if c.kind == "clip" and c.arch == arch and c.name != first
    ]


def clip_checkpoint_for_source(model: str, source: str) -> str:
    """The registry name of ``model``'s weights from ``source`` (``openai`` or ``hf``)."""
    if source not in CLIP_SOURCES:
        raise ValueError(f"unknown CLIP source {source!r}; use {' or '.join(CLIP_SOURCES)}")
    for name in clip_checkpoint_names(model):
        if REGISTRY[name].is_hub == (source == "hf"):
            return name
    raise ValueError(f"no {source} copy of CLIP {model!r} is registered")
