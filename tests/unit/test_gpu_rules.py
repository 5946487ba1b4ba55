"""The GPU schedule rules of sdparity.compile.gpu_rules, without a GPU: which kernels each rule
takes, which tile the tuning database gives each target, and that the database is part of the
build's identity. That the tuned tiles compute the right numbers is checked on the card: by the
tuner (every candidate's output against the default's) and by the CUDA tier's parity checks
(docs/performance.md). The exact row reduction runs on WebGPU in CI: test_webgpu_backend.py's
"masked" case (a row with every score -inf) goes through it."""

from __future__ import annotations

import json
import re

import pytest
import tvm
from tvm import te

from sdparity.compile import gpu_rules
from sdparity.compile.gpu_rules import (CANDIDATES, FIELDS, choose, config_name, exact_row_reduction,
                                        fits, load_database, tuned_matmul, workload_key)

CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
WEBGPU = tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})


def _matmul(m=256, n=192, k=96):
    a = te.placeholder((m, k), name="a")
    b = te.placeholder((k, n), name="b")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    return te.create_prim_func([a, b, c])


def _row_reduction(reducer):
    """torch's safe-softmax test (max over int8(!(x == -inf))) or the same shape with a sum."""
    x = te.placeholder((8, 300), name="x")
    keep = te.compute((8, 300), lambda i, j: (x[i, j] != tvm.tirx.const(float("-inf"), "float32")).astype("int8"))
    r = te.reduce_axis((0, 300), name="r")
    if reducer == "max":
        y = te.compute((8, 1), lambda i, _: te.max(keep[i, r], axis=r), name="y")
    else:
        y = te.compute((8, 1), lambda i, _: te.sum(x[i, r], axis=r), name="y")
    return te.create_prim_func([x, y])


def _thread_extents(sch) -> dict:
    """{thread tag: extent} of the loops bound to threads, read from the printed schedule."""
    text = sch.mod["main"].script()
    found = re.findall(r'T\.thread_binding\((?:T\.int64\()?(\d+)\)?,\s*thread="([\w.]+)"\)', text)
    assert found, text[:2000]
    return {tag: int(n) for n, tag in found}


def test_exact_row_reduction_takes_max_not_sum():
    """Max has one result whatever order the values meet in; a sum does not, so a rule that
    splits rows across threads must never take one (it would change the numbers)."""
    rule = exact_row_reduction()
    sch = rule.apply(_row_reduction("max"), CUDA, False)
    assert sch is not None
    threads = _thread_extents(sch)
    assert threads == {"blockIdx.x": 8, "threadIdx.x": 64}, threads  # 300 values: 64 threads read <= 5 each
    assert rule.apply(_row_reduction("sum"), CUDA, False) is None
    assert rule.apply(_matmul(), CUDA, False) is None


def test_row_threads_follow_the_row_length():
    """A warp for short rows (attention's 77 keys, a small latent's tokens), the full 256 from
    rows of 4096 (SD 1.5's self-attention at 64x64 latents, the CUDA timings' shape) on, and
    powers of two in between with about ROW_VALUES_PER_THREAD values each."""
    got = {n: gpu_rules.row_threads(n) for n in (1, 77, 256, 257, 1024, 2048, 4096, 10**6)}
    assert got == {1: 32, 77: 32, 256: 32, 257: 64, 1024: 128, 2048: 256, 4096: 256, 10**6: 256}, got
    assert gpu_rules.row_threads(None) == gpu_rules.ROW_THREADS  # a symbolic length


def test_candidates_are_distinct_and_the_first_is_dlights_default():
    assert len(set(CANDIDATES)) == len(CANDIDATES) and all(len(c) == len(FIELDS) for c in CANDIDATES)
    from sdparity.compile.compat import dlight

    default = dlight().gpu.Matmul().get_configs(CUDA)
    assert tuple(getattr(default, f) for f in FIELDS) == CANDIDATES[0]


def test_target_limits():
    big = (16, 16, 2, 2, 4, 4, 16, 4)  # 256 threads; 128 x 128 tiles of K chunk 16: 24 KiB with padding
    assert fits(big, "cuda") and not fits(big, "webgpu")
    assert not fits((32, 16, 1, 1, 4, 4, 8, 4), "webgpu")  # 512 threads
    assert fits((16, 16, 1, 1, 4, 4, 16, 4), "webgpu")
    assert gpu_rules.shared_bytes((8, 16, 1, 1, 4, 4, 16, 2)) == (32 + 64) * 24 * 4


def test_choose_takes_the_fastest_tile_the_target_can_take():
    fast, slow, huge = "16x16x2x2x4x4x16x4", "8x16x1x1x4x4x16x2", "32x64x1x1x4x4x16x4"
    entry = {"times_ms": {slow: 3.0, fast: 1.0, huge: 0.5}}
    assert config_name(choose(entry, "cuda")) == fast  # huge: 2048 threads, over CUDA's limit
    assert choose(entry, "webgpu") is None  # vector loads / virtual threads: no WebGPU tile here
    assert choose({"times_ms": {}}, "cuda") is None


def test_database_tile_is_applied_by_kernel_structure():
    func = _matmul()
    tile = (16, 8, 1, 1, 4, 8, 16, 4)
    db = {workload_key(func): {"times_ms": {config_name(tile): 1.0, config_name(CANDIDATES[0]): 2.0}}}
    tuned = _thread_extents(tuned_matmul(database=db).apply(func, CUDA, False))
    default = _thread_extents(tuned_matmul(database={}).apply(func, CUDA, False))
    assert (tuned["threadIdx.x"], tuned["threadIdx.y"]) == (16, 8)
    assert (default["threadIdx.x"], default["threadIdx.y"]) == (8, 16)
    # the key is the structure: the same computation with other sizes is another kernel
    assert workload_key(_matmul(m=128)) != workload_key(func)
    assert workload_key(_matmul()) == workload_key(func)
    other = _thread_extents(tuned_matmul(database=db).apply(_matmul(m=128), CUDA, False))
    assert (other["threadIdx.x"], other["threadIdx.y"]) == (8, 16)


def test_committed_database_is_consistent():
    """Every kernel of the committed database has times for the default and for what it picks,
    and a candidate the card reported as disagreeing is never picked."""
    db = load_database()
    if not db:
        pytest.fail(f"{gpu_rules.DEFAULT_DATABASE} is missing: the GPU builds would be untuned")
    for key, entry in db.items():
        default = entry.get("default", config_name(CANDIDATES[0]))  # f16 kernels: mma.DEFAULT_CONFIG
        assert default in entry["times_ms"], key
        pick = choose(entry, "cuda")
        name = getattr(pick, "name", None) or config_name(pick)
        assert pick is not None and name not in entry.get("disagree", {}), key
        assert entry["times_ms"][name] <= entry["times_ms"][default], key


def test_unreadable_database_is_one_clear_error(tmp_path):
    from sdparity.errors import SdparityError

    bad = tmp_path / "db.json"
    bad.write_text("{not json")
    with pytest.raises(SdparityError, match="tuning database .* unreadable"):
        load_database(bad)
    assert load_database(tmp_path / "absent.json") == {}


def test_database_is_part_of_the_build_identity():
    from sdparity.identity import module_files

    assert gpu_rules.DEFAULT_DATABASE in module_files("sdparity.compile")
    data = json.loads(gpu_rules.DEFAULT_DATABASE.read_text())
    assert data["workloads"] and data["card"]


def _group_norm_kernel(target):
    """sdparity's GroupNorm legalization for this target, fused with a SiLU as in the VAE."""
    from tvm.script import relax as R

    from sdparity.compile.schedule import fused_for_gpu

    @tvm.script.ir_module
    class GN:
        @R.function
        def main(x: R.Tensor((1, 64, 16, 16), "float32"), g: R.Tensor((64,), "float32"),
                 b: R.Tensor((64,), "float32")):
            with R.dataflow():
                y = R.nn.group_norm(x, g, b, num_groups=32, channel_axis=1, axes=[2, 3])
                z = R.multiply(y, R.sigmoid(y))
                R.output(z)
            return z

    mod = fused_for_gpu(GN, target)
    return [f for gv, f in mod.functions_items() if "group_norm" in gv.name_hint][0]


def test_group_norm_rows_takes_only_the_float64_statistics():
    """The float64 sums may be reordered (their rounding is far below the output's float32
    rounding); the float32 WebGPU variant's may not, so the rule must leave it alone."""
    rule = gpu_rules.group_norm_rows()
    sch = rule.apply(_group_norm_kernel(CUDA), CUDA, False)
    assert sch is not None
    text = sch.mod["main"].script()
    blocks = re.findall(r'T\.sblock\("(\w+)"', text)
    assert blocks == ["root", "gn_row_sum", "gn_sum", "gn_row_sumsq", "gn_sumsq", blocks[-1]], blocks
    threads = _thread_extents(sch)
    assert threads["threadIdx.x"] in (64, 256)
    lib = tvm.compile(tvm.IRModule({"k": sch.mod["main"].with_attr("global_symbol", "k")}), target=CUDA)
    assert lib is not None  # lowers and generates CUDA (nvcc runs where the kernels are loaded)
    assert rule.apply(_group_norm_kernel(WEBGPU), WEBGPU, False) is None


def test_float16_matmuls_for_cuda_go_to_tensor_cores():
    """f16 mode (compile/mma.py): a float16 matmul with float32 accumulation is scheduled on
    tensor cores (ldmatrix + mma.sync) for each layout of the operands in global memory (K
    contiguous: vector copies; B with its rows contiguous, as attention's V, or A, as the
    im2col of an NCHW image: stored transposed, loaded by the "trans" ldmatrix), and builds through ``build_module``: each of the three warp buffers lowered to
    registers (A 4 fragments x 8 halves, B 4 x 8, the accumulator 16 x 8 floats a thread).
    TVM's default pipeline instead leaves A's and B's warp buffers as per-thread arrays of the
    whole warp's 1024 halves (known issue tvm_lower_warp_memory_first_only: wrong numbers, no
    error) or fails (tvm_cse_hides_warp_index). The tuner's choice of an mma
    tile is read back from a database. In a subprocess: a tensorize regression is a crash
    (known issue tvm_ffi_0115_dtype_json_segfault), not an exception. That the kernels compute
    the right numbers is checked on the card (docs/performance.md, "f16 mode")."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import re, tvm
from tvm import te
from sdparity.compile.gpu_rules import tuned_matmul, workload_key
from sdparity.compile.mma import CANDIDATES, DEFAULT_CONFIG, MARK
from sdparity.compile.schedule import build_module
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
def matmul(layout):
    a = te.placeholder((256, 256), "float16", name="a")
    b = te.placeholder((256, 256), "float16", name="b")
    r = te.reduce_axis((0, 256), name="r")
    ai = (lambda i: a[r, i]) if "A rows" in layout else (lambda i: a[i, r])
    bj = (lambda j: b[r, j]) if "B rows" in layout else (lambda j: b[j, r])
    f = lambda i, j: te.sum(ai(i).astype("float32") * bj(j).astype("float32"), axis=r)
    return te.create_prim_func([a, b, te.compute((256, 256), f, name="c")])
for rows in ("K", "B rows", "A rows"):
    func = matmul(rows)
    sch = tuned_matmul(database={}).apply(func, target, False)
    assert MARK in sch.mod["main"].body.block.annotations, "not the tensor-core rule"
    kernel = tvm.IRModule({"k": sch.mod["main"].with_attr("global_symbol", "k")})
    src = "".join(m.inspect_source("cuda") for m in build_module(kernel, target).mod.imports if m.kind == "cuda")
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in src and "ldmatrix.sync.aligned" in src
    warp = {n: int(k) for n, k in re.findall(r"(\\w+)_warp_ptr\\[(\\d+)\\]", src)}
    assert sorted(warp.values()) == [32, 32, 128], warp
    try:  # TVM's own pipeline: an error, or (worse) warp buffers left as per-thread arrays (one
        # layout is enough to see TVM fix it; each CUDA compile is ~5 s)
        if rows == "K":
            src = "".join(m.inspect_source("cuda") for m in tvm.compile(kernel, target=target).mod.imports)
            warp = sorted(int(k) for k in re.findall(r"_warp_ptr\\[(\\d+)\\]", src))
            assert warp != [32, 32, 128], "TVM's pipeline lowers the warp buffers now: drop build_module's workaround"
    except tvm.error.TVMError:
        pass
    other = CANDIDATES[3]
    db = {workload_key(func): {"times_ms": {DEFAULT_CONFIG.name: 2.0, other.name: 1.0}}}
    chosen = tuned_matmul(database=db).apply(func, target, False)
    assert chosen.mod["main"].body.block.annotations[MARK] == other.name
    print("tensor cores:", rows)
"""
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    assert p.stdout.splitlines() == ["tensor cores: K", "tensor cores: B rows", "tensor cores: A rows"], p.stdout


def test_tensor_core_tiles_are_candidates_of_float16_kernels_only():
    from sdparity.compile import mma

    names = [c.name for c in mma.CANDIDATES]
    assert len(set(names)) == len(names) and mma.CANDIDATES[0] == mma.DEFAULT_CONFIG
    assert all(mma.MmaConfig.parse(n) == c for n, c in zip(names, mma.CANDIDATES))
    f16 = te.create_prim_func(_f16_matmul())
    assert gpu_rules.candidates("cuda", f16) == list(mma.CANDIDATES)
    assert gpu_rules.candidates("cuda", _matmul()) == gpu_rules.candidates("cuda")  # float32: CUDA-core tiles
    entry = {"times_ms": {mma.CANDIDATES[2].name: 1.0, mma.DEFAULT_CONFIG.name: 2.0}}
    assert choose(entry, "cuda") == mma.CANDIDATES[2]
    assert choose(entry, "webgpu") is None  # tensor-core tiles are CUDA's


def _f16_matmul():
    a = te.placeholder((128, 64), "float16", name="a")
    b = te.placeholder((64, 96), "float16", name="b")
    r = te.reduce_axis((0, 64), name="r")
    return [a, b, te.compute((128, 96), lambda i, j: te.sum(a[i, r].astype("float32") * b[r, j].astype("float32"),
                                                          axis=r), name="c")]


def _winograd_gemm(p, k=128, c=128):
    """M[e, k, p] = sum_c U[e, k, c] V[e, c, p]: the 16 GEMMs of compile/winograd.py, p the tiles."""
    u = te.placeholder((16, k, c), name="u")
    v = te.placeholder((16, c, p), name="v")
    r = te.reduce_axis((0, c), name="r")
    m = te.compute((16, k, p), lambda e, i, j: te.sum(u[e, i, r] * v[e, r, j], axis=r), name="m")
    return te.create_prim_func([u, v, m])


@pytest.mark.parametrize("target", [CUDA, WEBGPU], ids=["cuda", "webgpu"])
def test_a_grid_over_65535_blocks_on_y_takes_a_tile_that_launches(target):
    """SDXL's VAE at 1024x1024: 16 Winograd GEMMs of 262144 rows. dlight's own tile asks for
    65536 blocks on y (CUDA: CUDA_ERROR_INVALID_VALUE on the lent H100; WebGPU's per-dimension
    limit is the same); the rule takes the first candidate whose grid fits. Every tile adds each
    output's terms in the same order, so the numbers cannot change; a kernel that fits keeps its
    tile."""
    func = _winograd_gemm(262144)
    from sdparity.compile.compat import dlight

    plain = dlight().gpu.Matmul().apply(func, target, False)
    assert _thread_extents(plain)["blockIdx.y"] > gpu_rules.MAX_GRID_YZ
    with target:
        fixed = tuned_matmul(database={}).apply(func, target, False)
    grid = _thread_extents(fixed)
    assert grid["blockIdx.y"] <= gpu_rules.MAX_GRID_YZ and grid.get("blockIdx.z", 1) <= gpu_rules.MAX_GRID_YZ
    small = _winograd_gemm(65536)  # SD 1.5's VAE at 512x512: dlight's tile as it was
    with target:
        same = tuned_matmul(database={}).apply(small, target, False)
    assert _thread_extents(same) == _thread_extents(dlight().gpu.Matmul().apply(small, target, False))


def test_frozen_import_frames_are_named_for_their_modules():
    """compat.name_frozen_import_frames: inspect finds the import machinery's frames' module in
    its table (the module they are), not by scanning sys.modules for each (TVMScript parsing
    inside an import: 40 -> 5 s for TVM's CUDA tensor intrinsics, NOTES.md)."""
    import importlib._bootstrap
    import importlib._bootstrap_external
    import inspect

    from sdparity.compile.compat import name_frozen_import_frames

    name_frozen_import_frames()
    for module in (importlib._bootstrap, importlib._bootstrap_external):
        frozen = f"<frozen {module.__name__}>"
        # the file name the frames of its functions carry
        assert {f.__code__.co_filename for f in vars(module).values() if inspect.isfunction(f)} == {frozen}
        assert inspect.modulesbyfile[frozen] == module.__name__
        assert inspect.getmodule(None, frozen) is module
