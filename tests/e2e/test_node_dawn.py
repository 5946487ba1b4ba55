"""The web app's generation loop (web/common/pipeline.js) outside the browser: Node on Dawn
(npm `webgpu`), as sdparity.gpu.web runs it on the lent GPU machine. Here Dawn uses
chromium's SwiftShader; the whole prepare -> device path runs on the tiny model and is
compared with diffusers.StableDiffusionPipeline by gpu_web itself."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from sdparity.gpu import web as gpu_web

STEPS = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("webgpu-node")
    gpu_web.prepare("tiny", d, (16, 16), {"prompt": "a photo of a cat", "negative": "blurry", "steps": STEPS,
                                          "guidance": 7.5, "seed": 0}, log=print, carry_node=False)
    return d


def test_node_dawn_generation_matches_diffusers(prepared, tmp_path):
    from sdparity.reports.report import load

    out = tmp_path / "out"
    rc = gpu_web.device(prepared, out, runs=1, log=print, software=True, seeds=(0, 1))
    rep = load(out / "gpu-report.json")  # a sdparity.report/1 report: schema-validated here
    perf = rep["performance"]["cpu"]
    assert rep["backends"]["webgpu"]["weights_same_as_prepare"] is True
    assert not rep["errors"], rep["errors"]
    assert perf["webgpu"]["adapter"]["architecture"] == "swiftshader"  # Dawn, not a stand-in
    steps = [r for r in rep["results"] if r["output"] == "latents"]
    assert len(steps) == STEPS
    bad = [f"{r['case']} {r['output']}: {r['message']}" for r in rep["results"] if r["verdict"] != "pass"]
    assert not bad and rc == 0, bad
    assert all(r["metrics"]["floor_budget"] is not None for r in steps), steps[0]["message"]  # floor-judged
    assert 0 < steps[-1]["metrics"]["max_abs"] < 1e-3  # really computed, and close
    assert len(perf["webgpu"]["timings"]["stepMs"]) == STEPS and len(perf["torch"]["runs"][0]["step_s"]) == STEPS
    assert {r["function"] for r in perf["results"]} == {"step", "generate"}
    assert all(r["ratio"] > 0 for r in perf["results"])
    # --seeds: one report per seed, the input of `sdparity calibrate --from-reports`
    other = load(out / "calibrate-seed1.json")
    assert other["seed"] == 1 and len([r for r in other["results"] if r["output"] == "latents"]) == STEPS
    assert all(r["verdict"] == "pass" for r in other["results"]), [r["message"] for r in other["results"]]
    assert other["results"][2]["metrics"]["max_abs"] != steps[0]["metrics"]["max_abs"]  # other latents
    for f in ("webgpu.png", "diffusers.png", "difference.png"):
        assert (out / f).stat().st_size > 0


def test_changed_weights_are_refused(prepared, tmp_path):
    """The device recreates the seeded model; other weights must not pass as the same."""
    import shutil

    from reference.models import random_components

    d = tmp_path / "copy"
    shutil.copytree(prepared, d)
    parts = random_components("tiny")
    w = next(iter(parts["unet"].parameters()))
    w.data[(0,) * w.dim()] += 1e-3
    assert gpu_web.write_weights(d, parts, log=print) is False


def test_no_adapter_is_a_clear_error(prepared, tmp_path):
    """Dawn with no Vulkan driver: one clear error, exit 2, result.json still written."""
    env = gpu_web.vulkan_env(software=True)
    env["VK_ICD_FILENAMES"] = str(tmp_path / "missing_icd.json")
    out = tmp_path / "o"
    proc = subprocess.run(["node", str(gpu_web.WEB / "node" / "generate.mjs"), "--data", str(prepared / "data"),
                           "--art", str(prepared / "art"), "--out", str(out), "--steps", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    res = json.loads((out / "result.json").read_text())
    assert proc.returncode == 2, proc.stderr
    assert any("WebGPU is not available" in e for e in res["errors"]), res["errors"]


def _generate(prepared, out, *flags):
    """generate.mjs on SwiftShader, one step, with the prepared latents; returns result.json."""
    node = gpu_web.node_binary(prepared)
    proc = subprocess.run([node, str(gpu_web.WEB / "node" / "generate.mjs"), "--data", str(prepared / "data"),
                           "--art", str(gpu_web.unpack_art(prepared)), "--out", str(out), "--latents",
                           str(prepared / "latents.f32"),
                           "--steps", "1", "--trace", *flags],
                          env=gpu_web.vulkan_env(software=True), capture_output=True, text=True, timeout=600)
    res = json.loads((out / "result.json").read_text())
    assert proc.returncode == 0 and not res["errors"], (res["errors"], proc.stderr[-2000:])
    return res


def test_early_submits_change_nothing_and_the_profile_names_every_pass(prepared, tmp_path):
    """gpu.js submitEvery: tvmjs's batch submitted after every single pass (the most splits)
    must give the same bytes as tvmjs's own batching (0). The profile of that run (timestamp
    queries) names a kernel of the build for every pass and times every pass."""
    from reference.models import random_components

    assert gpu_web.write_weights(prepared, random_components("tiny"), log=print)  # as device() does
    a = _generate(prepared, tmp_path / "batched", "--submitEvery", "0")
    b = _generate(prepared, tmp_path / "split", "--submitEvery", "1", "--profile")
    assert (a["submitEvery"], b["submitEvery"]) == (0, 1)
    for f in ("latents.f32", "embeddings.f32", "rgba.bin"):
        assert (tmp_path / "batched" / f).read_bytes() == (tmp_path / "split" / f).read_bytes(), f
    prof = b["profile"]
    assert prof["untimed_passes"] == 0 and prof["timed_passes"] > 100
    meta = json.loads(next((prepared / "art").glob("*/sdparity.json")).read_text())
    fns = prof["functions"]
    assert set(fns) == set(meta["params"]) | {"concat_embeddings", "dpm_convert_model_output", "dpm_step",
                                             "image_to_rgba"}, set(fns)
    for fn, f in fns.items():
        assert f["gpu_busy_ms_per_call"] > 0, fn
        assert all(re.fullmatch(r"\w+_kernel(_\d+)?", k["kernel"]) for k in f["kernels"]), fn
        assert abs(sum(k["ms_per_call"] for k in f["kernels"]) - f["gpu_busy_ms_per_call"]) < 1e-6 * f["calls"] + 1e-9
    assert fns["unet"]["passes_per_call"] > 50  # the tiny UNet: hundreds of kernels, not one
    summary = gpu_web.webgpu_profile(b)
    assert summary["step"]["gpu_busy_ms"] > 0 and summary["functions"]["unet"]["by_kind"]
