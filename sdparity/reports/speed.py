"""Speed gate: did the candidate get slower *relative to PyTorch* than the baseline?

Both reports carry ``performance.<device_class>.results`` from ``sdparity bench --merge``:
per (stage, backend, function) the TVM and the PyTorch run times, measured side by side in
one process, alternating round by round, and ``ratio`` = median TVM / median PyTorch. The gate
compares ratios, never absolute times: the reference runs on the same machine under the same
load, so a ratio carries over between runs far better than a time does.

Rule, per function present in both reports with the same threads and input shapes:

    factor  = max(1 + BUDGET (by run time), noise(baseline), noise(candidate))
    slower  (a speed regression)   candidate ratio > baseline ratio * factor
    faster                         candidate ratio * factor < baseline ratio

``noise(run)`` is that run's own spread: the largest over the smallest of its per-round ratios
(round i = TVM run i / PyTorch run i, measured back to back). Budgets and noise were measured
on the project's machine (docs/gate.md, "Speed"): 2 cores shared with other jobs, load 8-17,
91 pairs of clean benches of one build (tiny model, llvm, 5-10 rounds).

* Between clean runs a ratio moved by up to x3.6 for calls of at least KERNEL_S (the tiny
  UNet and VAE: their PyTorch side runs two OpenMP threads that stall whenever the other core
  is taken) and up to x5.6 for shorter ones (a VM call, tensor conversions and Python). In
  90 of the 91 pairs the change stayed within the larger round spread of the two runs. The
  exception: a whole run whose PyTorch CLIP rounds all took ~300 ms instead of ~1 ms (x311
  against a spread of x272). So a loaded machine widens the factor by its own measured noise
  instead of raising alarms, and a quiet one keeps the floor.
* BUDGET_KERNEL (calls of at least KERNEL_S): 0.25, so that a 30% slower UNet is flagged
  where the rounds agree within 25%. No kernel-bound pair here had steady rounds (every
  spread was x3 or more), so the floor comes from that goal, not from a quiet machine's
  measured noise; the spread term is what keeps a noisy run from false alarms.
* BUDGET_OVERHEAD (shorter calls): 1.0, i.e. x2. The 10 short-call pairs whose rounds were
  steady (spread below x2) moved by at most x1.18, the 29 below x3 by at most x1.41; a
  sub-millisecond ratio is mostly per-call overhead (VM call, conversions), which is not
  what a TVM upgrade is gated on, so the floor keeps a wide margin.

GPU results (records with a ``card``; ``sdparity.gpu.cuda``) on the same card: a ratio
that got worse is a regression only when TVM's own time got worse by the same factor too;
otherwise the status is ``reference-moved``. Measured on the H200 (docs/results/cuda-h200 and
cuda-h200-tiles, two machines, same card): PyTorch's CLIP ran a steady
4.3-5.0 ms in one session and a steady 6.7-8.3 ms in the other, while TVM's took 5.41-5.58 ms
in both, so the ratio moved x1.72 with nothing changed in TVM (each run's own spread was
below x1.25). On a GPU the TVM kernels' own times are steady (UNet 170.3-170.7 ms across 10
runs; 171.6 on an H100), the reference's library choices are not; on the shared CPU it is the
other way round, so there only the ratio counts.

Results that cannot be compared are shown, never flagged: different thread counts or input
shapes (``incomparable``), a side without a ratio (``error``), only on one side (``new`` /
``missing``). Numeric parity is judged by ``sdparity.reports.gate``, apart from this.
"""

from __future__ import annotations

KERNEL_S = 0.005
BUDGET_KERNEL = 0.25
BUDGET_OVERHEAD = 1.0
SPEED_REGRESSIONS = ("slower",)
#: a ratio got worse on the same GPU card while TVM's own time did not: PyTorch's side moved
REFERENCE_MOVED = "reference-moved"


def _results(report: dict) -> dict[tuple, dict]:
    out = {}
    for dc, sec in (report.get("performance") or {}).items():
        for r in (sec or {}).get("results") or []:
            if r.get("stage") is not None:
                out[(dc, r["stage"], r["backend"], r.get("function"))] = {**r, "_threads": sec.get("threads")}
    return out


def budget_for(run_s: float) -> float:
    return BUDGET_KERNEL if run_s >= KERNEL_S else BUDGET_OVERHEAD


def noise(rec: dict) -> float:
    """Largest over smallest per-round TVM/PyTorch ratio of one bench record (1 with < 2 rounds)."""
    per = [a / b for a, b in zip(rec.get("run_s_all") or [], rec.get("ref_s_all") or []) if a > 0 and b > 0]
    return max(per) / min(per) if len(per) > 1 else 1.0


def _threads_key(t: dict | None):
    t = t or {}
    return t.get("tvm_runtime"), t.get("torch")


def judge(base: dict | None, cand: dict | None) -> tuple[str, float | None, str]:
    """(status, allowed candidate ratio, why) for one (device_class, stage, backend, function)."""
    if base is None:
        return "new", None, ""
    if cand is None:
        return "missing", None, "not benchmarked in the candidate"
    b, c = base.get("ratio"), cand.get("ratio")
    if not b or not c:
        return "error", None, cand.get("error") or base.get("error") or "no ratio"
    if _threads_key(base.get("_threads")) != _threads_key(cand.get("_threads")):
        return "incomparable", None, f"threads {base.get('_threads')} vs {cand.get('_threads')}"
    if (base.get("shapes") or None) != (cand.get("shapes") or None):
        return "incomparable", None, f"inputs differ: {base.get('shapes')} -> {cand.get('shapes')}"
    floor = 1 + budget_for(max(base["run_s"], cand["run_s"]))
    spread = max(noise(base), noise(cand))
    factor = max(floor, spread)
    allowed = b * factor
    basis = f"round spread x{spread:.2f}" if spread > floor else f"budget x{floor:.2f}"
    if c > allowed:
        own = cand["run_s"] / base["run_s"] if base.get("run_s") and cand.get("run_s") else None
        if base.get("card") and base.get("card") == cand.get("card") and own is not None and own <= factor:
            return REFERENCE_MOVED, allowed, (
                f"tvm/torch {b:.3g} -> {c:.3g} (x{c / b:.2f}) but TVM's own time x{own:.2f} on the same "
                f"{cand['card']}: PyTorch went {base.get('ref_s', 0) * 1e3:.3g} -> {cand.get('ref_s', 0) * 1e3:.3g} ms")
        return "slower", allowed, f"tvm/torch {b:.3g} -> {c:.3g}: x{c / b:.2f} > x{factor:.2f} ({basis})"
    if c * factor < b:
        return "faster", allowed, f"tvm/torch {b:.3g} -> {c:.3g}: x{c / b:.2f}"
    return "same", allowed, f"x{c / b:.2f} within x{factor:.2f} ({basis})"


def compare(base: dict, cand: dict) -> dict:
    """The speed section of a gate result: rows, counts, regressions."""
    br, cr = _results(base), _results(cand)
    rows = []
    for key in list(br) + [k for k in cr if k not in br]:
        b, c = br.get(key), cr.get(key)
        status, allowed, why = judge(b, c)
        rows.append({"device_class": key[0], "stage": key[1], "backend": key[2], "function": key[3],
                     "status": status, "regression": status in SPEED_REGRESSIONS,
                     "baseline_ratio": (b or {}).get("ratio"), "candidate_ratio": (c or {}).get("ratio"),
                     "baseline_run_s": (b or {}).get("run_s"), "candidate_run_s": (c or {}).get("run_s"),
                     "allowed": allowed, "why": why})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"budgets": {"kernel": BUDGET_KERNEL, "overhead": BUDGET_OVERHEAD, "kernel_s": KERNEL_S},
            "rows": rows, "counts": counts, "regressions": sum(r["regression"] for r in rows)}


def print_speed(section: dict) -> None:
    """The speed part of the gate's output."""
    rows = section["rows"]
    if not rows:
        print("speed: no bench results in the reports (sdparity bench --merge REPORT adds them)")
        return
    shown = [r for r in rows if r["status"] != "same"]
    if shown:
        head = f"{'speed':<12} {'stage/function (backend, class)':<48} {'base':>8} {'cand':>8} {'allowed':>8}  why"
        print(head)
        print("-" * len(head))
    for r in sorted(shown, key=lambda r: not r["regression"]):
        what = f"{r['stage']}/{r['function']} ({r['backend']}, {r['device_class']})"
        num = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        print(f"{r['status']:<12} {what:<48} {num(r['baseline_ratio']):>8} {num(r['candidate_ratio']):>8} "
              f"{num(r['allowed']):>8}  {r['why']}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(section["counts"].items()))
    n = section["regressions"]
    print(f"speed: {len(rows)} tvm/torch ratios: {counts}. " + (f"FAIL: {n} slower" if n else "PASS: none slower"))
