"""The comparison module on hand-made arrays whose answers follow from their construction."""

from __future__ import annotations

import math

import numpy as np

from sdparity.compare import compare
from sdparity.tolerances import EXACT, Tolerance, lookup


def test_float_within_and_outside_tolerance():
    ref = np.array([1.0, -2.0, 4.0], np.float32)
    tol = Tolerance(1e-3, 0.0)
    ok = compare(ref + np.float32(5e-4), ref, tol)
    assert ok.passed and abs(ok.max_abs - 5e-4) < 5e-7  # float32 ulp at 4.0 is 4.8e-7
    bad = compare(ref + np.array([0, 0, 2e-3], np.float32), ref, tol)
    assert not bad.passed and bad.mismatches == 1 and bad.worst_index == [2]
    # max_rel: 2e-3 / 4 on the worst element
    assert abs(bad.max_rel - 5e-4) < 1e-6


def test_rtol_scales_with_reference():
    ref = np.array([1000.0, 1.0], np.float32)
    cand = ref + np.array([0.05, 0.0], np.float32)
    assert compare(cand, ref, Tolerance(0.0, 1e-4)).passed  # 0.05 <= 1e-4 * 1000
    assert not compare(cand, ref, Tolerance(0.0, 1e-5)).passed


def test_noise_floor_and_ratio():
    ref32 = np.array([1.0, 2.0], np.float32)
    ref64 = np.array([1.0 + 1e-6, 2.0], np.float64)
    m = compare(ref32 + np.float32(4e-6), ref32, Tolerance(1e-5), ref64)
    assert abs(m.noise_floor - 1e-6) < 1e-8
    assert 3.0 < m.floor_ratio < 5.0


def test_nan_in_candidate_fails_even_with_loose_tolerance():
    ref = np.zeros(4, np.float32)
    cand = ref.copy()
    cand[1] = np.nan
    m = compare(cand, ref, Tolerance(1e9, 1e9))
    assert not m.passed and m.nonfinite == 1


def test_integer_mismatch_budget():
    ref = np.arange(1000, dtype=np.uint32)
    cand = ref.copy()
    cand[:5] += 1  # 0.5% differ by exactly 1
    assert compare(cand, ref, Tolerance(1.0, 0.0, 0.01), integer=True).passed
    assert not compare(cand, ref, Tolerance(1.0, 0.0, 0.001), integer=True).passed
    cand[7] += 2
    assert not compare(cand, ref, Tolerance(1.0, 0.0, 0.5), integer=True).passed
    assert not compare(cand, ref, EXACT, integer=True).passed


def test_shape_mismatch_fails():
    assert not compare(np.zeros((2, 3)), np.zeros((3, 2)), Tolerance(1.0)).passed


def test_every_stage_output_has_a_justified_tolerance():
    from sdparity.registry import all_stages

    for st in all_stages().values():
        for o in st.outputs:
            for backend in ("llvm", "cuda", "webgpu"):
                for scope in ("tiny", "full"):
                    tol = lookup(st.name, o.name, backend, scope)
                    assert len(tol.reason) > 20, (st.name, o.name)


def _floored(err: float, floor: float, budget: float | None, n: int = 64):
    """A float output of scale ~1 whose reference has the given float32 floor, and a candidate
    off by ``err`` on one element."""
    ref32 = np.linspace(-1.0, 1.0, n).astype(np.float32)
    ref64 = ref32.astype(np.float64)
    ref64[3] += floor
    cand = ref32.astype(np.float64)
    cand[5] += err
    return compare(cand, ref32, Tolerance(1e-4, 1e-4, floor_budget=budget,
                                          floor_note="calibrated max 2x over 5 seeds, margin 3x"), ref64)


def test_floor_budget_fails_what_the_absolute_rule_passes():
    m = _floored(err=6e-5, floor=1e-6, budget=6.0)  # 60 floors, inside atol 1e-4
    assert not m.passed and m.failed_bound == "floor" and m.mismatches == 0
    assert m.floor_budget == 6.0 and abs(m.floor_ratio - 60) < 0.5
    assert m.why.startswith("err/floor 60x > budget 6x (calibrated max 2x over 5 seeds, margin 3x), 10x over; "
                            "max abs 6e-05 within atol")
    ok = _floored(err=5e-6, floor=1e-6, budget=6.0)
    assert ok.passed and ok.failed_bound is None and "err/floor 5x within budget 6x" in ok.why
    both = _floored(err=1e-3, floor=1e-6, budget=6.0)
    assert not both.passed and both.failed_bound == "abs+floor" and "outside atol" in both.why
    only_abs = _floored(err=1e-3, floor=1e-3, budget=6.0)
    assert not only_abs.passed and only_abs.failed_bound == "abs"


def test_floor_rule_needs_a_budget_a_real_floor_and_a_float_output():
    from sdparity.compare import NEGLIGIBLE_FLOOR

    assert _floored(err=6e-5, floor=1e-6, budget=None).passed  # no budget: the absolute rule alone
    tiny = _floored(err=6e-5, floor=NEGLIGIBLE_FLOOR * 0.9, budget=6.0)  # scale is 1.0
    assert tiny.passed and tiny.floor_budget is None and tiny.floor_ratio > 100
    real = _floored(err=6e-5, floor=NEGLIGIBLE_FLOOR * 1.1, budget=6.0)
    assert not real.passed and real.failed_bound == "floor"
    ref = np.arange(16, dtype=np.float32)
    cand = ref.copy()
    cand[0] += 1  # integer output: mismatch rule, never the floor budget
    m = compare(cand, ref, Tolerance(1.0, 0.0, 0.1, floor_budget=1.0), ref.astype(np.float64) + 1e-3, integer=True)
    assert m.passed and m.floor_budget is None
    assert compare(cand, ref, Tolerance(1.0, 0.0, floor_budget=1.0)).floor_budget is None  # no reference64


def test_lookup_gives_calibrated_budgets_with_reasons():
    from sdparity.tolerances import calibration

    groups = calibration()["groups"]
    for key, g in groups.items():
        stage, output, backend, scope = key.split("/")
        tol = lookup(stage, output, backend, scope)
        if g["rule"] == "floor":
            assert tol.floor_budget >= 3 * g["max"] and tol.floor_budget >= 4, key
            assert "over seeds [" in tol.floor_reason, key
        else:
            assert tol.floor_budget is None and g["why"] in tol.floor_reason, key
    unet = groups["unet/noise_pred/llvm/tiny"]
    assert unet["rule"] == "floor" and unet["cases"]
    for case, worst in unet["cases"].items():  # a calibrated case uses its own worst, others the group's
        assert lookup("unet", "noise_pred", "llvm", "tiny", case).floor_budget == max(4, math.ceil(30 * worst) / 10)
    assert lookup("unet", "noise_pred", "llvm", "tiny", "not-a-case").floor_budget == \
        max(4, math.ceil(30 * unet["max"]) / 10)
    assert lookup("unet", "noise_pred", "cuda", "tiny").floor_budget is None  # not calibrated
    assert "not calibrated" in lookup("unet", "noise_pred", "vulkan", "full").floor_reason
    # the full-size model on llvm and on CUDA (the card is named in the group) are calibrated
    assert lookup("unet", "noise_pred", "llvm", "full").floor_budget >= 4
    cuda = groups["unet/noise_pred/cuda/full"]
    assert cuda["measured"]["card"].startswith("NVIDIA") and lookup("unet", "noise_pred", "cuda", "full").floor_budget


def test_nonfinite_candidate_under_a_floor_budget_fails_cleanly():
    """A NaN in the candidate has no err/floor ratio: it fails (nonfinite), the message says so,
    and nothing crashes formatting a missing ratio (found by the uninitialized-history fault)."""
    import numpy as np

    from sdparity.compare import compare
    from sdparity.tolerances import Tolerance

    from sdparity.compare import MIN_FLOOR_ELEMENTS

    ref = np.full(MIN_FLOOR_ELEMENTS, 2.0, np.float32)
    ref64 = ref.astype(np.float64)
    ref64[0] += 4e-7  # a floor well above 2^-24 of the scale
    cand = ref.copy()
    cand[1] = np.nan
    m = compare(cand, ref, Tolerance(1e-3, 0.0, floor_budget=4.0), ref64)
    assert not m.passed and m.failed_bound == "nonfinite" and m.floor_ratio is None
    assert "non-finite" in m.why and "err/floor unbounded" in m.why


def test_floor_rule_needs_enough_elements():
    """Over a few elements the floor (a maximum) is biased low: the absolute rule decides alone."""
    import numpy as np

    from sdparity.compare import MIN_FLOOR_ELEMENTS, compare
    from sdparity.tolerances import Tolerance

    tol = Tolerance(1e-3, 0.0, floor_budget=4.0)
    for n, applies in ((4, False), (MIN_FLOOR_ELEMENTS, True)):
        ref = np.ones(n, np.float32)
        ref64 = ref.astype(np.float64) + 1e-7  # floor 1e-7, above 2^-24 of the scale
        m = compare(ref + np.float32(1e-6), ref, tol, ref64)  # 10 floors, well inside atol
        assert (m.floor_budget is not None) == applies and m.passed == (not applies)


def test_judge_case_is_the_record_maker_of_every_mode():
    """runner.judge_case: what the one check driver turns a case's outputs into records with,
    for every backend (the CUDA device half's too): the table's rule by default, the f16 rule
    in the f16 mode."""
    from sdparity.commands.f16 import mode as f16_mode
    from sdparity.registry import Case, Output, get_stage
    from sdparity.runner import DEFAULT, judge_case

    st = get_stage("vae")
    case = Case("latents0", "vae", [], None, (Output("image_float"), Output("image", integer=True)), {"x": [1]})
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    r64 = img.astype(np.float64) + rng.normal(0, 1e-5, img.shape)  # a float32 floor of ~4e-5
    px = np.round(img)
    quiet = lambda *a: None  # noqa: E731
    ok = judge_case(st, "cuda", "gpu", case, [img + np.float32(1e-4), px], [img, px], [r64, px], "full", None,
                    quiet, DEFAULT)
    assert [r["verdict"] for r in ok] == ["pass", "pass"]
    assert ok[0]["tolerance"]["atol"] == lookup("vae", "image_float", "cuda", "full").atol
    facts = {(r["backend"], r["device_class"], r["model_scope"]) for r in ok}
    assert facts == {("cuda", "gpu", "full")}
    bad = judge_case(st, "cuda", "gpu", case, [img + np.float32(1.0), px + 2], [img, px], [r64, px], "full", None,
                     quiet, DEFAULT)
    assert [r["verdict"] for r in bad] == ["fail", "fail"] and bad[0]["failed_bound"] is not None
    # the f16 mode: judged against float64 with PyTorch float16's own error as the floor
    f16 = judge_case(st, "cuda", "gpu", case, [img + np.float32(0.5), px], [r64, px], [img + np.float32(0.4), px],
                     "full", None, quiet, f16_mode())
    assert f16[0]["precision"] == "f16" and f16[0]["verdict"] == "pass"
    assert "PyTorch float16" in f16[0]["tolerance"]["floor_note"]


def test_chunked_comparison_equals_the_whole_array_one(monkeypatch):
    """compare reduces CHUNK elements at a time (a full-size op replay's 1 GiB outputs): with
    chunks of 7 elements every metric is the one of a single chunk, NaN, Inf, the worst
    element's index and the rms floor ratio included."""
    import sdparity.compare as cmp

    rng = np.random.default_rng(3)
    ref = rng.normal(0, 2, (5, 9, 11)).astype(np.float32)
    ref64 = ref.astype(np.float64) + rng.normal(0, 1e-6, ref.shape)
    cand = ref + rng.normal(0, 1e-5, ref.shape).astype(np.float32)
    cand[2, 3, 4] += 0.5  # the worst element, in a later chunk
    ref[4, 8, 10], cand[4, 8, 10] = np.inf, np.inf  # agreement on an Inf
    bad = cand.copy()
    bad[0, 0, 1] = np.nan
    cases = [(cand, Tolerance(1e-3, 1e-4, floor_budget=8.0)), (cand, Tolerance(1.0, floor_budget=1e6,
             floor_stat="rms")), (bad, Tolerance(1.0)), (np.round(ref * 10), EXACT)]
    whole = [compare(c, ref if t is not EXACT else np.round(ref * 10), t, ref64, integer=t is EXACT)
             for c, t in cases]
    monkeypatch.setattr(cmp, "CHUNK", 7)
    chunked = [compare(c, ref if t is not EXACT else np.round(ref * 10), t, ref64, integer=t is EXACT)
               for c, t in cases]
    assert [m.to_json() for m in chunked] == [m.to_json() for m in whole]
    assert whole[0].worst_index == [2, 3, 4] and not whole[0].passed and whole[2].failed_bound == "nonfinite"
    assert whole[1].floor_stat == "rms" and whole[1].floor_ratio is not None
