"""``hybridgl track --targets one|many|auto [--thresholds FILE]`` (issue 19): the option
reaches :class:`~hybridgl.video.method.TrackOptions`, the grounder and ``run.json`` (only
when not the default, so runs made before it still resume), a resume with another mode is
refused naming it, a ``--list`` row may carry its own ``targets``, and a many/auto run that
is interrupted resumes by replaying from the first frame."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hybridgl.cli.main import build_parser
from hybridgl.errors import InputError, UsageError

RULES = {"floor": 0.05, "margin": 0.4}


def _args(*extra):
    return build_parser().parse_args(["track", "v.mp4", "the dogs", "--out", "o", *extra])


def test_option_reaches_track_options_and_the_recorded_settings(tmp_path):
    from hybridgl.cli.track import job_settings, target_rules, track_options
    from hybridgl.spec import ModelSpec
    from hybridgl.targets import TargetRules

    spec = ModelSpec()
    plain = _args()
    assert track_options(plain).targets == "one" and target_rules(plain) is None
    options = job_settings(plain, spec)["options"]
    assert "targets" not in options and "thresholds" not in options  # as before the option
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"rules": RULES}))
    args = _args("--targets", "auto", "--thresholds", str(path))
    assert track_options(args).targets == "auto"
    assert target_rules(args) == TargetRules(**RULES)
    options = job_settings(args, spec)["options"]
    assert options["targets"] == "auto"
    assert options["thresholds"] == TargetRules(**RULES).to_dict()  # the rules, not the path
    path.write_text('{"floor": "low"}')
    with pytest.raises(InputError, match="floor"):
        target_rules(args)
    with pytest.raises(SystemExit):
        _args("--targets", "some")


def test_resume_with_another_mode_is_refused_naming_it(tmp_path):
    from hybridgl.jobs.video_track import read_run_file

    old = {"source": "v.mp4", "expressions": ["x"], "options": {"top_k": 3}}
    (tmp_path / "run.json").write_text(json.dumps({"settings": old, "complete": False}))
    assert read_run_file(tmp_path, old)["settings"] == old  # a run from before the option
    many = {**old, "options": {"top_k": 3, "targets": "many"}}
    with pytest.raises(UsageError, match=r"targets 'one' -> 'many'"):
        read_run_file(tmp_path, many)
    (tmp_path / "run.json").write_text(json.dumps({"settings": many}))
    auto = {**old, "options": {"top_k": 3, "targets": "auto"}, "expressions": ["y"]}
    with pytest.raises(UsageError, match=r"\(other expressions; targets 'many' -> 'auto'\)"):
        read_run_file(tmp_path, auto)


def test_list_rows_carry_their_own_targets(tmp_path):
    from hybridgl.jobs.video_batch import read_video_rows

    path = tmp_path / "v.jsonl"
    rows = [
        {"video": "a.mp4", "expression": "the dogs", "id": "a", "targets": "many"},
        {"video": "a.mp4", "expression": "the cat", "id": "a"},
        {"video": "b.mp4", "expression": "x", "targets": "some"},
        {"video": "c.mp4", "expression": "x", "targets": ""},
        {"video": "a.mp4", "expression": "y", "id": "a", "targets": "one"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_video_rows(path)
    assert [(r.id, r.expressions, r.targets, r.error is not None) for r in got] == [
        ("a", ["the dogs", "the cat"], "many", False),
        ("c.mp4", ["x"], None, False),
        ("line:3", [], None, True),  # a bad mode: a failed row naming it
        ("line:5", ["y"], None, True),  # another mode for the same video
    ]
    assert "targets must be one of" in (got[2].error or "")
    assert got[0].head()["targets"] == "many" and "targets" not in got[1].head()
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("video,expression,targets\nd.mp4,the birds,auto\ne.mp4,a bird,\n")
    assert [r.targets for r in read_video_rows(csv_path)] == ["auto", None]


# --------------------------------------------------------------- the real command, tiny models

N = 4
ARGS = ["--reground-every", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture
def tiny_env(monkeypatch, shared_tiny_segmenters):
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


@pytest.fixture(scope="module")
def clip_path(coco_val, tmp_path_factory):
    pytest.importorskip("av")
    from video_support import coco_clip, write_clip

    frames, _ = coco_clip(coco_val, N, size=(48, 64), motion="leave")
    return write_clip(frames, tmp_path_factory.mktemp("clip") / "clip")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _stable(recs):
    return [{k: v for k, v in r.items() if k != "timings"} for r in recs]


@pytest.mark.slow
def test_many_run_records_the_mode_refuses_another_and_resumes_by_replay(
    tiny_env, clip_path, tmp_path, monkeypatch, capsys
):
    from hybridgl.cli.main import main
    from hybridgl.video.hf_trackers import HFVideoTracker

    rules = tmp_path / "t.json"
    rules.write_text(json.dumps(RULES))  # a low floor: the tiny random model finds targets
    base = ["track", str(clip_path), "the things", "the other", *ARGS, "--thresholds", str(rules)]
    whole = tmp_path / "whole"
    assert main([*base, "--targets", "many", "--out", str(whole)]) == 0
    run = json.loads((whole / "run.json").read_text())
    assert run["settings"]["options"]["targets"] == "many"
    assert run["settings"]["options"]["thresholds"]["floor"] == RULES["floor"]
    want = _lines(whole / "frames.jsonl")
    n_obj = len({r["object_id"] for r in want})
    assert Counter(r["frame"] for r in want) == Counter({f: n_obj for f in range(N)})
    assert {r["expression"] for r in want} == {"the things", "the other"}
    capsys.readouterr()
    assert main([*base, "--targets", "auto", "--out", str(whole)]) == 2
    assert "targets 'many' -> 'auto'" in capsys.readouterr().err

    out = tmp_path / "killed"
    real, calls = HFVideoTracker.step, {"n": 0}

    def dying(self, image, seeds=None):
        calls["n"] += 1
        if calls["n"] == 3:  # frames 0 and 1 recorded; killed on frame 2
            raise KeyboardInterrupt
        return real(self, image, seeds)

    monkeypatch.setattr(HFVideoTracker, "step", dying)
    assert main([*base, "--targets", "many", "--out", str(out)]) == 130
    first = _lines(out / "frames.jsonl")
    assert sorted({r["frame"] for r in first}) == [0, 1]
    monkeypatch.setattr(HFVideoTracker, "step", real)
    assert main([*base, "--targets", "many", "--out", str(out)]) == 0
    recs = _lines(out / "frames.jsonl")
    assert recs[: len(first)] == first  # nothing recorded before was rewritten
    assert _stable(recs) == _stable(want)  # the replay gives the uninterrupted run's records


@pytest.mark.slow
def test_list_row_targets_reach_its_folder(tiny_env, clip_path, tmp_path):
    from hybridgl.cli.main import main

    work = tmp_path / "v.jsonl"
    rows = [
        {"video": str(clip_path), "expression": "the things", "id": "many", "targets": "many"},
        {"video": str(clip_path), "expression": "the things", "id": "one"},
    ]
    work.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["track", "--list", str(work), "--out", str(out), "--max-frames", "1",
                 "--targets", "auto", *ARGS]) == 0  # fmt: skip
    runs = {i: json.loads((out / "videos" / i / "run.json").read_text()) for i in ("many", "one")}
    assert runs["many"]["settings"]["options"]["targets"] == "many"  # the row's own
    assert runs["one"]["settings"]["options"]["targets"] == "auto"  # the run's
    results = {r["id"]: r for r in _lines(out / "results.jsonl")}
    assert results["many"]["targets"] == "many" and "targets" not in results["one"]
