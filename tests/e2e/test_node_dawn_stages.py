"""A stage's WebGPU build checked alone in Node on Dawn (``sdparity.gpu.webstages``), as the lent
GPU machine runs SDXL's UNet and VAE at 1024x1024. Here Dawn uses chromium's SwiftShader and
PyTorch the CPU; the whole prepare -> device path runs on the tiny model's VAE and the DPM
step, through the one check driver, and a TVM lowering perturbed at prepare must fail there."""

from __future__ import annotations

import pytest

from sdparity.gpu import webstages

from tests.perturb import op_attr_replaced

STAGES = ["vae", "scheduler_dpm"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("webgpu-stages")
    webstages.prepare("tiny", d, STAGES, log=print, carry_node=False, seeds=2)
    return d


def test_stages_on_dawn_match_pytorch(prepared, tmp_path):
    from sdparity.reports.report import load

    out = tmp_path / "out"
    rc = webstages.device(prepared, out, repeat=2, log=print, software=True, seeds=(0, 1))
    rep = load(out / "gpu-report.json")  # a sdparity.report/1 report: schema-validated here
    wg = rep["backends"]["webgpu"]
    assert wg["adapter"]["architecture"] == "swiftshader"  # Dawn, not a stand-in
    assert wg["weights_same_as_prepare"] == {"vae": True}
    bad = [f"{r['stage']} {r['case']} {r['output']}: {r['message']}" for r in rep["results"] if r["verdict"] != "pass"]
    assert not bad and rc == 0, bad
    by_stage = {s: [r for r in rep["results"] if r["stage"] == s] for s in STAGES}
    assert all(by_stage.values()), {s: len(v) for s, v in by_stage.items()}
    vae = [r for r in by_stage["vae"] if r["output"] == "image_float"]
    assert all(r["metrics"]["floor_budget"] is not None for r in vae), vae[0]["message"]  # floor-judged
    assert all(0 < r["metrics"]["max_abs"] < 0.05 for r in vae)  # really computed, and close
    perf = rep["performance"]["cpu"]["results"]
    assert {(p["stage"], p["function"]) for p in perf} >= {("vae", "vae"), ("scheduler_dpm", "dpm_step")}
    assert all(len(p["run_s_all"]) == 2 and p["ratio"] > 0 for p in perf)
    # --seeds: every seed's report for `sdparity calibrate --from-reports`; seed 1 has the model
    # stage only (its own inputs), no timings
    other = load(out / "calibrate-seed1.json")
    assert other["seed"] == 1 and {r["stage"] for r in other["results"]} == {"vae"} and not other.get("performance")
    assert all(r["verdict"] == "pass" for r in other["results"]), [r["message"] for r in other["results"]]
    first = {(r["case"], r["output"]): r["metrics"]["max_abs"] for r in vae}
    assert all(first[(r["case"], r["output"])] != r["metrics"]["max_abs"] for r in other["results"]
               if r["output"] == "image_float")  # other inputs


def test_a_lowering_perturbed_at_prepare_fails_on_dawn(tmp_path):
    """relax.sigmoid lowered as the linear "hard sigmoid" 0.25x + 0.5 (a fast-math shortcut):
    the VAE's SiLUs go wrong in the carried wasm, and the Dawn run must say fail, not pass."""
    from tvm import tirx

    def hard_sigmoid(bb, call):
        return bb.call_te(lambda x: x * tirx.const(0.25, "float32") + tirx.const(0.5, "float32"),
                          call.args[0], primfunc_name_hint="sigmoid")

    d = tmp_path / "prep"
    with op_attr_replaced("relax.sigmoid", "FLegalize", hard_sigmoid):
        webstages.prepare("tiny", d, ["vae"], log=print, carry_node=False)
    rc = webstages.device(d, tmp_path / "out", repeat=1, log=print, software=True)
    from sdparity.reports.report import load

    rep = load(tmp_path / "out" / "gpu-report.json")
    floats = [r for r in rep["results"] if r["output"] == "image_float"]
    assert rc == 1 and floats and all(r["verdict"] == "fail" for r in floats), [r["message"] for r in floats]


def test_recreated_weights_that_differ_are_refused(prepared):
    import json

    from reference.models import random_components
    from sdparity.registry import get_stage

    meta = json.loads((prepared / "vae" / "meta.json").read_text())
    module = get_stage("vae").wrap(random_components("tiny", parts={"vae"})["vae"], None).eval()
    assert webstages.write_stage_weights(prepared / "vae", meta, module) is True
    w = next(iter(module.parameters()))
    w.data[(0,) * w.dim()] += 1e-3
    assert webstages.write_stage_weights(prepared / "vae", meta, module) is False
