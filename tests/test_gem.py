"""GEM: hand-computed self-self attention, invariants, and a block-module re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hybridgl.models.clip import build_clip, randomize_clip
from hybridgl.models.gem import gem_input, gem_patch_tokens, resample_pos_embed, self_self_attention

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def tiny_clip():
    return randomize_clip(build_clip("ViT-B-16", "tiny"), seed=5).eval()


def test_self_self_attention_by_hand():
    # one head, two tokens a = (1, 0), b = (0, 1), q = k = v, temperature 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, None]
    # round 1: unit vectors already, x x^T = I, softmax rows = [e, 1] / (e + 1)
    e = math.e
    s = np.array([[e, 1], [1, e]]) / (e + 1)
    y = s @ np.eye(2)  # = s
    y = y / np.linalg.norm(y, axis=1, keepdims=True)  # rows (e, 1) / sqrt(e^2 + 1)
    g = y @ y.T  # diag 1, off-diagonal 2e / (e^2 + 1)
    off = 2 * e / (e * e + 1)
    assert np.allclose(g, [[1, off], [off, 1]])
    w = np.exp(g) / np.exp(g).sum(axis=1, keepdims=True)
    expected = w @ np.eye(2)  # applied to v = x; the same for q, k and v, so the mean too
    out = self_self_attention(x, x, x, torch.tensor(1.0), iters=1)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=1e-6)


def test_self_self_attention_is_permutation_equivariant():
    # no positional term inside: permuting tokens permutes the output rows
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    perm = torch.randperm(6, generator=g)
    out = self_self_attention(q, k, v, torch.tensor(3.0))
    out_p = self_self_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], torch.tensor(3.0))
    torch.testing.assert_close(out_p, out[:, :, perm])


def test_self_self_attention_uniform_when_directions_equal():
    # tokens with one direction: every similarity equals 1, attention is uniform, so
    # each path returns the mean of v; v itself is one direction scaled differently
    base = torch.randn(1, 1, 1, 4)
    scales = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).view(1, 1, 5, 1)
    q = base.expand(1, 1, 5, 4).clone()
    v = base * scales
    out = self_self_attention(q, 2 * q, v, torch.tensor(7.0))
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(v))


def test_pos_embed_resample_matches_pil_bicubic():
    # antialiased bicubic upsampling in torch uses PIL's kernel (a = -0.5)
    rng = np.random.default_rng(0)
    pos = torch.from_numpy(rng.normal(size=(1 + 14 * 14, 3)).astype(np.float32))
    out = resample_pos_embed(pos, 28)
    assert out.shape == (1 + 28 * 28, 3)
    torch.testing.assert_close(out[0], pos[0])
    for c in range(3):
        grid = pos[1:, c].reshape(14, 14).numpy()
        pil = Image.fromarray(grid, mode="F").resize((28, 28), Image.BICUBIC)
        np.testing.assert_allclose(out[1:, c].reshape(28, 28).numpy(), np.asarray(pil), atol=1e-4)
    torch.testing.assert_close(resample_pos_embed(pos, 14), pos)


def test_gem_input_is_pil_bicubic_and_clip_normalised():
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x = gem_input(img, 448)
    assert x.shape == (1, 3, 448, 448)
    ref = np.asarray(Image.fromarray(img).resize((448, 448), Image.BICUBIC), dtype=np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), (ref / 255 - mean) / std, atol=1e-5)


def reference_gem(model, pixels, depth=7):
    """GEM written with open_clip's block modules for the original stream."""
    vit = model.visual
    blocks = list(vit.transformer.resblocks)
    pos = resample_pos_embed(vit.positional_embedding, pixels.shape[-1] // 16)
    x = vit.conv1(pixels).flatten(2).transpose(1, 2)
    x = vit.ln_pre(torch.cat([vit.class_embedding.expand(1, 1, -1), x], 1) + pos)
    first = len(blocks) - (depth - 1)
    for b in blocks[:first]:
        x = b(x)
    x_gem = x
    for b in blocks[first:]:
        h = b.ln_1(x)
        heads = b.attn.num_heads
        n, length, d = h.shape
        qkv = F.linear(h, b.attn.in_proj_weight, b.attn.in_proj_bias)
        q, k, v = (
            t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1)
        )
        temp = h.norm(dim=-1).mean() * (d // heads) ** -0.5
        outs = []
        for t in (q, k, v):
            t = F.normalize(t, dim=-1)
            t = torch.softmax(t @ t.transpose(-1, -2) * temp, -1) @ t
            t = F.normalize(t, dim=-1)
            outs.append(torch.softmax(t @ t.transpose(-1, -2) * temp, -1) @ v)
        ss = (sum(outs) / 3).transpose(1, 2).reshape(n, length, d)
        x_gem = x_gem + b.attn.out_proj(ss)
        x = b(x)
    return vit.ln_post(x_gem[:, 1:]) @ vit.proj


def test_gem_matches_block_module_version(tiny_clip):
    img = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    pixels = gem_input(img, 448)
    ours = gem_patch_tokens(tiny_clip.visual, pixels, depth=7)
    assert ours.shape == (1, 28 * 28, tiny_clip.visual.output_dim)
    torch.testing.assert_close(ours, reference_gem(tiny_clip, pixels), atol=2e-4, rtol=2e-4)


def test_gem_depth_one_is_plain_clip_tokens(tiny_clip):
    # depth 1 leaves no GEM block: the tokens are CLIP's own patch tokens at 448
    img = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    pixels = gem_input(img, 448)
    vit = tiny_clip.visual
    pos = resample_pos_embed(vit.positional_embedding, 28)
    x = vit.conv1(pixels).flatten(2).transpose(1, 2)
    x = vit.ln_pre(torch.cat([vit.class_embedding.expand(1, 1, -1), x], 1) + pos)
    for b in vit.transformer.resblocks:
        x = b(x)
    plain = vit.ln_post(x[:, 1:]) @ vit.proj
    torch.testing.assert_close(gem_patch_tokens(vit, pixels, depth=1), plain, atol=2e-4, rtol=2e-4)
