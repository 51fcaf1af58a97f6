"""SAM 2.1 video tracker: our streaming, memory-bounded session against the model's own
propagation (the documented inference-session API of transformers), on tiny random weights."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from hybridgl import weights  # noqa: E402
from hybridgl.video.hf_trackers import (  # noqa: E402
    TRACKERS,
    HFVideoTracker,
    build_tracker,
    get_tracker_spec,
    video_config,
)
from hybridgl.video.tracker import Tracker  # noqa: E402

H, W, N = 60, 80, 20


@pytest.fixture(scope="module")
def tracker() -> HFVideoTracker:
    return build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=3, device="cpu")


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(N)]
    mask = np.zeros((H, W), bool)
    mask[15:40, 20:50] = True
    return frames, mask


def _reference(tracker, frames, mask, key: int, reverse: bool):
    """transformers' own propagation: whole video in the session, mask on ``key``."""
    m, proc = tracker.model, tracker.processor
    s = proc.init_video_session(video=frames, inference_device="cpu")
    proc.add_inputs_to_inference_session(s, frame_idx=key, obj_ids=1, input_masks=mask)
    m(inference_session=s, frame_idx=key)
    out = []
    for o in m.propagate_in_video_iterator(s, start_frame_idx=key, reverse=reverse):
        full = proc.post_process_masks([o.pred_masks], original_sizes=[[H, W]], binarize=True)[0]
        out.append((o.frame_idx, o.pred_masks.clone(), full[0, 0].numpy(), o.object_score_logits))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True])
def test_streaming_equals_the_models_own_propagation(tracker, video, reverse):
    frames, mask = video
    key = N - 1 if reverse else 0
    ref = _reference(tracker, frames, mask, key, reverse)
    order = range(key, -1, -1) if reverse else range(key, N)
    assert [r[0] for r in ref] == list(order)
    tracker.reset(reverse=reverse)
    for k, (_i, logits, full, score) in zip(order, ref, strict=True):
        step = tracker.step(frames[k], {1: mask} if k == key else None)
        assert torch.equal(tracker.last_logits, logits), f"frame {k}"
        assert np.array_equal(step.masks[1], full)
        assert step.presence[1] == pytest.approx(float(torch.sigmoid(score.reshape(-1)[0])))
    # the memory was pruned on the way (20 frames > the 16-frame window) and still equal
    assert tracker.memory_frames() <= tracker.memory_limit


@pytest.fixture(scope="module")
def edgetam() -> HFVideoTracker:
    pytest.importorskip("timm")
    return build_tracker("edgetam", random_mode="tiny", seed=5, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True])
def test_edgetam_streaming_equals_the_models_own_propagation(edgetam, video, reverse):
    """The tiny EdgeTAM (built by the same code as the published one) through our pruned
    streaming session equals transformers' propagate_in_video_iterator, frame for frame."""
    test_streaming_equals_the_models_own_propagation(edgetam, video, reverse)
    assert type(edgetam.model).__name__ == "EdgeTamVideoModel"
    assert edgetam.model.config.vision_config.backbone_config.architecture == "repvit_m1"


@pytest.mark.slow
def test_memory_stays_bounded_with_reseeds_and_two_objects(tracker, video):
    frames, mask = video
    tracker.reset()
    other = np.zeros((H, W), bool)
    other[5:20, 5:30] = True
    sizes = []
    for i in range(30):
        seeds = {1: mask} if i % 7 == 0 else {}
        if i == 3 or i % 11 == 0:
            seeds[2] = other
        step = tracker.step(frames[i % N], seeds)
        assert set(step.masks) == {1, 2}
        assert all(m.shape == (H, W) and m.dtype == bool for m in step.masks.values())
        sizes.append(tracker.memory_frames())
        s = tracker.session
        assert not s.processed_frames  # no pixels kept
        for out in s.output_dict_per_obj.values():
            assert len(out["cond_frame_outputs"]) <= tracker.max_cond_frames
    assert max(sizes) <= tracker.memory_limit
    assert sizes[-1] == sizes[-10]  # flat


def test_seed_problems_and_no_objects(tracker, video):
    frames, mask = video
    tracker.reset()
    assert tracker.step(frames[0]).masks == {}  # nothing to track yet
    with pytest.raises(ValueError, match="empty"):
        tracker.step(frames[1], {1: np.zeros((H, W), bool)})
    with pytest.raises(ValueError, match="seed of object 1"):
        tracker.step(frames[1], {1: np.ones((H + 1, W), bool)})


def test_registry_and_protocol(tracker):
    assert isinstance(tracker, Tracker)
    for spec in TRACKERS.values():
        ckpt = weights.get_checkpoint(spec.checkpoint)
        assert ckpt.hub_repo and ckpt.revision
    assert weights.get_checkpoint("edgetam").hub_repo == "yonigozlan/EdgeTAM-hf"
    # the published architecture's configuration is built in code (no download)
    cfg = video_config(get_tracker_spec("sam2.1_hiera_large"))
    assert cfg.vision_config.backbone_config.hidden_size == 144 and cfg.num_maskmem == 7
    # EdgeTAM: the RepViT-M1 backbone (not transformers' defaults: a Hiera, or a ResNet-50)
    cfg = video_config(get_tracker_spec("edgetam"))
    assert cfg.vision_config.model_type == "edgetam_vision_model"
    assert cfg.vision_config.backbone_config.architecture == "repvit_m1"
    assert cfg.vision_config.backbone_channel_list == [384, 192, 96, 48]
    with pytest.raises(ValueError, match="unknown tracker"):
        get_tracker_spec("nope")


@pytest.mark.slow
def test_reseed_answers_the_same_frame_again(tracker, video):
    frames, mask = video
    other = np.zeros((H, W), bool)
    other[5:20, 5:30] = True
    tracker.reset()
    tracker.step(frames[0], {1: mask, 2: other})
    tracker.step(frames[1])
    before = tracker.step(frames[2])
    again = tracker.reseed({2: mask})
    # object 1 is recomputed from the same memory: the same answer
    assert np.array_equal(again.masks[1], before.masks[1])
    assert again.presence[1] == before.presence[1]
    # object 2 now comes from its seed alone, as on a first frame
    tracker.reset()
    fresh = tracker.step(frames[2], {2: mask})
    assert np.array_equal(again.masks[2], fresh.masks[2])
    assert again.presence[2] == pytest.approx(fresh.presence[2])
    # a frame stepped with no object yet can be seeded afterwards (an object found late)
    tracker.reset()
    assert tracker.step(frames[2]).masks == {}
    late = tracker.reseed({2: mask})
    assert np.array_equal(late.masks[2], fresh.masks[2])
    with pytest.raises(RuntimeError, match="reseed"):
        tracker.reset()
        tracker.reseed({1: mask})


@pytest.mark.slow
def test_bf16_tracker_reaches_the_model_and_stays_close_to_fp32(video):
    """The dtype reaches the weights and the session; answers stay within bf16's precision.

    Tolerance: bf16 keeps 8 significant bits (unit roundoff 2**-8); through the network the
    rounding errors add up, so the seeded frame's mask logits may differ from float32's by
    a few roundings of their typical size: at most 8 * 2**-8 (3%) of their mean magnitude.
    Presence is a sigmoid (slope <= 1/4) of a logit that drifts as little: within 0.01.
    """
    from hybridgl.models.runtime import cpu_has_native_bf16

    frames, mask = video
    runs = {}
    for dtype in (None, "bf16"):
        t = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=3, device="cpu",
                          dtype=dtype)  # fmt: skip
        steps = []
        for i, f in enumerate(frames[:5]):
            s = t.step(f, {1: mask} if i == 0 else None)
            steps.append((t.last_logits.float().clone(), s.masks[1], s.presence[1]))
        runs[dtype] = (t, steps)
    t16, b16 = runs["bf16"]
    assert next(t16.model.parameters()).dtype == torch.bfloat16
    assert t16.session.dtype == torch.bfloat16 and t16.last_logits.dtype == torch.bfloat16
    (a, ma, _), (b, mb, _) = runs[None][1][0], b16[0]
    assert float((a - b).abs().max()) <= 8 * 2**-8 * float(a.abs().mean())
    assert (ma & mb).sum() / (ma | mb).sum() >= 0.95
    for (_, _, pa), (_, _, pb) in zip(runs[None][1], b16, strict=True):
        assert abs(pa - pb) <= 0.01
    auto = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", device="cpu", dtype="auto")
    assert auto.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
