"""The views and the hybrid encoder against a second, reference-style implementation.

The second implementation is written the way the reference code computes it: OpenCV
``bitwise_and``/``add`` composites, torchvision ``ToTensor``/``Resize``/``Normalize``,
and open_clip's own ``ResidualAttentionBlock`` modules with additive attention masks of
shape ``(N * heads, L, L)``. Our path (functional blocks, SDPA, chunking, skipped unused
streams) must give the same numbers on the same random weights.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from hybridgl.config import CLIP_MEAN, FUSION_MODES, MethodConfig
from hybridgl.models import hybrid_clip
from hybridgl.models.clip import build_clip, randomize_clip

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def tiny_clip():
    return randomize_clip(build_clip("ViT-B-16", "tiny"), seed=3).eval()


def _synthetic(h: int = 96, w: int = 128, n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        masks[i, y0 : y0 + rng.integers(4, h // 2), x0 : x0 + rng.integers(4, w // 2)] = True
    masks[-1, :, :] = False
    masks[-1, 3, 5] = True  # a one-pixel proposal: no patch survives the 14x14 resize
    return img, masks


def reference_views(img: np.ndarray, masks: np.ndarray):
    """Views as the reference builds them, one proposal at a time."""
    blurred = cv2.GaussianBlur(img.copy(), (15, 15), 0)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    original = norm(T.ToTensor()(img))[None]
    pixel_mean = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)
    gl, lo = [], []
    for m in masks:
        m8 = m.astype(np.uint8)
        sharp = cv2.bitwise_and(img, img, mask=m8)
        blur_region = (blurred * (1 - m8)[:, :, None]).astype(np.uint8)
        g = cv2.add(sharp, blur_region)
        g = norm(T.Resize((224, 224), antialias=False)(T.ToTensor()(g)))
        gl.append(g)
        mt = torch.from_numpy(m8)[None, None]
        local = original * mt + (1 - mt) * pixel_mean
        lo.append(T.Resize((224, 224), antialias=False)(local[0]))
    m14 = TF.resize(torch.from_numpy(masks).float(), [14, 14], antialias=False)
    return torch.stack(gl), torch.stack(lo), m14


def _additive_mask(m14: torch.Tensor, heads: int) -> torch.Tensor:
    n = m14.shape[0]
    length = 14 * 14 + 1
    blocked = torch.zeros((n, length, length), dtype=torch.bool)
    blocked[:, 0, 1:] = ~(m14.flatten(1) != 0)
    mask = torch.zeros((n, length, length))
    mask.masked_fill_(blocked, float("-inf"))
    return mask.repeat_interleave(heads, dim=0)


def reference_features(model, gviews, lviews, m14, mode: str, masking_block: int = 9):
    """Hybrid features computed with open_clip's block modules, all streams kept."""
    vit = model.visual
    blocks = list(vit.transformer.resblocks)
    heads = blocks[0].attn.num_heads
    attn = _additive_mask(m14, heads)

    def emb(x):
        x = vit.conv1(x).flatten(2).transpose(1, 2)
        cls = vit.class_embedding.expand(x.shape[0], 1, -1)
        return vit.ln_pre(torch.cat([cls, x], 1) + vit.positional_embedding)

    def out(x):
        return vit.ln_post(x[:, 0]) @ vit.proj

    def tok(x):
        return torch.cat([x[:, :1], x[:, 1:] * m14.flatten(1)[:, :, None]], 1)

    if mode == "crop":
        return model.encode_image(lviews)
    x = emb(lviews)
    if mode in ("token_masking", "attn_masking"):
        for i, b in enumerate(blocks):
            if i < masking_block:
                x = b(x)
            elif mode == "token_masking":
                x = b(tok(x))
            elif i <= len(blocks) - 2:
                x = b(x, attn_mask=attn)
        return out(x)
    g = emb(gviews)
    for b in blocks[:masking_block]:
        x, g = b(x), b(g)
    hl, hg = x, g
    for b in blocks[masking_block:]:
        x, g, hl, hg = b(x), b(g, attn_mask=attn), b(hl + 2 * tok(g)), b(x + 2 * hg, attn_mask=attn)
    if mode == "G2L":
        return out(hl)
    if mode == "L2G":
        return out(hg)
    return out(hl) + out(hg)


def test_views_match_reference_construction():
    img, masks = _synthetic()
    cfg = MethodConfig()
    img_t = torch.from_numpy(img).permute(2, 0, 1)
    blur_t = torch.from_numpy(hybrid_clip.blur_image(img, 15)).permute(2, 0, 1)
    g, loc, m14 = hybrid_clip.make_views(img_t, blur_t, torch.from_numpy(masks), cfg)
    rg, rl, rm = reference_views(img, masks)
    torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loc, rl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m14, rm, atol=1e-6, rtol=1e-6)


def test_mask_resize_does_not_antialias():
    # a one-pixel mask survives a non-antialiased downsize only if a sample lands on it;
    # an antialiased one would spread it into a small positive value in some cell
    mask = torch.zeros(1, 1, 160, 160)
    mask[0, 0, 80, 80] = 1.0
    ours = hybrid_clip._resize(mask, 14)
    aa = TF.resize(mask[0], [14, 14], antialias=True)
    assert ours.max() == 0.0
    assert aa.max() > 0.0


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_hybrid_features_match_reference(tiny_clip, mode):
    img, masks = _synthetic()
    cfg = MethodConfig(fusion=mode, feature_batch=2)  # chunking must not change numbers
    ours = hybrid_clip.encode_proposals(
        tiny_clip.visual, img, torch.from_numpy(masks), cfg, torch.device("cpu")
    )
    rg, rl, rm = reference_views(img, masks)
    ref = reference_features(tiny_clip, rg, rl, rm, mode)
    assert ours.shape == (masks.shape[0], tiny_clip.visual.output_dim)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)


def test_modes_differ(tiny_clip):
    img, masks = _synthetic()
    feats = {
        mode: hybrid_clip.encode_proposals(
            tiny_clip.visual,
            img,
            torch.from_numpy(masks),
            MethodConfig(fusion=mode),
            torch.device("cpu"),
        )
        for mode in ("G2L", "L2G", "token_masking")
    }
    assert not torch.allclose(feats["G2L"], feats["L2G"])
    assert not torch.allclose(feats["G2L"], feats["token_masking"])
    # G2L&L2G is the sum of the two hybrid outputs
    both = hybrid_clip.encode_proposals(
        tiny_clip.visual,
        img,
        torch.from_numpy(masks),
        MethodConfig(fusion="G2L&L2G"),
        torch.device("cpu"),
    )
    torch.testing.assert_close(both, feats["G2L"] + feats["L2G"], atol=1e-4, rtol=1e-4)


def test_full_masks_reduce_to_plain_clip(tiny_clip):
    """Where the method reduces to plain CLIP it equals open_clip's encode_image."""
    img, _ = _synthetic()
    full = np.ones((2, *img.shape[:2]), bool)
    _, lviews, _ = reference_views(img, full)
    plain = tiny_clip.encode_image(lviews)
    for mode in ("crop", "token_masking"):
        ours = hybrid_clip.encode_proposals(
            tiny_clip.visual,
            img,
            torch.from_numpy(full),
            MethodConfig(fusion=mode),
            torch.device("cpu"),
        )
        torch.testing.assert_close(ours, plain, atol=2e-4, rtol=2e-4)
    # attention masking with a full mask is plain CLIP stopped after block 10
    x = lviews
    vit = tiny_clip.visual
    x = vit.conv1(x).flatten(2).transpose(1, 2)
    x = torch.cat([vit.class_embedding.expand(x.shape[0], 1, -1), x], 1) + vit.positional_embedding
    x = vit.ln_pre(x)
    for b in list(vit.transformer.resblocks)[:11]:
        x = b(x)
    ours = hybrid_clip.encode_proposals(
        vit, img, torch.from_numpy(full), MethodConfig(fusion="attn_masking"), torch.device("cpu")
    )
    torch.testing.assert_close(ours, vit.ln_post(x[:, 0]) @ vit.proj, atol=2e-4, rtol=2e-4)


def test_cls_attention_mask():
    m = torch.zeros(1, 2, 2)
    m[0, 0, 1] = 0.25
    allowed = hybrid_clip.cls_attention_mask(m)
    assert allowed.shape == (1, 1, 5, 5)
    # class token: itself and patch 1 (row-major index 1 -> token 2)
    assert allowed[0, 0, 0].tolist() == [True, False, True, False, False]
    assert allowed[0, 0, 1:].all()


def test_fix_options_change_views():
    img, masks = _synthetic(h=60, w=120)
    img_t = torch.from_numpy(img).permute(2, 0, 1)
    blur_t = torch.from_numpy(hybrid_clip.blur_image(img, 15)).permute(2, 0, 1)
    m = torch.from_numpy(masks)
    g0, l0, m0 = hybrid_clip.make_views(img_t, blur_t, m, MethodConfig())
    g1, l1, m1 = hybrid_clip.make_views(img_t, blur_t, m, MethodConfig(keep_aspect=True))
    # keep_aspect centres the 60x120 image in a 120x120 square: the top and bottom
    # quarter rows of the mask grid are padding, hence empty
    assert m1[:, :3].sum() == 0 and m1[:, -3:].sum() == 0
    assert not torch.allclose(g0, g1)
    # the local view's outside: CLIP's mean written into the normalised tensor (paper),
    # or 0, the mean colour itself, with CLIP normalisation for both views
    corner = torch.zeros((1, 60, 120), dtype=torch.bool)
    corner[0, 30:, 60:] = True
    _, lp, _ = hybrid_clip.make_views(img_t, blur_t, corner, MethodConfig())
    _, lf, _ = hybrid_clip.make_views(
        img_t, blur_t, corner, MethodConfig(clip_norm_both_views=True)
    )
    torch.testing.assert_close(lp[0, :, 0, 0], torch.tensor(CLIP_MEAN))
    torch.testing.assert_close(lf[0, :, 0, 0], torch.zeros(3))


@pytest.mark.slow
def test_full_size_crop_equals_encode_image():
    model = randomize_clip(build_clip("ViT-B-16", "full"), seed=0).eval()
    assert model.visual.output_dim == 512
    assert len(model.visual.transformer.resblocks) == 12
    img, masks = _synthetic(n=2)
    _, lviews, _ = reference_views(img, masks)
    ours = hybrid_clip.encode_proposals(
        model.visual, img, torch.from_numpy(masks), MethodConfig(fusion="crop"), torch.device("cpu")
    )
    torch.testing.assert_close(ours, model.encode_image(lviews), atol=2e-4, rtol=2e-4)
    g2l = hybrid_clip.encode_proposals(
        model.visual, img, torch.from_numpy(masks), MethodConfig(), torch.device("cpu")
    )
    rg, rl, rm = reference_views(img, masks)
    torch.testing.assert_close(
        g2l, reference_features(model, rg, rl, rm, "G2L"), atol=5e-4, rtol=5e-4
    )
