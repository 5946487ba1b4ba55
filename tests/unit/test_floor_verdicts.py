"""Negative tests that perturb TVM itself: one Relax op's legalization is replaced through
TVM's op-attribute registry by a subtly wrong computation (the kind of change a lowering or
fast-math regression makes). Each perturbation is chosen so that the absolute tolerance still
passes it, and the calibrated err/floor budget (sdparity/calibration.json) must fail it, on
the stage that uses the op; the clean build of the same stage and shapes must pass both.

The registry change is undone after each test (``perturbed``: the previous FLegalize is put
back), and perturbed builds go to a temporary build cache, never the shared one.
"""

from __future__ import annotations

import math
import re

import pytest

tvm = pytest.importorskip("tvm")
from tvm import te, tirx, topi  # noqa: E402

from sdparity.cache import BuildCache  # noqa: E402
from sdparity.reports.report import Report  # noqa: E402
from sdparity.runner import Mode, Progress, run_checks  # noqa: E402
from tests.perturb import gelu_tanh, op_attr_replaced  # noqa: E402,F401

LOG2E = 1.0 / math.log(2.0)


def perturbed(op_name: str, fn):
    """Replace ``op_name``'s FLegalize by ``fn`` for the duration; restore the previous one."""
    return op_attr_replaced(op_name, "FLegalize", fn)


def _exp_poly(x, degree: int, round_k: bool = True):
    """A fast-math exp: exp(x) = 2^k * p(r), r = x - k ln2, p the Taylor polynomial of
    ``degree``. k = round(x / ln2) puts r in [-ln2/2, ln2/2] (relative error up to
    |r|^(d+1)/(d+1)!: 4.2e-5 for degree 4); the bug ``round_k=False`` takes k = floor(x / ln2),
    r in [0, ln2): the same polynomial over twice the interval (1.5e-5 for degree 6)."""
    f32 = "float32"
    x = tirx.max(x, tirx.const(-87.0, f32))  # exp(-87) is ~0 in float32 already
    k = tirx.floor(x * tirx.const(LOG2E, f32) + tirx.const(0.5 if round_k else 0.0, f32))
    r = x - k * tirx.const(math.log(2.0), f32)
    p = tirx.const(1.0 / math.factorial(degree), f32)
    for i in range(degree - 1, -1, -1):
        p = p * r + tirx.const(1.0 / math.factorial(i), f32)
    # 2^k from its bits (exact for k >= -126: x >= -87 above): TVM prints tirx.ldexp for WebGPU as
    # `ldexpf`, which WGSL does not have (known issue tvm_webgpu_ldexp_printed_as_ldexpf)
    return p * tirx.reinterpret(f32, (k.astype("int32") + tirx.const(127, "int32")) * tirx.const(1 << 23, "int32"))


# ---- the perturbations: fn(bb, call) -> the lowered call ----------------------------------
def sigmoid_poly_exp(degree: int):
    """sigmoid(x) = 1 / (1 + exp(-x)) with a fast-math polynomial exp."""
    def legalize(bb, call):
        one = tirx.const(1.0, "float32")
        return bb.call_te(lambda x: te.compute(x.shape, lambda *i: one / (one + _exp_poly(-x(*i), degree))),
                          call.args[0], primfunc_name_hint="sigmoid")
    return legalize


def softmax_poly_exp(degree: int, round_k: bool = True):
    """softmax with max-subtraction and a fast-math polynomial exp."""
    def legalize(bb, call):
        axis = int(call.attrs.axis)

        def f(x):
            ax = axis % len(x.shape)
            m = topi.max(x, axis=ax, keepdims=True)
            e = te.compute(x.shape, lambda *i: _exp_poly(x(*i) - m(*[0 if d == ax else j for d, j in enumerate(i)]),
                                                         degree, round_k))
            return e / topi.sum(e, axis=ax, keepdims=True)
        return bb.call_te(f, call.args[0], primfunc_name_hint="softmax")
    return legalize


def softmax_floor_exp(degree: int):
    """softmax whose polynomial exp reduces its range with floor instead of round."""
    return softmax_poly_exp(degree, round_k=False)


def _rsqrt_newton(v, steps: int):
    """1/sqrt(v): the bit-trick estimate refined by ``steps`` Newton steps (3 reach float32)."""
    i = tirx.reinterpret("int32", v)
    y = tirx.reinterpret("float32", tirx.const(0x5F3759DF, "int32") - (i >> 1))
    for _ in range(steps):
        y = y * (tirx.const(1.5, "float32") - tirx.const(0.5, "float32") * v * y * y)
    return y


def layer_norm_rsqrt(steps: int):
    """LayerNorm over the last axis, two-pass statistics, 1/sqrt by ``steps`` Newton steps."""
    def legalize(bb, call):
        eps = float(call.attrs.epsilon)
        axes = [int(a) for a in call.attrs.axes]

        def f(x, gamma, beta):
            nd = len(x.shape)
            assert [a % nd for a in axes] == [nd - 1], axes
            n = x.shape[-1]
            mean = topi.sum(x, axis=nd - 1, keepdims=True) / tirx.const(float(int(n)), "float32")
            d = x - mean
            var = topi.sum(d * d, axis=nd - 1, keepdims=True) / tirx.const(float(int(n)), "float32")
            r = te.compute(var.shape, lambda *i: _rsqrt_newton(var(*i) + tirx.const(eps, "float32"), steps))
            return d * r * gamma + beta
        return bb.call_te(f, *call.args[:3], primfunc_name_hint="layer_norm")
    return legalize


# ---- running a stage, clean and perturbed ---------------------------------------------------
def check_stage(stage, backend, model, cache, seed=0, only_cases=None, own_kernels=True) -> list[dict]:
    """The stage's records; ``own_kernels=False``: without its own-kernel checks (a perturbed
    build's, whose own kernels the perturbation does not touch: their builds would be paid again
    in its temporary cache for records no test reads)."""
    report = Report(model)
    run_checks([stage], [backend], model, report, cache, seed=seed, log=Progress(quiet=True),
               only_cases=only_cases, mode=Mode(own_kernels=own_kernels))
    return report.results


# (stage, op, perturbation, ratio measured on TVM 0.27 llvm vs its budget), each at the stage's
# default shapes: the clean check shares tests/unit/test_parity.py's build
PERTURBATIONS = [
    ("clip", "relax.sigmoid", sigmoid_poly_exp(4), "quick_gelu's sigmoid: 8.3-11x vs 4-4.1x"),
    ("clip", "relax.nn.softmax", softmax_floor_exp(6), "attention softmax: 4.7-9.0x vs 4-4.1x"),
    ("clip", "relax.nn.layer_norm", layer_norm_rsqrt(2), "LayerNorm: 11.7-19.5x vs 4-4.1x"),
    ("unet", "relax.nn.gelu", gelu_tanh(), "GEGLU's GELU: 36x at guidance 1 (4.3-6.7x with CFG) vs 6.7-8.8x"),
    ("vae", "relax.sigmoid", sigmoid_poly_exp(4), "SiLU's sigmoid: 6.2-7.7x vs 4.6-5.3x"),
]
# The same perturbations on WebGPU (headless Chromium), each through the WebGPU budgets. The UNet
# runs at its default 16x16 latents, where every failing WebGPU UNet check is pre-selected by two
# known issues (sin/cos, GELU's erf constants): it must come out ``fail``, not ``known``. Its
# clean check is tests/unit/test_parity.py::test_stage_passes[unet-webgpu] (the same build); the
# VAE's SiLU is left to llvm here (a WebGPU VAE load compiles its shaders for ~60 s on
# SwiftShader, and CLIP's quick_gelu exercises the same sigmoid lowering on WebGPU). The WebGPU
# UNet runs one of its four cases, the guidance-1 one: the case its known issues already fail
# as built (SwiftShader's sin/cos), so only the proof can tell the perturbation from them; each
# case costs a 16x16 SwiftShader run as built and again in the proof.
WEBGPU_UNET_CASES = {"t500_g1.0"}
WEBGPU = [p for p in PERTURBATIONS if p[0] in ("clip", "unet")]
CASES = [pytest.param(p, "llvm", id=f"{p[0]}-{p[1].split('.')[-1]}") for p in PERTURBATIONS] + [
    pytest.param(p, "webgpu", marks=pytest.mark.webgpu, id=f"{p[0]}-{p[1].split('.')[-1]}-webgpu") for p in WEBGPU]


def _counting(fn, calls: list):
    def legalize(bb, call):
        calls.append(call)
        return fn(bb, call)
    return legalize


def _proven_or_pass(r) -> bool:
    return r["verdict"] == "pass" or (r["verdict"] == "known" and r["neutralized"]["verdict"] == "pass")


@pytest.mark.parametrize("perturbation,backend_name", CASES)
def test_perturbed_lowering_passes_atol_but_fails_floor_budget(perturbation, backend_name, tiny, cache, tmp_path):
    from sdparity.backends import get_backend
    from sdparity.registry import all_stages

    stage_name, op, fn, measured = perturbation
    backend = get_backend(backend_name)
    stage = all_stages()[stage_name]
    if not (backend_name == "webgpu" and stage_name == "unet"):  # see WEBGPU
        clean = [r for r in check_stage(stage, backend, tiny, cache) if not r.get("integer")]
        assert clean and all(_proven_or_pass(r) for r in clean), [r["message"] for r in clean]
        assert all(r["tolerance"]["floor_budget"] for r in clean if not r.get("own_kernel")), \
            "no calibrated floor budget for this stage"

    calls: list = []
    with perturbed(op, _counting(fn, calls)):
        only = WEBGPU_UNET_CASES if (backend_name, stage_name) == ("webgpu", "unet") else None
        bad = [r for r in check_stage(stage, backend, tiny, BuildCache(root=tmp_path), only_cases=only,
                                      own_kernels=False) if not r.get("integer")]
    if only:
        assert {r["case"] for r in bad} == only
    assert calls, f"{op} never reached legalization: the stage's module has no such op"
    assert all(r["verdict"] != "error" for r in bad), [r["message"] for r in bad]
    for r in bad:  # the old absolute rule alone passes every element ...
        assert r["metrics"]["mismatches"] == 0 and r["metrics"]["nonfinite"] == 0, r["message"]
    assert not [r for r in bad if r["verdict"] == "known"], "a known issue swallowed the perturbation"
    failing = [r for r in bad if r["verdict"] == "fail"]
    assert failing, f"no check failed; err/floor {[r['metrics']['floor_ratio'] for r in bad]} ({measured})"
    for r in failing:  # ... and the floor budget fails it, saying so
        assert r["failed_bound"] == "floor"
        assert re.search(r"err/floor [\d.]+x > budget [\d.]+x \(calibrated max [\d.]+x over \d+ seeds", r["message"])
        assert r["metrics"]["floor_ratio"] > r["metrics"]["floor_budget"] == r["tolerance"]["floor_budget"]
        if r.get("neutralized"):  # pre-selected by a known issue: still failing with it neutralized
            assert r["neutralized"]["verdict"] == "fail" and "not known issue" in r["message"]


def test_perturbation_is_undone(tmp_path):
    """After ``perturbed`` the op lowers exactly as before, and the perturbed build went to the
    temporary cache only."""
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")):
            return R.nn.softmax(x, axis=-1)

    def lowered():
        return relax.transform.LegalizeOps()(Mod).script()

    op = tvm.ir.Op.get("relax.nn.softmax")
    stock, before = op.get_attr("FLegalize"), lowered()
    with perturbed("relax.nn.softmax", softmax_floor_exp(6)):
        during = lowered()
    assert during != before and "reinterpret" in during
    assert lowered() == before and op.get_attr("FLegalize").same_as(stock)


# ---- the calibration file and its budgets ---------------------------------------------------
def _rec(stage, output, ratio, floor_rel, case="c", integer=False, backend="llvm"):
    return {"stage": stage, "output": output, "backend": backend, "case": case, "model_scope": "tiny",
            "integer": integer, "verdict": "pass", "message": "",
            "metrics": {"floor_ratio": ratio, "floor_rel": floor_rel}}


def test_calibrate_groups_rules_and_merge(tmp_path):
    import json

    from sdparity.compare import NEGLIGIBLE_FLOOR
    from sdparity.commands.calibrate import calibrate, write_calibration

    seeds = {s: [_rec("unet", "noise_pred", 2.0 + s / 4, 1e-6, "a"), _rec("unet", "noise_pred", 1.0, 1e-6, "b"),
                 _rec("scheduler_dpm", "prev_sample", 0.0, 1e-7, "a"),
                 _rec("scheduler_dpm", "prev_sample", 9.0, NEGLIGIBLE_FLOOR / 2, "b"),  # sub-ulp floor: left out
                 _rec("scheduler_dpm", "model_output", 3.0, NEGLIGIBLE_FLOOR / 2),
                 _rec("vae", "image", None, 0.0, integer=True)] for s in range(3)}
    groups = calibrate(seeds, {"apache-tvm": "x"})
    unet = groups["unet/noise_pred/llvm/tiny"]
    assert unet["rule"] == "floor" and unet["per_seed_max"] == [2.0, 2.25, 2.5] and unet["max"] == 2.5
    assert unet["spread"] == 1.25 and unet["seeds"] == [0, 1, 2] and unet["measured"] == {"apache-tvm": "x"}
    assert unet["cases"] == {"a": 2.5, "b": 1.0}  # each case label's worst over the seeds
    dpm = groups["scheduler_dpm/prev_sample/llvm/tiny"]
    assert dpm["rule"] == "floor" and dpm["max"] == 0.0 and dpm["negligible_floor_checks"] == 3 and "cases" not in dpm
    assert groups["scheduler_dpm/model_output/llvm/tiny"]["rule"] == "absolute"
    assert "negligible floor" in groups["scheduler_dpm/model_output/llvm/tiny"]["why"]
    assert groups["vae/image/llvm/tiny"]["rule"] == "absolute"

    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"groups": {"clip/hidden/webgpu/tiny": {"rule": "floor", "max": 1.5}}}))
    data = write_calibration(groups, path)
    assert set(data["groups"]) == {"clip/hidden/webgpu/tiny", *groups}  # other groups are kept
    assert json.loads(path.read_text()) == data and not list(tmp_path.glob(".cal.json.*"))


def test_calibrate_from_reports_cli(tmp_path, capsys):
    import json

    from sdparity.cli import main

    for seed, ratio in ((0, 2.0), (1, 3.0)):
        (tmp_path / f"calibrate-seed{seed}.json").write_text(json.dumps({
            "schema": "sdparity.report/1", "created": "2026-11-29T00:00:00", "versions": {"apache-tvm": "0.27"},
            "machine": {"cpus": 2}, "argv": ["sdparity", "calibrate", "--seeds", "2"],
            "results": [_rec("unet", "noise_pred", ratio, 1e-6)]}))
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--from-reports", str(tmp_path), "--out", str(out)]) == 0
    g = json.loads(out.read_text())["groups"]["unet/noise_pred/llvm/tiny"]
    assert g["max"] == 3.0 and g["measured"]["command"] == "sdparity calibrate --seeds 2"
    assert g["measured"]["apache-tvm"] == "0.27" and g["measured"]["date"] == "2026-11-29"


def test_calibrate_seed_arguments():
    import argparse

    from sdparity.commands.calibrate import _seeds

    assert _seeds("3") == [0, 1, 2] and _seeds("5-9") == [5, 6, 7, 8, 9] and _seeds("1,3,7") == [1, 3, 7]
    for bad in ("-1", "x", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _seeds(bad)


def test_known_issue_checks_are_not_learned_nor_false_alarms():
    from sdparity.commands.calibrate import calibrate, judge

    clean = _rec("unet", "noise_pred", 2.0, 1e-6, "a")
    known = {**_rec("unet", "noise_pred", 900.0, 1e-6, "a"), "verdict": "known", "known_issue": "x"}
    assert calibrate({0: [clean, known]}, {})["unet/noise_pred/llvm/tiny"]["max"] == 2.0
    assert judge(known) is None
    over = _rec("unet", "noise_pred", 900.0, 1e-6, "a")  # recorded as a pass, re-judged: over budget
    assert judge(over) == "floor" and judge(clean) is None
    assert judge({**over, "metrics": {**over["metrics"], "failed_bound": "abs"}}) == "abs+floor"
