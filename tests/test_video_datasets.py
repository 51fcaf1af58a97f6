"""Referring video datasets: small fixtures in the distributed layouts (MeViS, Ref-YouTube-VOS)
and J / F / absence counts worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hybridgl.errors import VideoError
from hybridgl.masks import mask_to_rle
from hybridgl.video.datasets import evaluate_expression, load, write_submission
from hybridgl.video.grounding import Grounding
from hybridgl.video.method import VideoSegmenter
from hybridgl.video.tracker import TrackStep

S = 8


def col(a):
    m = np.zeros((S, S), bool)
    m[:, a] = True
    return m


class Always:
    """Grounder and tracker in one: always column 1, present."""

    name = "always"
    memory_limit = 1

    def ground(self, image, expressions, tracked=None):
        return [Grounding(True, col(1), 0.5, 0.3) for _ in expressions]

    def reset(self, reverse=False):
        pass

    def step(self, image, seeds=None):
        return TrackStep({1: col(1)}, {1: 0.9})

    def reseed(self, seeds):
        return self.step(None)

    def memory_frames(self):
        return 0


def _frames(folder, names):
    folder.mkdir(parents=True)
    for n in names:
        Image.fromarray(np.full((S, S, 3), 100, np.uint8)).save(folder / f"{n}.jpg")


def test_mevis_union_of_objects_and_hand_computed_scores(tmp_path):
    names = ["00000", "00005", "00010"]
    split = tmp_path / "valid_u"
    _frames(split / "JPEGImages" / "v1", names)
    meta = {"videos": {"v1": {"frames": names, "expressions": {
        "0": {"exp": "the two things", "obj_id": [0, 1], "anno_id": [7, 8]}}}}}  # fmt: skip
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    masks = {
        "7": [mask_to_rle(col(1)), mask_to_rle(col(1)), None],
        "8": [None, mask_to_rle(col(5)), None],
    }
    (split / "mask_dict.json").write_text(json.dumps(masks))
    [sample] = load("mevis", tmp_path, "valid_u")
    assert (sample.video, sample.text, sample.anno_ids) == ("v1", "the two things", ["7", "8"])
    assert sample.has_truth
    a = Always()
    vs = VideoSegmenter(a, a, reground_every=0)
    r = evaluate_expression(vs, sample, json.loads((split / "mask_dict.json").read_text()))
    # frame 0: exact (J = F = 1); frame 1: truth = columns 1 and 5, J = 8/16; boundaries:
    # ours columns 0-1 (16 px), truth columns 0-1 and 4-5 (32 px): P = 1, R = 1/2, F = 2/3;
    # frame 2: nothing there but we answer column 1: J = 0, P = 0, F = 0
    assert r["J"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["F"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert r["J&F"] == pytest.approx((r["J"] + r["F"]) / 2)
    assert (r["present_when_absent"], r["absent_when_present"]) == (1, 0)


def test_ref_youtube_vos_objects_and_submission(tmp_path):
    names = ["00000", "00001"]
    for split in ("train", "valid"):
        _frames(tmp_path / split / "JPEGImages" / "v9", names)
        meta = {"videos": {"v9": {"frames": names, "expressions": {
            "0": {"exp": "the left one", "obj_id": "1"},
            "1": {"exp": "the right one", "obj_id": "2"}}}}}  # fmt: skip
        (tmp_path / "meta_expressions" / split).mkdir(parents=True)
        (tmp_path / "meta_expressions" / split / "meta_expressions.json").write_text(
            json.dumps(meta)
        )
    ann = tmp_path / "train" / "Annotations" / "v9"
    ann.mkdir(parents=True)
    labels = col(1).astype(np.uint8) + 2 * col(3).astype(np.uint8)
    for n in names:
        img = Image.fromarray(labels, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        img.save(ann / f"{n}.png")
    left, right = load("ref-youtube-vos", tmp_path, "train")
    assert [t.any() for t in left.truth()] == [True, True]
    assert np.array_equal(next(right.truth()), col(3))
    a = Always()
    vs = VideoSegmenter(a, a, reground_every=0)
    assert evaluate_expression(vs, left)["J"] == 1.0
    assert evaluate_expression(vs, right)["J"] == 0.0
    valid = load("ref-youtube-vos", tmp_path, "valid")
    assert not valid[0].has_truth  # withheld
    folder = write_submission(vs, valid[1], tmp_path / "submission")
    assert folder == tmp_path / "submission" / "Annotations" / "v9" / "1"
    pngs = sorted(folder.iterdir())
    assert [p.name for p in pngs] == ["00000.png", "00001.png"]
    assert set(np.unique(np.asarray(Image.open(pngs[0])))) == {0, 255}


def test_bad_datasets(tmp_path):
    with pytest.raises(VideoError, match="unknown video dataset"):
        load("kinetics", tmp_path, "train")
    with pytest.raises(VideoError, match="not found"):
        load("mevis", tmp_path, "valid")
    (tmp_path / "valid").mkdir()
    (tmp_path / "valid" / "meta_expressions.json").write_text('{"videos": {"v": {}}}')
    with pytest.raises(VideoError, match="malformed"):
        load("mevis", tmp_path, "valid")
