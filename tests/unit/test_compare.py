"""The comparison module on hand-made arrays whose answers follow from their construction."""

from __future__ import annotations

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
