"""The one comparison module: metrics of a candidate output against the reference.

Every result carries
  max_abs       max |cand - ref|
  max_rel       max |cand - ref| / |ref| over *significant* elements (|ref| >= 1% of max |ref|)
  mismatches    elements that differ at all (integer outputs) or break the tolerance (floats)
  noise_floor   max |ref64 - ref32|: the float32 rounding noise of the reference itself
  floor_ratio   max_abs / noise_floor (None when the floor is 0, e.g. bit-exact stages); with a
                Tolerance whose floor_stat is "rms", the ratio of the two root-mean-square
                errors instead (the own-kernel check, sdparity.check.own_kernels: for a
                correct attention kernel the largest elements' ratio scattered 0.77-2.01x over
                10 seeds, the rms ratio 0.92-1.16x; NOTES.md "Own-kernel check")
  ref_scale     max |ref| over finite elements; floor_rel = noise_floor / ref_scale
and a verdict against a declared Tolerance (sdparity.tolerances). Float outputs pass when
both bounds hold:
  abs    |cand - ref| <= atol + rtol*|ref| for every element
  floor  floor_ratio <= tol.floor_budget (the calibrated err/floor budget), applied only when
         the output has a budget, its floor is not negligible (floor_rel > NEGLIGIBLE_FLOOR)
         and it has at least MIN_FLOOR_ELEMENTS elements
``failed_bound`` says which one failed: "abs", "floor", "abs+floor", "nonfinite", "shape",
"int" (integer outputs: levels or mismatch share), or None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sdparity.tolerances import Tolerance

SIGNIFICANT = 0.01  # elements with |ref| below 1% of max |ref| are left out of max_rel
#: A floor at most half a float32 ulp of the output's scale (max |ref|) is "negligible": the
#: float32 reference then differs from the float64 one by its final rounding alone, as for a
#: short elementwise chain (some DPM scheduler cases: floor/scale down to 3.2e-8). err/floor
#: there counts sub-ulp noise (one ulp of difference = "2+ floors"), so the absolute rule,
#: written in ulp-scaled terms, decides alone. Model stages sit well above it (tiny CLIP
#: 2.5e-7, UNet 5.5e-7, VAE 1.0e-6 at the least; `sdparity calibrate`, NOTES.md).
NEGLIGIBLE_FLOOR = 2.0**-24
#: The floor is a maximum over the output's elements; over a handful of elements it
#: underestimates the rounding noise that the calibration (>= 1024 elements a check) measured,
#: and err/floor is biased upwards (shape fuzzing: a 1x1-latent UNet output, 4 elements, sat at
#: 9.6 floors with an error of 3 float32 ulp). Below this many elements the absolute rule alone
#: decides.
MIN_FLOOR_ELEMENTS = 64


@dataclass
class Metrics:
    shape: list[int]
    dtype: str
    n: int
    max_abs: float
    max_rel: float
    mismatches: int
    mismatch_frac: float
    noise_floor: float | None
    floor_ratio: float | None
    ref_scale: float | None
    floor_rel: float | None
    floor_budget: float | None  # the err/floor budget applied (None: the floor rule did not apply)
    failed_bound: str | None
    nonfinite: int
    worst_index: list[int] | None
    passed: bool
    why: str
    floor_stat: str = "max"  # how floor_ratio was taken: "max" (max / max) or "rms"

    def to_json(self) -> dict:
        return asdict(self)


#: elements compared at a time: every statistic is a reduction, so a full-size output (the
#: attention scores op replay compares are 1 GiB in float32) never needs float64 copies of
#: the whole array
CHUNK = 1 << 22


def _chunks(*arrays):
    """Flat float64 slices of the arrays, CHUNK elements at a time (None stays None)."""
    flat = [None if a is None else np.asarray(a).reshape(-1) for a in arrays]
    n = flat[0].size
    for i in range(0, max(n, 1), CHUNK):
        yield i, [None if a is None else a[i:i + CHUNK].astype(np.float64) for a in flat]


def compare(
    candidate: np.ndarray,
    reference: np.ndarray,
    tol: Tolerance,
    reference64: np.ndarray | None = None,
    integer: bool = False,
) -> Metrics:
    cand = np.asarray(candidate)
    ref = np.asarray(reference)
    if cand.shape != ref.shape:
        return Metrics(list(cand.shape), str(cand.dtype), int(cand.size), float("inf"), float("inf"),
                       int(ref.size), 1.0, None, None, None, None, None, "shape", 0, None, False,
                       f"shape {list(cand.shape)} != reference shape {list(ref.shape)}")
    scale = 0.0  # first pass: the output's scale, max finite |ref| (max_rel's significance needs it)
    for _, (r,) in _chunks(ref):
        if r.size:
            scale = max(scale, float(np.abs(np.where(np.isfinite(r), r, 0.0)).max()))
    max_abs, worst_flat, max_rel, nonfinite, mismatches = 0.0, 0, 0.0, 0, 0
    floor = None if reference64 is None else 0.0
    sq_err = sq_floor = 0.0
    for i, (c, r, r64) in _chunks(cand, ref, reference64):
        if not c.size:
            continue
        ref_nonfinite = ~np.isfinite(r)
        with np.errstate(invalid="ignore"):
            diff = np.abs(c - r)
        # A NaN/Inf that the reference also has at the same place (same value) is agreement.
        same_special = ref_nonfinite & ((c == r) | (np.isnan(c) & np.isnan(r)))
        nonfinite += int((~np.isfinite(c) & ~same_special).sum())
        diff = np.where(same_special, 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        k = int(diff.argmax())
        if diff[k] > max_abs or i == 0:
            max_abs, worst_flat = float(diff[k]), i + k
        mag = np.abs(np.where(ref_nonfinite, 0.0, r))
        sig = (mag >= SIGNIFICANT * scale) & (mag > 0)
        if sig.any():
            max_rel = max(max_rel, float((diff[sig] / mag[sig]).max()))
        mismatches += int((diff > 0).sum() if integer else (diff > tol.atol + tol.rtol * mag).sum())
        with np.errstate(over="ignore"):
            sq_err += float(np.sum(np.square(diff)))
        if r64 is not None:
            with np.errstate(invalid="ignore"):  # inf - inf: both non-finite, set to 0 below
                fd = np.abs(r64 - r)
            fd = np.where(~np.isfinite(r64) & ~np.isfinite(r), 0.0, fd)
            floor = max(floor, float(np.nan_to_num(fd, nan=np.inf).max()))
            with np.errstate(over="ignore", invalid="ignore"):
                sq_floor += float(np.sum(np.square(fd)))
    worst = [int(j) for j in np.unravel_index(worst_flat, cand.shape)] if cand.size else None
    ratio = (max_abs / floor) if floor not in (None, 0.0) and np.isfinite(max_abs) else None
    if tol.floor_stat == "rms" and ratio is not None:
        ratio = float(np.sqrt(sq_err / cand.size) / np.sqrt(sq_floor / cand.size))
    floor_rel = (floor / scale) if floor is not None and scale > 0 else None
    budget = None  # the floor rule applies to float outputs with a budget and a real floor
    if (not integer and tol.floor_budget is not None and floor_rel is not None and floor_rel > NEGLIGIBLE_FLOOR
            and cand.size >= MIN_FLOOR_ELEMENTS):
        budget = tol.floor_budget

    if integer:
        frac = mismatches / max(cand.size, 1)
        failed = "int"
        if max_abs > tol.atol:
            passed, why = False, f"an element differs by {max_abs:g} > {tol.atol:g}"
        elif frac > tol.mismatch_frac:
            passed, why = False, f"{frac:.4%} of elements differ > budget {tol.mismatch_frac:.4%}"
        else:
            passed, why, failed = True, f"{mismatches} of {cand.size} elements differ (max {max_abs:g})", None
    else:
        frac = mismatches / max(cand.size, 1)
        abs_ok = not mismatches
        if abs_ok:
            why = f"max abs {max_abs:.3g} within atol={tol.atol:g} rtol={tol.rtol:g}"
        else:
            why = (f"{mismatches} elements outside atol={tol.atol:g} rtol={tol.rtol:g}; "
                   f"max abs {max_abs:.3g} at {worst}")
        floor_ok = budget is None or (ratio is not None and ratio <= budget)
        if budget is not None:
            note = f" ({tol.floor_note})" if tol.floor_note else ""
            if floor_ok:
                why += f"; err/floor {ratio:.3g}x within budget {budget:.3g}x"
            elif ratio is None:  # a non-finite error has no ratio: it is over any budget
                why = f"err/floor unbounded (max abs {max_abs:g}) > budget {budget:.3g}x{note}; " + why
            else:
                why = (f"err/floor {ratio:.3g}x > budget {budget:.3g}x{note}, {ratio / budget:.2g}x over; "
                       + why)
        passed = abs_ok and floor_ok
        failed = None if passed else ("abs+floor" if not (abs_ok or floor_ok) else "abs" if not abs_ok else "floor")
    if nonfinite:
        passed, failed, why = False, "nonfinite", f"{nonfinite} non-finite values in the candidate; " + why
    return Metrics(list(cand.shape), str(cand.dtype), int(cand.size), max_abs, max_rel, mismatches,
                   frac, floor, ratio, scale, floor_rel, budget, failed, nonfinite, worst, passed, why,
                   tol.floor_stat)
