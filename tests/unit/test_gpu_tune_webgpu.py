"""The WebGPU half of the tile tuner (sdparity.gpu.tune --kind webgpu) without a GPU:
what prepare hands web/node/tune.mjs (one standalone WGSL kernel per candidate, a grid that
covers the output, bindings that name their arguments) and how apply and the build use the
times. The timing itself runs in Dawn on the lent GPU (docs/performance.md, "WebGPU tiles")."""

from __future__ import annotations

import json
import re

import pytest
import tvm

from sdparity.compile import gpu_rules
from sdparity.compile.gpu_rules import DEFAULT, candidates, choose, config_name, tuned_matmul, workload_key
from sdparity.gpu import tune as gpu_tune
from tests.unit.test_gpu_rules import _matmul  # 256 x 192, K 96


def test_webgpu_candidates_fit_webgpu_without_vectors_or_virtual_threads():
    tiles = candidates("webgpu")
    assert tiles[0] is None and len(set(tiles)) == len(tiles) > 10
    for v in tiles[1:]:
        c = dict(zip(gpu_rules.FIELDS, v))
        assert c["vector_size"] == 1 and c["vthread_x"] == c["vthread_y"] == 1, v
        assert gpu_rules.fits(v, "webgpu"), v


def test_prepare_gives_each_candidate_one_kernel_a_covering_grid_and_named_bindings():
    target = gpu_tune._target("webgpu")
    func = _matmul()
    funcs = {}
    for i, v in enumerate(candidates("webgpu")[:4]):
        sch = tuned_matmul(database={}, force=v).apply(func, target, False)
        funcs[f"c{i}"] = sch.mod["main"].with_attr("global_symbol", f"c{i}")
    ex = tvm.compile(tvm.IRModule(funcs), target=target)
    src = next(m for m in ex.mod.imports if m.kind == "webgpu").inspect_source()
    wgsl = gpu_tune._wgsl_functions(src)
    assert set(wgsl) == {f"{f}_kernel" for f in funcs}
    for i, (f, pf) in enumerate(funcs.items()):
        text = wgsl[f"{f}_kernel"]
        assert re.findall(r"\bfn (\w+)\(", text) == [f"{f}_kernel"]  # standalone: one kernel
        names = re.findall(r"@binding\(\d+\)\s*var<[^>]*>\s*(\w+)", text)
        assert sorted(names) == sorted([f"{b.name}_ptr" for b in pf.params] + ["podArgs"]), names
        gx, gy = gpu_tune._grid(pf)
        tile = candidates("webgpu")[i]
        if tile is not None:  # rows x columns of one block
            c = dict(zip(gpu_rules.FIELDS, tile))
            assert gx * c["block_size_x"] * c["micro_size_x"] >= 256 and gy * c["block_size_y"] * c["micro_size_y"] >= 192
        assert gx * gy >= 2


def test_choose_keeps_dlights_webgpu_default_when_it_was_fastest():
    fast = "8x16x1x1x4x4x16x1"
    assert choose({"times_ms": {DEFAULT: 1.0, fast: 2.0}}, "webgpu") is None
    assert config_name(choose({"times_ms": {DEFAULT: 3.0, fast: 2.0}}, "webgpu")) == fast
    # a CUDA tile WebGPU cannot take as it is (vector loads, virtual threads) is never picked
    assert choose({"times_ms": {DEFAULT: 3.0, "8x16x1x1x4x4x16x2": 1.0, "8x8x2x2x4x4x16x1": 1.0}}, "webgpu") is None
    assert choose({"times_ms": {DEFAULT: 3.0, fast: 2.0}}, "cuda") == tuple(int(x) for x in fast.split("x"))


def test_webgpu_database_tile_reaches_the_webgpu_build(tmp_path, monkeypatch):
    func = _matmul()
    db = {workload_key(func): {"times_ms": {DEFAULT: 2.0, "16x8x1x1x4x8x16x1": 1.0}}}
    path = tmp_path / "webgpu.json"
    path.write_text(json.dumps({"workloads": db}))
    monkeypatch.setitem(gpu_rules.DATABASES, "webgpu", path)
    target = gpu_tune._target("webgpu")
    script = tuned_matmul().apply(func, target, False).mod["main"].script()
    assert 'T.thread_binding(16, thread="threadIdx.x")' in script and 'thread_binding(8, thread="threadIdx.y")' in script
    monkeypatch.setitem(gpu_rules.DATABASES, "webgpu", tmp_path / "absent.json")
    script = tuned_matmul().apply(func, target, False).mod["main"].script()  # dlight's WebGPU default: 8 x 8
    assert 'thread_binding(8, thread="threadIdx.x")' in script and 'thread_binding(8, thread="threadIdx.y")' in script


def test_apply_writes_the_webgpu_database_of_the_results_kind(tmp_path):
    res = {"card": "NVIDIA H200", "kind": "webgpu", "adapter": {"vendor": "nvidia"}, "model": "sd15-random",
           "versions": {"apache-tvm": "0.27.0.post1"},
           "workloads": [{"key": "00ab", "stage": "unet", "kernel": "matmul9",
                          "times_ms": {DEFAULT: 2.0, "8x16x1x1x4x4x16x1": 1.5}, "disagree": {"16x16x1x1x4x4x8x1": 0.1}}]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    dest = gpu_tune.apply(tmp_path / "r.json", tmp_path / "db.json", log=lambda m: None)
    data = json.loads(dest.read_text())
    assert data["kind"] == "webgpu" and data["adapter"] == {"vendor": "nvidia"}
    entry = data["workloads"]["00ab"]
    assert config_name(choose(entry, "webgpu")) == "8x16x1x1x4x4x16x1"
    assert "16x16x1x1x4x4x8x1" in entry["disagree"] and "16x16x1x1x4x4x8x1" not in entry["times_ms"]


@pytest.mark.parametrize("kind", ["cuda", "webgpu"])
def test_database_paths_are_part_of_the_build_identity(kind):
    from sdparity.identity import module_files

    assert gpu_rules.DATABASES[kind] in module_files("sdparity.compile")
    data = json.loads(gpu_rules.DATABASES[kind].read_text())
    assert data["workloads"] and data["card"] and data.get("kind", "cuda") == kind


def test_committed_webgpu_database_is_consistent():
    """Every kernel has dlight's default timed, the pick is a tile WebGPU takes as it is, no
    slower than the default, and never one that disagreed with the default in Dawn."""
    db = gpu_rules.load_database(kind="webgpu")
    assert db, f"{gpu_rules.DATABASES['webgpu']} is missing: WebGPU builds would be untuned"
    for key, entry in db.items():
        assert DEFAULT in entry["times_ms"], key
        pick = choose(entry, "webgpu")
        if pick is None:
            continue
        assert gpu_rules.webgpu_variant(pick) == pick and config_name(pick) not in entry.get("disagree", {}), key
        assert entry["times_ms"][config_name(pick)] <= entry["times_ms"][DEFAULT], key
