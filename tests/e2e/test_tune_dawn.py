"""The WebGPU tile tuner (web/node/tune.mjs, driven by ``gpu_tune device --kind webgpu``) in
real Dawn for Node on SwiftShader: every candidate's output is compared on the GPU with dlight's
default before it is timed, so a tile that computes something else is never timed (and never
reaches a build). Two corrupted candidates stand for plausible code-generation bugs: a launch
grid that covers half the output, and one accumulator off by a relative 1e-4 (ten times the
agreement bound gpu_tune.AGREE_RTOL). A retry after a crash (``--resume``) keeps what the crashed
process timed and times only the rest.

One kernel of the tiny VAE (its 1x1 convolution: candidates compile in seconds on SwiftShader,
where a 3x3 convolution's took minutes)."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest

from sdparity.gpu import tune as gpu_tune
from sdparity.gpu import web as gpu_web

KERNEL = "fused_conv2d_add"
GOOD = 2  # candidates kept besides the default


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    manifest = gpu_tune.prepare("tiny", d, ["vae"], log=print, kind="webgpu", kernels=[KERNEL])
    (w,) = manifest["workloads"]
    assert w["kernel"] == KERNEL and w["candidates"][0]["config"] == "default"
    default, good = w["candidates"][0], w["candidates"][1:1 + GOOD]
    half = dict(good[0], config="half-grid", grid=[max(1, good[0]["grid"][0] // 2), good[0]["grid"][1]])
    assert half["grid"] != good[0]["grid"], "the kernel's grid is too small to halve"
    assert good[1]["wgsl"].count(" = fma(") > 1
    scaled = dict(good[1], config="scaled-1e-4", wgsl=good[1]["wgsl"].replace(" = fma(", " = 1.0001f * fma(", 1))
    w["candidates"] = [default, *good, half, scaled]
    (d / gpu_tune.WEBGPU_MANIFEST).write_bytes(gzip.compress(json.dumps(manifest).encode()))
    return d


def test_tuner_times_agreeing_tiles_and_refuses_wrong_ones(folder, tmp_path):
    assert gpu_tune.device_webgpu(folder, tmp_path, None, log=print, software=True) == 0
    res = json.loads((tmp_path / "tune-results-webgpu.json").read_text())
    assert res["adapter"]["architecture"] == "swiftshader"  # real Dawn
    assert res["crashed"] == []
    (row,) = res["workloads"]
    assert row["complete"] and not row["failed"], row
    assert set(row["times_ms"]) == {"default", *[c for c in _configs(folder)[1:1 + GOOD]]}
    assert all(t > 0 for t in row["times_ms"].values())
    assert set(row["disagree"]) == {"half-grid", "scaled-1e-4"}
    assert row["disagree"]["half-grid"] > 0.1  # half the output left zero
    # caught, and measured: 1e-4 of one accumulator, relative to the output's largest value
    assert gpu_tune.AGREE_RTOL < row["disagree"]["scaled-1e-4"] <= 1.0001e-4
    # apply: only tiles that agreed can be chosen
    db = json.loads(gpu_tune.apply(tmp_path / "tune-results-webgpu.json", tmp_path / "db.json").read_text())
    times = db["workloads"][row["key"]]["times_ms"]
    assert "half-grid" not in times and "scaled-1e-4" not in times


def test_resume_keeps_what_a_crashed_run_timed(folder, tmp_path):
    configs = _configs(folder)
    before = {"workloads": [{"key": _workload(folder)["key"], "times_ms": {"default": 123.0, configs[1]: 123.0},
                             "disagree": {"half-grid": 0.5}, "failed": {}}]}
    (tmp_path / "before.json").write_text(json.dumps(before))
    proc = subprocess.run(["node", str(gpu_web.WEB / "node" / "tune.mjs"), "--manifest",
                           str(folder / gpu_tune.WEBGPU_MANIFEST), "--out", str(tmp_path / "after.json"),
                           "--only", "0", "--resume", str(tmp_path / "before.json")],
                          env=gpu_web.vulkan_env(software=True), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "after.json").read_text())["workloads"]
    assert row["complete"]
    assert row["times_ms"][configs[1]] == 123.0  # kept, not timed again
    assert row["times_ms"]["default"] != 123.0  # the reference is always timed again
    assert configs[2] in row["times_ms"]  # the rest is timed
    assert row["disagree"]["half-grid"] == 0.5 and "scaled-1e-4" in row["disagree"]


def _workload(folder) -> dict:
    """The one kernel of the test's manifest."""
    return json.loads(gzip.decompress((folder / gpu_tune.WEBGPU_MANIFEST).read_bytes()))["workloads"][0]


def _configs(folder) -> list[str]:
    return [c["config"] for c in _workload(folder)["candidates"]]
