"""Op replay (sdparity.check.opreplay): the aten op whose TVM build diverges is named, with a
standalone repro; when every op agrees alone, the Relax pipeline is bisected."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest

from sdparity.check import opreplay
from sdparity.tolerances import op_budget

#: the perturbation of negative test (a), as source: run in this process, and handed to the
#: written repro through its documented REPRO_PRELUDE hook so that the subprocess has the same
#: (broken) TVM. LayerNorm is imported as its own Relax op (R.nn.layer_norm), checked below, and
#: comes early in CLIP (few per-op builds before it in the test's empty cache).
PERTURB_LAYER_NORM = '''
import tvm
from tvm import topi


def _layer_norm_off(bb, call):  # TVM's own lowering, 0.1% too large: ~8000 ulp
    a = call.attrs
    return bb.call_te(lambda x, g, b: topi.nn.layer_norm(x, g, b, axis=a.axes, epsilon=a.epsilon) * 1.001,
                      *call.args, primfunc_name_hint="layer_norm")


tvm.ir.register_op_attr("relax.nn.layer_norm", "FLegalize", _layer_norm_off, level=11)
'''


@contextlib.contextmanager
def perturbed(source: str, op_name: str):
    """Run ``source`` (which overrides ``op_name``'s FLegalize) and restore the stock one after."""
    import tvm

    op = tvm.ir.Op.get(op_name)
    stock = op.get_attr("FLegalize")
    exec(compile(source, "<perturbation>", "exec"), {})
    try:
        yield
    finally:
        op.reset_attr("FLegalize")
        op.set_attr("FLegalize", stock, 10)


def test_judge_rule():
    b = op_budget("llvm")
    one = np.float32(1.0)
    r32, r64 = [np.array([1.0, 2.0], np.float32)], [np.array([1.0, 2.0 + 1e-7])]
    assert opreplay.judge([r32[0]], r32, r64, b)["ok"]  # torch's own float32 result passes
    bad = opreplay.judge([r32[0] * (one + np.float32(1e-4))], r32, r64, b)
    assert not bad["ok"] and bad["ratio"] > 100
    # float32 overflow: the float64 result rounded to float32 is inf, so inf is right
    inf = [np.array([np.inf], np.float32)]
    assert opreplay.judge(inf, inf, [np.array([4e38])], b)["ok"]
    assert not opreplay.judge([np.array([np.nan], np.float32)], inf, [np.array([4e38])], b)["ok"]
    ints = [np.array([1, 2], np.int64)]
    assert opreplay.judge(ints, ints, ints, b)["ok"]
    assert opreplay.judge([np.array([1, 3], np.int64)], ints, ints, b)["mismatches"] == 1
    # within budget: the floor times the ratio, plus a few ulp of the largest value
    allowed = b.allowed(1e-7, 2.0)
    assert allowed == pytest.approx(b.floor_ratio * 1e-7 + b.ulps * 2.0 ** -22)


def test_trace_is_the_program(tiny):
    """The fx replay of the decomposed CLIP program gives the program's own output, and every
    call carries its module path and a float64 result."""
    import torch

    from sdparity.registry import get_stage

    stage = get_stage("clip")
    case = stage.cases(tiny, {}, 0)[0]
    ep = opreplay.export_program(stage, tiny, {})
    calls = []
    out = opreplay.trace(ep, case.inputs, lambda c: calls.append(c) and False)
    with torch.no_grad():
        expect = ep.module()(torch.from_numpy(case.inputs[0]))
    np.testing.assert_array_equal(out[0].numpy(), expect.numpy())
    assert [c.position for c in calls] == list(range(len(calls)))
    ln = [c for c in calls if c.op == "aten.native_layer_norm.default"]
    assert ln and all(c.module.startswith("text_encoder.") and c.module_type == "LayerNorm" for c in ln)
    assert ln[0].attributes()["eps"] == "1e-05" and ln[0].weights == [False, True, True]
    assert all(len(c.out64) == len(c.out32) for c in calls)
    assert ln[0].outputs == (0,)  # only the normalized value is used, not mean/rstd


def _made_up_call(position: int, target, tensors: list):
    """An OpCall as the trace makes one, with torch's float32 and float64 results."""
    call = opreplay.OpCall(position=position, node=f"n{position}", op=f"made_up_{position}", target=target,
                           args=tuple(opreplay.Slot(i) for i in range(len(tensors))), kwargs={},
                           tensors=tensors, weights=[False] * len(tensors), outputs=None)
    call.out32 = opreplay.run_op(call, tensors)
    call.out64 = opreplay._rounded(opreplay.run_op(call, tensors, "float64"), call.out32)
    return call


def test_modules_imported_together_are_the_modules_imported_alone(tiny, llvm, tmp_path):
    """``ops_ir`` (``frontend.export_many``) imports many calls as one program and cuts each op's
    function out of it; each must be the function ``op_ir`` makes of the call alone: same
    structure, same printed text, no weights. Checked on one call of every op kind of the tiny
    CLIP program (LayerNorm's multi-output call with its used output, views, comparisons,
    constants among them) and on a made-up call whose input tensor is another call's too. (Every distinct call of the tiny
    CLIP, UNet and VAE programs, 404, compared the same way when ops_ir was written; NOTES.md,
    nineteenth session.) A program the cut could not reproduce exactly is refused, and op
    replay builds its calls one by one instead: here an input that is a view (torch.export
    then records a range for a symbol of its base, which the importer makes an attribute of
    the function, ``tir_var_lower_bound``)."""
    import torch
    import tvm

    from sdparity.cache import BuildCache
    from sdparity.errors import SdparityError
    from sdparity.registry import get_stage

    stage = get_stage("clip")
    kinds: dict = {}
    opreplay.trace(opreplay.export_program(stage, tiny, {}), stage.cases(tiny, {}, 0)[0].inputs,
                   lambda c: kinds.setdefault(c.op, c) and False)
    assert {"aten.native_layer_norm.default", "aten.view.default", "aten.where.self"} <= set(kinds)
    view = torch.linspace(-1.0, 1.0, 6).reshape(2, 3)
    x = view.clone()
    calls = list(kinds.values()) + [_made_up_call(900, torch.ops.aten.sigmoid.default, [x]),
                                    _made_up_call(901, torch.ops.aten.exp.default, [x])]  # x again
    names = [f"op{i}" for i in range(len(calls))]
    together = opreplay.ops_ir(calls, names)
    for call, name in zip(calls, names):
        alone = opreplay.op_ir(call)
        mine, theirs = together.mod[name], alone.mod[opreplay.FUNCTION].with_attr("global_symbol", name)
        tvm.ir.assert_structural_equal(mine, theirs)
        assert mine.script() == theirs.script(), call.op
        assert together.params[name] == alone.params[opreplay.FUNCTION] == [], call.op

    of_view = _made_up_call(902, torch.ops.aten.sigmoid.default, [view])
    assert "tir_var_lower_bound" in opreplay.op_ir(of_view).mod[opreplay.FUNCTION].attrs
    # the own-kernel check's modules (named inputs: q, k, v) the same way, two shapes in one import
    from sdparity.compile.frontend import export_many, export_to_relax
    from sdparity.compile.own_kernels import OWN_KERNELS

    items = []
    for q in ((2, 64, 8), (4, 16, 4)):
        module, shapes = OWN_KERNELS["attention"].torch_module({"q": q, "kt": (q[0], q[2], 77), "v": (q[0], 77, q[2])})
        items.append((module, tuple(torch.randn(*s) for s in shapes)))
    both = export_many(items, ["k0", "k1"])
    for (module, inputs), name in zip(items, ["k0", "k1"]):
        alone = export_to_relax(module, inputs, name).mod[name]
        tvm.ir.assert_structural_equal(both.mod[name], alone)
        assert both.mod[name].script() == alone.script() and [str(p.name) for p in alone.params] == ["q", "k", "v"]

    odd = [of_view, calls[-1]]
    with pytest.raises(SdparityError, match="not a plain program .tir_var_lower_bound"):
        opreplay.ops_ir(odd, ["a", "b"])
    with llvm.session() as runner:
        eng = opreplay.OpReplay(llvm, runner, BuildCache(tmp_path))
        eng.prepare(odd)
        assert eng.built == 0 and not eng.artifacts  # the batch was refused before any build
        assert all(eng.check(c)["ok"] for c in odd) and eng.built == 2  # each alone, and right


def test_perturbed_lowering_is_localized_to_its_aten_op(tiny, llvm, tmp_path, monkeypatch):
    """Negative test (a): relax.nn.layer_norm's lowering made 0.1% wrong through TVM's
    op-attribute registry. The tiny CLIP check fails; kernel replay cannot see it (its trusted
    build uses the same lowering); op replay names aten.native_layer_norm of the first encoder
    layer (ops before it agree) and writes a repro that, run alone with the same perturbation,
    fails, and without it passes."""
    from sdparity.cache import BuildCache
    from sdparity.registry import get_stage
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    stage = get_stage("clip")
    assert "R.nn.layer_norm(" in stage.build_ir(tiny, {}).mod.script()  # not decomposed away before import
    monkeypatch.setenv("SDPARITY_LOCALIZE_OUT", str(tmp_path / "loc"))
    report = Report(tiny)
    with perturbed(PERTURB_LAYER_NORM, "relax.nn.layer_norm"):
        run_checks([stage], [llvm], tiny, report, BuildCache(tmp_path / "cache"), log=Progress(quiet=True),
                   localize=True)
    failed = [r for r in report.results if r["verdict"] == "fail"]
    assert failed, [r["message"] for r in report.results]
    loc = failed[0]["localization"]
    assert loc["first"] is None and "upstream" in loc["summary"]  # kernel replay: all kernels agree
    op = loc["op"]
    assert op["status"] == "diverged", op["summary"]
    first = op["first"]
    assert first["op"] == "aten.native_layer_norm.default" and first["module_type"] == "LayerNorm"
    assert first["module"].endswith("layers.0.layer_norm1"), first["module"]
    assert first["ratio"] > 100 and any("layer_norm" in k for k in first["kernels"])
    assert first["repro_reproduces"] is False  # alone, without the perturbation: within budget
    prelude = tmp_path / "perturb.py"
    prelude.write_text(PERTURB_LAYER_NORM)
    run = opreplay.run_repro(first["repro"], env={"REPRO_PRELUDE": str(prelude)})
    assert run["returncode"] == 1 and "DIVERGES" in run["output"], run["output"]


def test_repro_script_is_standalone(tiny, tmp_path):
    """A written repro imports no sdparity module and runs from its own folder."""
    from sdparity.registry import get_stage

    stage = get_stage("clip")
    ep = opreplay.export_program(stage, tiny, {})
    calls = []
    opreplay.trace(ep, stage.cases(tiny, {}, 0)[0].inputs,
                   lambda c: c.op == "aten.native_layer_norm.default" and not calls.append(c))
    call = calls[0]
    fake = {"max_abs": 0.0, "floor": 0.0, "ratio": 0.0, "allowed": 0.0}
    path = opreplay.write_repro(call, fake, op_budget("llvm"), tmp_path / "r", "llvm")
    assert not re.search(r"^\s*(import|from)\s+sdparity", path.read_text(), re.M)
    assert path.with_suffix(".json").is_file() and path.with_suffix(".npz").is_file()
    run = opreplay.run_repro(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    assert run["returncode"] == 0 and "within budget" in run["output"], run["output"]


def test_repro_template_is_a_module_with_the_replay_budget():
    """The repro template is a real module (sdparity/check/op_repro.py); its bound is the op-replay
    budget of sdparity.tolerances, for every backend's budget."""
    import importlib.util

    from sdparity.tolerances import OP_REPLAY

    spec = importlib.util.spec_from_file_location("op_repro", opreplay.REPRO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines, runs nothing (main only under __main__)
    for budget in OP_REPLAY.values():
        for floor, scale in ((0.0, 1.0), (1e-7, 3.5), (2e-5, 1e3)):
            assert mod.allowed(floor, scale, budget.floor_ratio, budget.ulps) == budget.allowed(floor, scale)


def test_all_ops_agree_then_the_pipeline_is_bisected(tiny, llvm, cache, tmp_path):
    """CLIP built without its last layer (stage fault): every op agrees alone, so the pipeline is
    bisected, and the failure is already there before fusion and schedules: the graph itself."""
    from sdparity.registry import get_stage

    stage = get_stage("clip").with_fault("truncate_layers")
    case = stage.cases(tiny, {}, 0)[0]
    art, _, _ = llvm.build_cached(lambda: stage.build_ir(tiny, {}), stage.build_key(tiny, {}), cache,
                                  log=lambda *a: None)
    with llvm.session() as runner:
        rec = opreplay.localize_ops(stage, tiny, {}, case, llvm, runner, cache, tmp_path, artifact=art)
    assert rec["status"] == "clean" and rec["first"] is None
    # the calls were built in batches (ops_ir: one import, one build a batch), not one by one
    assert rec["built"] + rec["cached"] <= -(-rec["signatures"] // opreplay.BATCH) + 1 < rec["signatures"], rec
    assert rec["pipeline"]["culprit"] == "legalized", rec["pipeline"]
    assert "graph" in rec["pipeline"]["verdict"] and "every aten call" not in rec["pipeline"]["verdict"]


def test_pipeline_bisect_names_the_schedule_step(tiny, llvm, tmp_path):
    """A build whose scheduled kernel is wrong (one kernel scaled after fusion) passes unfused and
    fused-unscheduled: the bisect names the backend's own build step."""
    from sdparity.backends.native import LIB, PARAMS, save_params
    from sdparity.registry import get_stage
    from tests.unit.test_localize import GELU, build_broken

    stage = get_stage("clip")
    ir = stage.build_ir(tiny, {})
    build_broken(ir.mod, GELU).export_library(str(tmp_path / LIB))
    save_params(ir.params, tmp_path / PARAMS)
    case = stage.cases(tiny, {}, 0)[0]
    with llvm.session() as runner:
        rec = opreplay.bisect_pipeline(stage, tiny, {}, case, llvm, tmp_path, runner)
    assert [s["step"] for s in rec["steps"]] == ["legalized", "fused", "backend"]
    assert rec["culprit"] == "backend" and rec["steps"][0]["passed"] and rec["steps"][1]["passed"]


def test_cli_localize_clean_clip(tiny, cache, tmp_path, capsys):
    """`sdparity localize clip`: every aten call of the tiny CLIP agrees with torch alone on llvm
    (the pinned TVM); exit 0, the record beside."""
    import json

    from sdparity.cli import main

    rc = main(["localize", "clip", "--no-bisect", "--out", str(tmp_path), "-q"])
    assert rc == 0 and "agree with torch in isolation" in capsys.readouterr().out
    rec = json.loads((tmp_path / "clip-llvm-cat" / "localize.json").read_text())
    assert rec["status"] == "clean" and not rec["errors"] and rec["first"] is None
    assert rec["calls"] > 100 and 30 < rec["signatures"] < rec["calls"]


def test_html_shows_the_op_localization(tmp_path):
    """The report page shows op replay's answer for a localized failing check."""
    from sdparity.reports.html import render

    first = {"op": "aten.native_layer_norm.default", "position": 9, "node": "native_layer_norm",
             "module": "text_encoder.encoder.layers.0.layer_norm1", "shapes": [[1, 77, 32], [32], [32]],
             "max_abs": 3.1e-3, "floor": 2.4e-7, "ratio": 12900.0, "kernels": ["layer_norm"],
             "repro": "/x/repro_native_layer_norm_default_9.py", "repro_reproduces": True}
    loc = {"status": "clean", "summary": "all kernel calls agree", "first": None, "diverged": [],
           "op": {"status": "diverged", "summary": "first diverging op ...", "calls": 159, "first": first}}
    rec = {"stage": "clip", "backend": "llvm", "case": "cat", "output": "hidden", "verdict": "fail",
           "localization": loc}
    page = render({"schema": "sdparity.report/1", "results": [rec]}, tmp_path)
    for text in ("aten.native_layer_norm.default", "9 of 159", "layers.0.layer_norm1", "1.29e+04",
                 "repro_native_layer_norm_default_9.py", "reproduces alone: yes"):
        assert text in page, text
