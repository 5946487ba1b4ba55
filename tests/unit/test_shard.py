"""`sdparity check --shard K/N` and `sdparity merge` (docs/ci.md): the shards of a run, merged,
equal the unsharded run and gate clean against it; bad --shard values are refused before any
work; shards that do not belong together are refused. Weight-free stages on llvm only (their
builds are cached after the first run: seconds)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from sdparity.cli import main
from sdparity.reports.merge import plan, shard_units, units
from sdparity.reports.report import load

STAGES = "concat_embeddings,image_to_rgba,scheduler_dpm"
CHECK = ["check", "--stages", STAGES, "--backends", "llvm", "-q", "--no-localize"]
#: the checks of that run: concat_embeddings 2 cases, scheduler_dpm 192 (3 configs: the model's,
#: sigma_min, the other prediction type; x 32 steps x convert + step), image_to_rgba 3
CHECKS = 2 + 3 * 32 * 2 + 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The unsharded run, its two shards and their merge (one folder each: reports travel alone)."""
    root = tmp_path_factory.mktemp("shard")
    paths = {name: root / name / f"{name}.json" for name in ("full", "s1", "s2", "merged")}
    for p in paths.values():
        p.parent.mkdir()
    assert main([*CHECK, "--report", str(paths["full"])]) == 0
    assert main([*CHECK, "--shard", "1/2", "--report", str(paths["s1"])]) == 0
    assert main([*CHECK, "--shard", "2/2", "--report", str(paths["s2"])]) == 0
    assert main(["merge", str(paths["merged"]), str(paths["s2"]), str(paths["s1"])]) == 0
    return paths


def _checks(data):
    return {(r["stage"], r["backend"], r["case"], r["output"]): (r["verdict"], (r.get("metrics") or {}).get("max_abs"))
            for r in data["results"]}


def test_shards_merged_equal_the_unsharded_run(runs):
    full, s1, s2, merged = (load(runs[k]) for k in ("full", "s1", "s2", "merged"))
    every = [["concat_embeddings", "llvm"], ["scheduler_dpm", "llvm"], ["image_to_rgba", "llvm"]]  # registry order
    assert s1["shard"] == {"index": 1, "count": 2, "units": every[0::2], "selection": every, "seed": 0, "latent": None}
    assert s2["shard"]["units"] == every[1::2]
    assert {r["stage"] for r in s1["results"]} == {"concat_embeddings", "image_to_rgba"}
    assert {r["stage"] for r in s2["results"]} == {"scheduler_dpm"}
    assert len(merged["results"]) == len(full["results"]) == CHECKS
    assert _checks(merged) == _checks(full)
    assert merged["summary"] == full["summary"] == {"pass": CHECKS, "fail": 0, "known": 0, "skip": 0, "error": 0}
    # in registry order, each stage's records together
    stages = [r["stage"] for r in merged["results"]]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [u[0] for u in every]
    assert merged["merged_from"] == [str(runs["s2"]), str(runs["s1"])]
    assert [s["index"] for s in merged["shards"]] == [1, 2]
    assert "shard" not in merged and "images_not_merged" not in merged
    assert merged["model"] == full["model"] and merged["backends"].keys() == {"llvm"}
    # the images of shard 1 (image_to_rgba) travel into the merged report's own folder
    pngs = sorted(p.name for p in (runs["merged"].parent / merged["images_dir"]).glob("*.png"))
    assert len(pngs) == 9 and pngs == sorted(p.name for p in (runs["s1"].parent / s1["images_dir"]).glob("*.png"))
    assert runs["merged"].with_suffix(".html").read_text().count("data:image/png;base64,") == 9


def test_merged_report_gates_clean_against_the_unsharded_one(runs, capsys):
    assert main(["gate", str(runs["full"]), str(runs["merged"])]) == 0
    assert main(["gate", str(runs["merged"]), str(runs["full"])]) == 0
    assert main(["html", str(runs["merged"])]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("value", ["0/2", "3/2", "2", "a/b", "1/0", "1/2/3", ""])
def test_bad_shard_values_exit_2_before_any_work(value, monkeypatch, capsys, tmp_path):
    import sdparity.cli

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(sdparity.cli, "load_selection", no_work)
    with pytest.raises(SystemExit) as e:
        main([*CHECK, "--shard", value, "--report", str(tmp_path / "r.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sdparity: error: check: argument --shard: ") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_an_empty_shard_writes_an_empty_report_and_exits_0(tmp_path, capsys):
    out = tmp_path / "s4.json"
    assert main([*CHECK, "--shard", "4/4", "--report", str(out)]) == 0
    assert "shard 4/4: no units of work" in capsys.readouterr().out
    data = load(out)
    assert data["results"] == [] and data["shard"]["units"] == [] and len(data["shard"]["selection"]) == 3


def _refused(capsys, *args) -> str:
    assert main(["merge", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdparity: error: ") and err.count("\n") == 1, err
    return err


def _edited(src, dst, edit):
    data = json.loads(src.read_text())
    edit(data)
    dst.write_text(json.dumps(data))
    return dst


def test_merge_refuses_shards_that_do_not_belong_together(runs, tmp_path, capsys):
    s1, s2, full, out = runs["s1"], runs["s2"], runs["full"], tmp_path / "m.json"
    assert "shard(s) 2/2 missing: 1 of 2 given" in _refused(capsys, out, s1)
    assert "shard 1/2 is given twice" in _refused(capsys, out, s1, s1, s2)
    assert "is not a shard report" in _refused(capsys, out, s1, full)

    def other_model(d):
        d["model"]["digest"] = "0" * 16

    def other_tvm(d):
        d["versions"]["apache-tvm"] = "0.26.0"

    def other_seed(d):
        d["shard"]["seed"] = 1

    def stray_record(d):  # a record of shard 1's unit in shard 2
        d["results"].append(json.loads(s1.read_text())["results"][0])

    for edit, why in ((other_model, "different models (model digest)"), (other_tvm, "different versions: apache-tvm"),
                      (other_seed, "different seeds"), (stray_record, "outside its shard's units")):
        bad = _edited(s2, tmp_path / f"{edit.__name__}.json", edit)
        assert why in _refused(capsys, out, s1, bad), edit.__name__
    four = _edited(s2, tmp_path / "four.json", lambda d: d["shard"].update(count=4))  # 2/4 holds what 2/2 holds
    assert "different shard counts" in _refused(capsys, out, s1, four)
    assert not out.exists()


def test_merge_without_a_shards_images_says_so(runs, tmp_path, capsys):
    lone = tmp_path / "s1.json"
    shutil.copy(runs["s1"], lone)  # the report alone, its images folder left behind
    out = tmp_path / "m.json"
    assert main(["merge", str(out), str(lone), str(runs["s2"])]) == 0
    assert "9 image(s) of the shards could not be read" in capsys.readouterr().err
    data = load(out)
    assert len(data["images_not_merged"]) == 9 and {x["why"] for x in data["images_not_merged"]} == {"missing"}
    assert "images_dir" not in data and data["summary"]["pass"] == CHECKS


def test_units_are_stable_and_every_unit_is_in_exactly_one_shard():
    stage_order, backend_order = ["a", "b", "c", "d"], ["llvm", "cuda", "webgpu"]
    every = units(["d", "b", "a"], ["webgpu", "llvm"], stage_order, backend_order)
    assert every == units(["a", "b", "d"], ["llvm", "webgpu"], stage_order, backend_order)  # typed order: no matter
    assert every == [["a", "llvm"], ["a", "webgpu"], ["b", "llvm"], ["b", "webgpu"], ["d", "llvm"], ["d", "webgpu"]]
    for n in range(1, 9):
        shards = [shard_units(every, k, n) for k in range(1, n + 1)]
        assert sorted(u for s in shards for u in s) == sorted(every)
    # two shards of two backends: each shard runs one backend on every stage, in one runner call
    stages = [SimpleNamespace(name=s) for s in ("d", "a")]
    backends = [SimpleNamespace(name=b) for b in ("webgpu", "llvm")]
    calls, record = plan(2, 2, stages, backends, stage_order, backend_order, 0, [8, 8])
    assert [([s.name for s in st], [b.name for b in bs]) for st, bs in calls] == [(["a", "d"], ["webgpu"])]
    assert record["units"] == [["a", "webgpu"], ["d", "webgpu"]] and record["latent"] == [8, 8]
    # three backends, two shards: a stage with two backends in the shard is one call with both
    three = [SimpleNamespace(name=b) for b in ("llvm", "cuda", "webgpu")]
    calls, record = plan(1, 2, stages[1:] + [SimpleNamespace(name="b")], three, stage_order, backend_order, 0, None)
    assert record["units"] == [["a", "llvm"], ["a", "webgpu"], ["b", "cuda"]]
    assert [([s.name for s in st], [b.name for b in bs]) for st, bs in calls] == [(["a"], ["llvm", "webgpu"]),
                                                                                   (["b"], ["cuda"])]
