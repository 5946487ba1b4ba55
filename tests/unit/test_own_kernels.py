"""The own-kernel check (sdparity.check.own_kernels) inside ``sdparity check``: every attention
kernel the llvm build of the tiny UNet holds is judged alone against TVM's own chain, and a TVM
regression that the UNet's parity check lets through fails it, and the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.perturb import floor_lowered_as_trunc  # noqa: E402


def _unet():
    from sdparity.registry import all_stages

    return all_stages()["unet"]


def _own(results):
    """The attention kernel's records, one per shape."""
    return [r for r in results if str(r["case"]).startswith("own kernel attention ")]


def _exp(results):
    """The record of the kernel's exp alone (exp_f32 in ulp)."""
    return [r for r in results if r["case"] == "own kernel exp_f32 ulp"]


def _check(tiny, cache):
    from sdparity.backends import get_backend
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    report = Report(tiny)
    run_checks([_unet()], [get_backend("llvm")], tiny, report, cache, log=Progress(quiet=True))
    return report


def test_each_attention_shape_of_the_build_is_checked_and_passes(tiny, cache):
    """The build's meta lists its attention kernels by shape; ``sdparity check`` adds one record
    each (the tiny UNet: self- and cross-attention at two resolutions), judged by the rms ratio
    against the twin: a real, different build (the kernel's cached meta lists the kernel, the
    twin's none)."""
    from sdparity.compile.attention import ATTENTION

    report = _check(tiny, cache)
    own = _own(report.results)
    assert len(own) == 4 and {r["verdict"] for r in own} == {"pass"}, [r["message"] for r in own]
    for r in own:
        m = r["metrics"]
        assert m["floor_stat"] == "rms" and m["floor_budget"] == 1.5 and m["floor_ratio"] < 1.5
        assert m["noise_floor"] > 0 and m["max_abs"] > 0
        assert "rms err/twin's" in r["message"] and r["function"].startswith("kernel_")
    assert {tuple(r["shapes"]["q"]) for r in own} == {(8, 256, 8), (8, 64, 16)}
    (exp,) = _exp(report.results)  # once per stage and backend, however many shapes
    m = exp["metrics"]
    assert exp["verdict"] == "pass" and exp["own_kernel"] == "attention" and exp["output"] == "ulp", exp["message"]
    assert exp["stage"] == "unet" and exp["backend"] == "llvm" and exp["transcendental"] == "exp_f32"
    assert exp["tolerance"]["atol"] == 1.5 and 0.5 < m["max_abs"] <= 1.5 and m["points"] > 500_000
    assert m["per_target"] and all(p["max_ulp"] <= 1.5 for p in m["per_target"]) and not m["exact_failures"]
    assert "ulp of float32" in exp["message"] and "budget 1.5 ulp" in exp["message"]
    art_meta = [json.loads(p.read_text()) for p in cache.root.glob("*/meta.json")]
    built = [m for m in art_meta if m.get("label") == "own-kernel/attention/kernel"]
    assert built and all(k["kernel"] == "attention" for m in built for k in m["own_kernels"])
    twins = [m for m in art_meta if m.get("label") == "own-kernel/attention/chain"]
    assert twins and not any(m["own_kernels"] for m in twins)
    assert ATTENTION == "sdparity_attention"


def test_tvm_floor_lowered_as_trunc_fails_the_own_kernel_check_and_the_gate(tiny, tmp_path):
    """TVM perturbed through its op-attribute registry: the llvm lowering of ``floor`` replaced
    by ``trunc`` (they differ for negative arguments: every argument of the softmax's exp). The
    UNet's own parity check passes that build (its outputs stay inside their floor budgets:
    NOTES.md); each attention kernel's check fails it, and so does the upgrade gate against a
    clean report. Its own build cache: the perturbation is not part of any key."""
    from sdparity.cache import BuildCache
    from sdparity.reports import gate

    clean = _check(tiny, BuildCache(root=tmp_path / "clean"))
    with floor_lowered_as_trunc():
        bad = _check(tiny, BuildCache(root=tmp_path / "perturbed"))
    stage = [r for r in bad.results if not r.get("own_kernel")]
    assert stage and {r["verdict"] for r in stage} == {"pass"}  # the gap the own-kernel check closes
    own = _own(bad.results)
    assert len(own) == 4 and {r["verdict"] for r in own} == {"fail"}
    assert min(r["metrics"]["floor_ratio"] for r in own) > 5.0  # measured 8.7-20.6x over 10 seeds
    assert all("floor" in r["metrics"]["failed_bound"] for r in own), [r["message"] for r in own]
    (exp,) = _exp(bad.results)  # the exp alone: floor as trunc is hundreds of ulp off
    assert exp["verdict"] == "fail" and exp["metrics"]["max_abs"] > 100, exp["message"]
    result = gate.gate(json.loads(clean.to_json()), json.loads(bad.to_json()))
    flagged = [r["case"] for r in result["rows"] if r["regression"]]
    assert result["regressions"] == 5 and all(c.startswith("own kernel ") for c in flagged)
    assert {r["status"] for r in result["rows"] if r["regression"]} == {"now-fails"}


#: one digit of one coefficient of exp_f32's polynomial changed: the r^3 term's 1.6666665459e-1
#: as 1.6668665459e-1 (measured: up to 14.9 ulp at a range-reduction interval's edge)
EXP_DIGIT = (4, 1.6668665459e-1)  # index into attention.EXP_F32_COEFFS (r^7 first), new value


def test_one_digit_of_an_exp_coefficient_fails_the_exp_record_not_the_rms_ratio(tiny, cache, tmp_path, monkeypatch):
    """exp_f32 with one digit of one polynomial coefficient changed (EXP_DIGIT), built into every
    llvm build of a ``sdparity check`` of the UNet: the UNet's own checks and the attention
    kernel's rms ratios still pass (measured 0.66-1.14x, budget 1.5x: the error partly cancels in
    the softmax's quotient), and the exp's own record fails (14.9 ulp, budget 1.5); the gate
    against a clean report flags that record alone. Its own build cache: the coefficients are
    read when a module is built, and the stage's key holds the sources, not the values."""
    from sdparity.cache import BuildCache
    from sdparity.compile import attention
    from sdparity.reports import gate
    from sdparity.tolerances import OWN_TRANSCENDENTALS

    index, value = EXP_DIGIT
    clean_coeffs = attention.EXP_F32_COEFFS
    old = f"{clean_coeffs[index]:.10e}"
    assert sum(a != b for a, b in zip(old, f"{value:.10e}")) == 1, "one digit"
    clean = _check(tiny, cache)
    monkeypatch.setattr(attention, "EXP_F32_COEFFS",
                        clean_coeffs[:index] + (value,) + clean_coeffs[index + 1:])
    bad = _check(tiny, BuildCache(root=tmp_path / "perturbed"))

    stage = [r for r in bad.results if not r.get("own_kernel")]
    assert stage and {r["verdict"] for r in stage} == {"pass"}, [r["message"] for r in stage]
    own = _own(bad.results)
    assert len(own) == 4 and {r["verdict"] for r in own} == {"pass"}  # today's rms ratio: passes it
    assert max(r["metrics"]["floor_ratio"] for r in own) < 1.5
    (exp,) = _exp(bad.results)
    budget = OWN_TRANSCENDENTALS["exp_f32"].max_ulp
    assert exp["verdict"] == "fail" and exp["failed_bound"] == "abs", exp["message"]
    assert exp["metrics"]["max_abs"] > 5 * budget, exp["message"]  # measured 14.9 ulp
    (clean_exp,) = _exp(clean.results)
    assert clean_exp["verdict"] == "pass" and clean_exp["metrics"]["max_abs"] <= budget
    result = gate.gate(json.loads(clean.to_json()), json.loads(bad.to_json()))
    flagged = [(r["case"], r["status"]) for r in result["rows"] if r["regression"]]
    assert flagged == [("own kernel exp_f32 ulp", "now-fails")], flagged


def test_rms_ratio_separates_a_systematic_error_from_scattered_rounding():
    """compare's "rms" statistic: a candidate whose every element carries an error the size of
    the reference's rounding has ratio ~1 even where its single largest error is 2x the
    reference's; an error 3x the rounding everywhere has ratio ~3 (and fails 1.5x)."""
    from sdparity.compare import compare
    from sdparity.tolerances import Tolerance

    g = np.random.default_rng(0)
    exact = g.standard_normal(4096)
    twin = exact + 1e-7 * g.standard_normal(4096)
    noisy = exact + 1e-7 * g.standard_normal(4096)
    noisy[7] = exact[7] + 2 * np.abs(twin - exact).max()  # one outlier
    tol = Tolerance(1e-4, floor_budget=1.5, floor_stat="rms")
    m = compare(noisy, exact, tol, reference64=twin)
    assert m.passed and 0.8 < m.floor_ratio < 1.3 and m.max_abs / m.noise_floor >= 2
    m = compare(exact + 3e-7 * g.standard_normal(4096), exact, tol, reference64=twin)
    assert not m.passed and m.failed_bound == "floor" and 2.5 < m.floor_ratio < 3.5


def test_a_kernel_the_rewrite_no_longer_makes_is_an_error_not_a_pass(tmp_path, monkeypatch, llvm):
    """If the rewrite stops firing at a shape the stage's build had (here: fuse_attention made a
    no-op), the candidate would be TVM's chain judged against itself: the check reports an error
    instead, naming the shape."""
    from sdparity.cache import BuildCache
    from sdparity.compile import schedule_cpu
    from sdparity.reports.report import Report
    from sdparity.check import own_kernels

    monkeypatch.setattr(schedule_cpu, "fuse_attention", lambda mod: mod)
    report = Report(None)
    shapes = {"q": [2, 32, 8], "kt": [2, 8, 32], "v": [2, 32, 8]}
    with llvm.session() as runner:
        (rec,) = own_kernels.check(_unet(), llvm, runner, [{"kernel": "attention", "shapes": shapes}], report,
                                   BuildCache(root=tmp_path), log=lambda *a: None)
    assert rec["verdict"] == "error" and "did not produce the attention kernel" in rec["message"]
    assert rec["case"] == "own kernel attention q=2x32x8 kt=2x8x32 v=2x32x8" and rec["own_kernel"] == "attention"
