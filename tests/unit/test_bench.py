"""`sdparity bench` on the tiny model: output structure and sane numbers (not timings)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSITIVE = ("run_s", "ref_s", "ratio", "first_run_s", "build_s", "rss_peak_mib")
NONNEGATIVE = ("rss_delta_mib", "run_rss_delta_mib", "ref_rss_delta_mib")


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_records(tiny, cache, llvm):
    from sdparity.commands.bench import SCHEMA, run_bench
    from sdparity.registry import all_stages

    stages = [all_stages()[n] for n in ("clip", "scheduler_dpm", "image_to_rgba")]
    data = run_bench(tiny, stages, [llvm], cache, repeat=2, log=lambda *a: None)
    assert data["schema"] == SCHEMA
    assert data["model"]["name"] == "tiny" and data["repeat"] == 2
    json.loads(json.dumps(data, default=str))  # serializable
    got = {(r["stage"], r["function"]) for r in data["results"]}
    assert got == {("clip", "clip"), ("image_to_rgba", "image_to_rgba")} | {
        ("scheduler_dpm", f) for f in all_stages()["scheduler_dpm"].functions}  # every function, timed
    for r in data["results"]:
        assert r["error"] is None, r
        assert r["backend"] == "llvm" and r["device_class"] == "cpu"
        for k in POSITIVE:
            assert _finite_positive(r[k]), (k, r[k])
        for k in NONNEGATIVE:
            assert math.isfinite(r[k]) and r[k] >= 0, (k, r[k])
        assert len(r["run_s_all"]) == len(r["ref_s_all"]) == 2
        assert all(_finite_positive(x) for x in r["run_s_all"] + r["ref_s_all"])
        assert r["ratio"] == round(r["run_s"] / r["ref_s"], 3)
        assert r["device_mem_peak_mib"] is None  # no GPU memory on a CPU backend
        assert isinstance(r["build_cached"], bool)


def test_bench_cli_writes_json_and_merges(tmp_path):
    from sdparity.reports.report import SCHEMA as REPORT_SCHEMA

    out = tmp_path / "bench.json"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"schema": REPORT_SCHEMA, "results": []}))
    r = subprocess.run([sys.executable, "-m", "sdparity", "bench", "--stages", "concat_embeddings",
                        "--repeat", "1", "--json", str(out), "--merge", str(report), "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio" in r.stdout and "concat_embeddings" in r.stdout
    data = json.loads(out.read_text())
    assert [x["stage"] for x in data["results"]] == ["concat_embeddings"]
    assert not list(tmp_path.glob(".bench.json.*"))  # atomic write left no temp file
    merged = json.loads(report.read_text())
    assert merged["performance"]["cpu"]["results"][0]["stage"] == "concat_embeddings"
    assert "gpu" not in merged["performance"]


def test_bench_rejects_bad_input():
    r = subprocess.run([sys.executable, "-m", "sdparity", "bench", "--stages", "nope"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and "unknown stage" in r.stderr


@pytest.mark.parametrize("threads", ["1", None])
def test_bench_threads_are_set_before_tvm_starts_its_pool(threads):
    """TVM's thread pool reads TVM_NUM_THREADS once, when first asked; the bench's record of
    the thread count must not be what pins it at TVM's default (1 on a 2-core machine). The
    pool must not pin the process to one core either (TVM_BIND_THREADS): PyTorch's OpenMP
    threads, started later, would inherit it and share that core."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "TVM_BIND_THREADS")}
    if threads:
        env["TVM_NUM_THREADS"] = threads
    code = ("import json, os; from sdparity.commands.bench import _threads; t = _threads(); "
            "t['cpus_after'] = len(os.sched_getaffinity(0)); print(json.dumps(t))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    t = json.loads(p.stdout.strip().splitlines()[-1])
    want = int(threads) if threads else os.cpu_count()
    assert t["tvm_runtime"] == want == int(t["TVM_NUM_THREADS"]), t
    assert t["cpus_allowed"] == t["cpus_after"] == len(os.sched_getaffinity(0)), t


def _parallel_loops(mod) -> dict[str, int]:
    """PrimFunc name -> number of parallel loops, after scheduling (read from TVMScript)."""
    import tvm

    return {gv.name_hint: f.script().count("T.parallel(") for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _matmul_and_add(m: int, k: int, n: int):
    """A Relax module with one matmul (m*k*n multiply-adds) and one exp (m*k elements)."""
    from tvm import relax

    from sdparity.compile.compat import tensor_type

    bb = relax.BlockBuilder()
    a, w = relax.Var("a", tensor_type((m, k), "float32")), relax.Var("w", tensor_type((k, n), "float32"))
    x = relax.Var("x", tensor_type((m, k), "float32"))
    with bb.function("main", [a, w, x]):
        with bb.dataflow():
            mm = bb.emit(relax.op.matmul(a, w))
            ew = bb.emit(relax.op.exp(x))  # elementwise, m*k iterations
            out = bb.emit_output(relax.Tuple([mm, ew]))
        bb.emit_func_output(out)
    return bb.get()


def test_small_kernels_stay_serial(tiny):
    """Waking TVM's pool costs more than a small kernel gains (docs/performance.md, "Threads"):
    the scheduler, concat and RGBA stages (symbolic shapes) and small fixed-size kernels get no
    parallel loop; a contraction of 2^26 multiply-adds or more and an elementwise block of
    2^22 elements or more do."""
    from sdparity.compile.schedule_cpu import PARALLEL_MIN_MACS, PARALLEL_MIN_WORK, host_target, schedule_llvm
    from sdparity.registry import all_stages

    stages = all_stages()
    for name in ("scheduler_dpm", "concat_embeddings", "image_to_rgba"):
        st = stages[name]
        loops = _parallel_loops(schedule_llvm(st.build_ir(tiny, st.default_variant(tiny)).mod, host_target()))
        assert loops and not any(loops.values()), (name, loops)
    assert PARALLEL_MIN_MACS == 1 << 26 and PARALLEL_MIN_WORK == 1 << 22
    big = _parallel_loops(schedule_llvm(_matmul_and_add(4096, 128, 128), host_target()))  # 2^26 MACs, 2^19 exps
    assert sorted(big.values()) == [0, 1], big  # the matmul parallel, the exp not
    assert big[next(n for n in big if "matmul" in n)] == 1, big
    small = _parallel_loops(schedule_llvm(_matmul_and_add(4096, 64, 128), host_target()))  # 2^25 MACs
    assert not any(small.values()), small
    wide = _parallel_loops(schedule_llvm(_matmul_and_add(1 << 15, 128, 8), host_target()))  # 2^22 exps
    assert wide[next(n for n in wide if "exp" in n)] == 1, wide


def test_softmax_exp_is_evaluated_once_per_element():
    """TOPI's softmax reads exp(x - max) twice (row sum, normalization); inlined, glibc's scalar
    expf ran twice per element (softmax was 28% of the full-size CPU UNet). The CPU schedule
    keeps a costly elementwise block with two consumers materialized: one exp in the kernel,
    the same values bit for bit (only where exp's result is kept changes), while a cheap block
    with two consumers is still inlined."""
    import numpy as np
    import tvm
    from tvm import relax

    from sdparity.compile import schedule_cpu
    from sdparity.compile.compat import tensor, tensor_type

    def module(body):
        bb = relax.BlockBuilder()
        x = relax.Var("x", tensor_type((4, 8, 300), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(body(bb, x))
            bb.emit_func_output(out)
        return bb.get()

    def kernels(mod):
        return "\n".join(f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))

    def run(mod):
        vm = relax.VirtualMachine(relax.build(mod, target=schedule_cpu.build_target(mod, target)), tvm.cpu())
        return vm["main"](tensor(x, tvm.cpu())).numpy()

    target = schedule_cpu.host_target()
    x = np.random.default_rng(0).standard_normal((4, 8, 300)).astype("float32")
    softmax = module(lambda bb, v: relax.op.nn.softmax(v, axis=-1))
    scheduled = schedule_cpu.schedule_llvm(softmax, target)
    assert kernels(scheduled).count("T.exp(") == 1
    costly = schedule_cpu._costly
    try:
        schedule_cpu._costly = lambda block: False  # the old rule: inline every elementwise block
        old = schedule_cpu.schedule_llvm(softmax, target)
    finally:
        schedule_cpu._costly = costly
    assert kernels(old).count("T.exp(") == 2
    assert np.array_equal(run(scheduled), run(old))

    from tvm import s_tir  # only exp's block counts as costly, so the others still inline

    with target:
        legal = relax.transform.LegalizeOps()(softmax)
    sch = s_tir.Schedule(next(f for _, f in legal.functions_items() if isinstance(f, tvm.tirx.PrimFunc)))
    blocks = {sch.get(b).name_hint: schedule_cpu._costly(sch.get(b)) for b in sch.get_child_blocks(sch.get_sblock("root"))}
    assert blocks == {"T_softmax_maxelem": False, "T_softmax_exp": True, "T_softmax_expsum": False,
                      "T_softmax_norm": False}, blocks
