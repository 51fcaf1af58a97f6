"""A timm Vision Transformer seen through open_clip's ``VisionTransformer`` attribute names.

The hybrid features (:mod:`hybridgl.models.hybrid_clip`) and GEM (:mod:`hybridgl.models.gem`)
run a ViT block by block through :mod:`hybridgl.models.vit_ops`, which reads open_clip's
names (``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks`` with ``attn.in_proj_weight``..., ``ln_post``, ``proj``). CLIPs
whose image tower is a timm ViT (BiomedCLIP: open_clip's ``TimmModel`` around timm's
``vit_base_patch16_224``) name the same pieces differently. :func:`vit_view` gives such a
tower the open_clip names, over the very same modules and parameters (nothing copied), so
one implementation of the method serves both:

========================  =====================================================
open_clip                 timm (``TimmModel.trunk`` / ``TimmModel.head``)
========================  =====================================================
``conv1``                 ``trunk.patch_embed.proj``
``class_embedding``       ``trunk.cls_token[0, 0]``
``positional_embedding``  ``trunk.pos_embed[0]`` (class position first)
``ln_pre``                ``trunk.norm_pre``
block ``ln_1`` / ``ln_2`` ``norm1`` / ``norm2``
``attn.in_proj_*``        ``attn.qkv`` (one linear for q, k, v, heads interleaved alike)
``attn.out_proj``         ``attn.proj``
``ls_1`` / ``ls_2``       ``ls1`` / ``ls2``
``ln_post``               ``trunk.norm``
``proj``                  ``head.proj.weight.T`` (a bias-free linear projection)
========================  =====================================================

Only the plain ViT that this mapping describes is accepted (class-token pooling, learned
absolute positions including the class token, no register tokens, no q/k norms, no gated
or normalised attention, a linear projection head); anything else is refused with a
ValueError naming what differs, rather than computed wrongly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TimmBlockView", "TimmViTView", "is_timm_tower", "vit_view"]


def _identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


class _AttnView:
    def __init__(self, attn: Any) -> None:
        self.num_heads = int(attn.num_heads)
        self.out_proj = attn.proj
        self._qkv = attn.qkv

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self._qkv.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self._qkv.bias


class TimmBlockView:
    """One timm ``Block`` under open_clip's ``ResidualAttentionBlock`` names."""

    def __init__(self, block: Any, index: int) -> None:
        attn = block.attn
        why = [
            what
            for what, bad in (
                ("q/k norms", not (_identity(attn.q_norm) and _identity(attn.k_norm))),
                ("a normalised attention output", not _identity(getattr(attn, "norm", None))),
                ("gated attention", getattr(attn, "gate", None) is not None),
                ("not one fused qkv linear", not isinstance(getattr(attn, "qkv", None), nn.Linear)),
            )
            if bad
        ]
        if why:
            raise ValueError(f"unsupported timm ViT block {index}: {', '.join(why)}")
        self.attn = _AttnView(attn)
        self.ln_1, self.ln_2 = block.norm1, block.norm2
        self.mlp = block.mlp
        self.ls_1, self.ls_2 = block.ls1, block.ls2


class _Resblocks:
    def __init__(self, blocks: list[TimmBlockView]) -> None:
        self.resblocks = blocks


class TimmViTView:
    """open_clip's ``VisionTransformer`` names over an open_clip ``TimmModel`` (see the
    module docstring); it holds references to the tower's modules, never copies."""

    def __init__(self, tower: Any) -> None:
        trunk, head = tower.trunk, tower.head
        proj = getattr(head, "proj", None)
        why = [
            what
            for what, bad in (
                ("no class token", getattr(trunk, "cls_token", None) is None),
                ("register tokens", int(getattr(trunk, "num_reg_tokens", 0) or 0) > 0),
                ("positions without the class token", bool(getattr(trunk, "no_embed_class", 0))),
                ("dynamic image size", bool(getattr(trunk, "dynamic_img_size", False))),
                ("a patch-embedding norm", not _identity(trunk.patch_embed.norm)),
                (
                    "pooling other than the class token",
                    getattr(trunk, "global_pool", "") != "token",
                ),
                ("an attention pool", getattr(trunk, "attn_pool", None) is not None),
                ("a norm after pooling", not _identity(getattr(trunk, "fc_norm", None))),
                (
                    "a head other than one bias-free linear projection",
                    not isinstance(proj, nn.Linear)
                    or proj.bias is not None
                    or any(n not in ("drop", "proj") for n, _ in head.named_children()),
                ),
            )  # fmt: skip
            if bad
        ]
        if why:
            raise ValueError(f"unsupported timm ViT image tower: {', '.join(why)}")
        assert proj is not None  # checked above
        self.tower = tower
        self._trunk = trunk
        self._proj: nn.Linear = proj
        self.conv1 = trunk.patch_embed.proj
        self.ln_pre = trunk.norm_pre
        self.ln_post = trunk.norm
        self.transformer = _Resblocks([TimmBlockView(b, i) for i, b in enumerate(trunk.blocks)])
        self.output_dim = int(proj.out_features)

    @property
    def class_embedding(self) -> torch.Tensor:
        cls: torch.Tensor = self._trunk.cls_token[0, 0]
        return cls

    @property
    def positional_embedding(self) -> torch.Tensor:
        pos: torch.Tensor = self._trunk.pos_embed[0]
        return pos

    @property
    def proj(self) -> torch.Tensor:
        weight: torch.Tensor = self._proj.weight
        return weight.t()


def is_timm_tower(visual: Any) -> bool:
    """True for open_clip's ``TimmModel`` (a timm trunk and a projection head)."""
    return hasattr(visual, "trunk") and hasattr(visual, "head")


def vit_view(visual: Any) -> Any:
    """``visual`` itself for open_clip's own ViT, a :class:`TimmViTView` for a timm one."""
    return TimmViTView(visual) if is_timm_tower(visual) else visual
