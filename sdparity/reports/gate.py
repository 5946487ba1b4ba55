"""`sdparity gate BASELINE.json CANDIDATE.json`: does the candidate lose numerical parity?

Both reports are "sdparity.report/1" files of the same model. Every check is keyed by
(stage, backend, case, output) and the candidate's result is held against the baseline's:

  regressions (exit 1)                      fine (exit 0)
  ----------------------------------------  -------------------------------------------
  regressed    error beyond the budget      same       within the budget
  now-fails    passed -> over its           improved   error shrank beyond the budget
               tolerance (verdict fail)     fixed      error/fail -> pass
  error        now errors (cannot build,    still-fails / still-errors: known, not worse
               cannot run, run crashed)     new        only in the candidate
  missing      the check is gone            skipped    skipped in the baseline
  now-skipped  passed, now skipped          still-known  a known upstream issue, before and now
  changed      different inputs (shapes)    fixed-upstream?  known -> pass: the issue no longer
  now-known    passed -> fails, explained                reproduces here (run its repro; narrow
               by a known upstream issue                 or retire the entry)
  known-worse  known before and now, but its error as
               built or with the issue neutralized grew
               beyond the budget (a new bug beside the
               known one)

Verdict "known" (sdparity.known_issues) is a failure that a registered upstream issue
explains. A known issue all of whose baseline checks pass in the candidate is listed as
"fixed upstream?" in ``known_issues`` of the result.

The budgets below are the only knobs; docs/gate.md explains them with measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdparity.errors import SdparityError
from sdparity.reports import speed

# ---- budgets ----------------------------------------------------------------------------
# Float outputs: the candidate's max |err| may grow to
#     max(ERR_GROWTH * baseline_err,  baseline_err + FLOOR_SLACK * noise_floor).
ERR_GROWTH = 2.0
ERR_GROWTH_REASON = (
    "a correct build differs from the reference mostly by float32 accumulation order; another "
    "valid order moves max |err| by a factor of order 1 (llvm vs torch: 1.3x-4x the noise floor "
    "on every stage), so up to 2x the baseline is a different valid order, beyond it a real loss")
FLOOR_SLACK = 1.0
FLOOR_SLACK_REASON = (
    "for (nearly) bit-exact baselines a ratio means nothing (0 -> 1 ulp is 'infinite growth'): "
    "one noise floor (max |ref64 - ref32|, the float32 rounding of the reference itself) is what "
    "one re-association or FMA contraction can move a result, and is allowed on top")
# Integer outputs (rounded pixels, packed RGBA), compared by their mismatch share:
FRAC_GROWTH = 2.0
FRAC_SLACK = 0.001
FRAC_REASON = (
    "a float error inside its budget can flip pixels that sit within it of a .5 tie: their "
    "share may double, plus 0.1% of the elements so that one flipped pixel of a tiny image "
    "(1/768 for 16x16x3) is not a regression")
INT_LEVELS = 1
INT_LEVELS_REASON = (
    "such a flip moves a value by one level, never more; outputs declared exact (tolerance "
    "atol 0, e.g. RGBA packing) must stay exact")

BUDGETS = {
    "err_growth": (ERR_GROWTH, ERR_GROWTH_REASON),
    "floor_slack": (FLOOR_SLACK, FLOOR_SLACK_REASON),
    "frac_growth": (FRAC_GROWTH, FRAC_REASON),
    "frac_slack": (FRAC_SLACK, FRAC_REASON),
    "int_levels": (INT_LEVELS, INT_LEVELS_REASON),
}
REGRESSIONS = ("regressed", "now-fails", "now-known", "known-worse", "error", "missing", "now-skipped",
               "changed")
GATE_SCHEMA = "sdparity.gate/1"


def _key(r: dict) -> tuple:
    return (r["stage"], r["backend"], r.get("case"), r.get("output"))


def _label(key: tuple) -> str:
    return "/".join(str(k) for k in key if k is not None)


def is_integer(r: dict) -> bool:
    """Integer-compared output. Reports before the "integer" field: known by a mismatch budget
    or a non-float dtype."""
    if "integer" in r:
        return bool(r["integer"])
    tol, m = r.get("tolerance") or {}, r.get("metrics") or {}
    return tol.get("mismatch_frac", 0) > 0 or not str(m.get("dtype", "float")).startswith("float")


def _facts(r: dict | None) -> dict | None:
    if r is None:
        return None
    m = r.get("metrics") or {}
    return {"verdict": r["verdict"], "max_abs": m.get("max_abs"), "noise_floor": m.get("noise_floor"),
            "floor_ratio": m.get("floor_ratio"), "floor_budget": m.get("floor_budget"),
            "known_issue": r.get("known_issue"), "mismatch_frac": m.get("mismatch_frac"),
            "nonfinite": m.get("nonfinite"), "message": r.get("message")}


def compare_metrics(base: dict, cand: dict) -> tuple[str, float | None, str]:
    """(status, allowed error, why) for two records that both have metrics."""
    b, c = base["metrics"], cand["metrics"]
    if (c.get("nonfinite") or 0) > (b.get("nonfinite") or 0):
        return "regressed", None, f"{c['nonfinite']} non-finite values (baseline {b.get('nonfinite') or 0})"
    if is_integer(base):
        exact = (base.get("tolerance") or {}).get("atol", 1) == 0
        levels = b["max_abs"] if exact else max(b["max_abs"], INT_LEVELS)
        frac = b["mismatch_frac"] if exact else max(b["mismatch_frac"] * FRAC_GROWTH, b["mismatch_frac"] + FRAC_SLACK)
        if c["max_abs"] > levels:
            return "regressed", levels, f"an element differs by {c['max_abs']:g} (allowed {levels:g})"
        if c["mismatch_frac"] > frac:
            return "regressed", levels, (f"{c['mismatch_frac']:.4%} of elements differ (baseline "
                                         f"{b['mismatch_frac']:.4%}, allowed {frac:.4%})")
        if c["mismatch_frac"] * FRAC_GROWTH < b["mismatch_frac"] or c["max_abs"] < b["max_abs"]:
            return "improved", levels, f"{c['mismatch_frac']:.4%} differ (baseline {b['mismatch_frac']:.4%})"
        return "same", levels, ""
    floors = [f for f in (b.get("noise_floor"), c.get("noise_floor")) if f]
    floor = max(floors) if floors else 0.0
    allowed = max(ERR_GROWTH * b["max_abs"], b["max_abs"] + FLOOR_SLACK * floor)
    if not c["max_abs"] <= allowed:  # also catches NaN/inf
        return "regressed", allowed, (f"max abs {c['max_abs']:.3g} > allowed {allowed:.3g} "
                                      f"(baseline {b['max_abs']:.3g}, floor {floor:.2g})")
    if c["max_abs"] * ERR_GROWTH < b["max_abs"] and b["max_abs"] - c["max_abs"] > FLOOR_SLACK * floor:
        return "improved", allowed, f"max abs {b['max_abs']:.3g} -> {c['max_abs']:.3g}"
    return "same", allowed, ""


def _judge(base: dict | None, cand: dict | None, cand_stage: dict | None) -> tuple[str, float | None, str]:
    """``cand_stage``: the candidate's stage-level record (build error, backend skipped, or the
    whole run failed) that stands in for checks it does not have."""
    if base is None:
        return "new", None, ""
    bv = base["verdict"]
    if cand is None:
        if bv == "skip":
            return "skipped", None, "skipped in the baseline"
        if cand_stage is None:
            return "missing", None, "the check is not in the candidate report"
        cand = cand_stage
    cv = cand["verdict"]
    if bv == "skip":
        return "skipped", None, base.get("message") or "skipped in the baseline"
    if cv == "skip":
        return "now-skipped", None, cand.get("message") or ""
    if cv == "error":
        return ("still-errors" if bv == "error" else "error"), None, cand.get("message") or ""
    if cv == "known":  # explained, but a pass that became one is still lost parity
        if bv == "pass":
            return "now-known", None, cand.get("message") or ""
        return _known_vs(base, cand)
    if bv == "known":
        if cv == "pass":
            return "fixed-upstream?", None, (f"known issue {base.get('known_issue')} no longer reproduces "
                                             f"here: the check passes")
        # known -> fail: its neutralized build fails now (or no entry pre-selects it): a new bug
        return "now-fails", None, cand.get("message") or ""
    if bv == "error":  # nothing to lose: the baseline had no result
        return ("fixed" if cv == "pass" else "still-fails"), None, cand.get("message") or ""
    if (base.get("shapes") or None) != (cand.get("shapes") or None):
        return "changed", None, f"inputs differ: {base.get('shapes')} -> {cand.get('shapes')}"
    status, allowed, why = compare_metrics(base, cand)
    if bv == "pass" and cv == "fail":
        return "now-fails", allowed, cand.get("message") or why
    if bv == "fail" and cv == "pass":
        return "fixed", allowed, why
    if bv == "fail" and status != "regressed":
        return "still-fails", allowed, why or (cand.get("message") or "")
    return status, allowed, why


def _neutralized_as_record(r: dict) -> dict | None:
    """The neutralized build's result of a known (or not-proven) check, shaped like a record."""
    checks = [c for c in (r.get("neutralized") or {}).get("checks") or []
              if c.get("metrics") and c.get("output") == r.get("output")]
    if not checks:
        return None
    return {**r, "metrics": checks[0]["metrics"], "verdict": checks[0]["verdict"]}


def _known_vs(base: dict, cand: dict) -> tuple[str, float | None, str]:
    """A check known in the candidate (known or failing in the baseline): still known only when
    neither its error as built nor its error with the issue neutralized grew beyond the
    budget. The known bug's size is pinned by the baseline, and so is what is left without it."""
    if not (base.get("metrics") and cand.get("metrics")) or \
            (base.get("shapes") or None) != (cand.get("shapes") or None):
        return "still-known", None, cand.get("message") or ""
    status, allowed, why = compare_metrics(base, cand)
    if status == "regressed":
        return "known-worse", allowed, f"as built: {why}"
    nb, nc = _neutralized_as_record(base), _neutralized_as_record(cand)
    if nb and nc:
        n_status, n_allowed, n_why = compare_metrics(nb, nc)
        if n_status == "regressed":
            return "known-worse", n_allowed, f"with {', '.join(cand.get('known_issues') or [])} neutralized: {n_why}"
    return "still-known", allowed, cand.get("message") or ""


def gate(base: dict, cand: dict) -> dict:
    """Compare two loaded reports; the result is JSON-ready (schema sdparity.gate/1)."""
    bm, cm = base.get("model") or {}, cand.get("model") or {}
    if bm and cm and bm.get("digest") != cm.get("digest"):
        raise SdparityError(f"the reports are of different models ({bm.get('name')} {bm.get('digest')} vs "
                            f"{cm.get('name')} {cm.get('digest')}): a gate compares the same checks")
    b_recs = {_key(r): r for r in base["results"]}
    c_recs = {_key(r): r for r in cand["results"]}
    run_error = cand.get("error")
    stage_level = {k[:2]: r for k, r in c_recs.items() if k[2] is None and r["verdict"] in ("error", "skip")}
    c_pairs = {k[:2] for k in c_recs if k[2] is not None}
    rows = []
    for key in list(b_recs) + [k for k in c_recs if k not in b_recs]:
        b, c = b_recs.get(key), c_recs.get(key)
        if b is None and key[:2] in stage_level and any(k[:2] == key[:2] for k in b_recs):
            continue  # a candidate stage-level record: shown on each baseline check it took away
        if c is None and key[2] is None and b["verdict"] == "error" and key[:2] in c_pairs:
            status, allowed, why = "fixed", None, "the stage builds and runs now"
        else:
            stand_in = stage_level.get(key[:2]) or (
                {"verdict": "error", "message": run_error} if run_error else None)
            status, allowed, why = _judge(b, c, stand_in)
        rows.append({"stage": key[0], "backend": key[1], "case": key[2], "output": key[3],
                     "status": status, "regression": status in REGRESSIONS, "allowed": allowed,
                     "why": why, "baseline": _facts(b), "candidate": _facts(c),
                     "localization": (c or {}).get("localization")})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"schema": GATE_SCHEMA,
            "baseline": {"versions": base.get("versions"), "faults": base.get("faults") or []},
            "candidate": {"versions": cand.get("versions"), "faults": cand.get("faults") or [],
                          "error": run_error},
            "budgets": {k: v for k, (v, _) in BUDGETS.items()},
            "rows": rows, "counts": counts, "regressions": sum(r["regression"] for r in rows),
            "speed": speed.compare(base, cand),  # tvm/torch ratios, apart from the numbers
            "known_issues": known_issue_status(b_recs, rows)}


def known_issue_status(b_recs: dict, rows: list[dict]) -> dict:
    """Per known issue of the baseline: how many of its checks pass in the candidate, and
    "fixed upstream?" when all of them do."""
    out: dict[str, dict] = {}
    for row in rows:
        b = b_recs.get((row["stage"], row["backend"], row["case"], row["output"]))
        if not b or b["verdict"] != "known":
            continue
        e = out.setdefault(b.get("known_issue") or "?", {"checks": 0, "now_pass": 0})
        e["checks"] += 1
        e["now_pass"] += row["status"] == "fixed-upstream?"
    for e in out.values():
        e["status"] = ("fixed upstream?" if e["now_pass"] == e["checks"] else
                       "partly passes" if e["now_pass"] else "still reproduces")
    return out


def gate_files(baseline: Path, candidate: Path) -> dict:
    """Load both reports (validated: sdparity.reports.report.load, exit 2 with one line on a bad
    one) and gate them. A pair of valid reports whose records cannot be compared (e.g. a check
    with numbers on one side only, an integer check without a mismatch share) is one line and
    exit 2 too, never a traceback: reports are untrusted input (docs/reliability.md)."""
    from sdparity.errors import one_line
    from sdparity.reports.report import load

    base, cand = load(baseline), load(candidate)
    try:
        result = gate(base, cand)
    except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError, IndexError) as e:
        raise SdparityError(f"cannot compare {baseline} with {candidate}: a check lacks a value the comparison "
                            f"needs ({one_line(e)[:200]})") from None
    result["baseline"]["path"], result["candidate"]["path"] = str(baseline), str(candidate)
    return result


def write_json(result: dict, path: Path) -> None:
    from sdparity.files import write_atomic

    write_atomic(Path(path), json.dumps(result, indent=1))


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _worst(rows: list[dict]) -> dict:
    def badness(r):
        c, a = (r["candidate"] or {}).get("max_abs"), r["allowed"]
        return (c / a) if c is not None and a else (c or 0.0)
    return max(rows, key=badness)


def print_gate(result: dict, show_all: bool = False) -> None:
    """One line per (status, stage, backend) group, its worst check shown; regressions first."""
    tvm = [(result[s].get("versions") or {}).get("apache-tvm") for s in ("baseline", "candidate")]
    print(f"gate: baseline TVM {tvm[0]} -> candidate TVM {tvm[1]}")
    if result["candidate"].get("error"):
        print(f"candidate run: {result['candidate']['error']}")
    for side in ("baseline", "candidate"):
        if result[side].get("faults"):
            print(f"note: the {side} report has injected faults {result[side]['faults']}")
    groups: dict[tuple, list] = {}
    for r in result["rows"]:
        if show_all or r["status"] != "same":
            groups.setdefault((not r["regression"], r["status"], r["stage"], r["backend"]), []).append(r)
    if groups:
        head = f"{'status':<12} {'check (worst of group)':<48} {'base err':>9} {'cand err':>9} {'allowed':>9}  why"
        print(head)
        print("-" * len(head))
    for key in sorted(groups, key=lambda k: k[0]):
        rows = groups[key]
        w = _worst(rows)
        b, c = w["baseline"] or {}, w["candidate"] or {}
        check = _label((w["stage"], w["backend"], w["case"], w["output"]))
        if len(rows) > 1:
            check = f"{w['stage']}/{w['backend']} ({len(rows)} checks)"
        why = w["why"] if len(w["why"]) <= 110 else w["why"][:107] + "..."
        print(f"{w['status']:<12} {check:<48} {_num(b.get('max_abs')):>9} {_num(c.get('max_abs')):>9} "
              f"{_num(w['allowed']):>9}  {why}")
        loc = w.get("localization") or {}
        if loc.get("summary"):
            print(f"{'':<12} localization: {loc['summary']}")
    for iid, e in (result.get("known_issues") or {}).items():
        print(f"known issue {iid}: {e['now_pass']} of its {e['checks']} baseline checks pass now: {e['status']}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    verdict = f"FAIL: {result['regressions']} regression(s)" if result["regressions"] else "PASS: no regression"
    print(f"{len(result['rows'])} checks: {counts}. {verdict}")
    if "speed" in result:
        speed.print_speed(result["speed"])


def cmd_gate(args) -> int:
    result = gate_files(args.baseline, args.candidate)
    if args.json:
        write_json(result, args.json)
    print_gate(result, show_all=args.all)
    return 1 if result["regressions"] or result["speed"]["regressions"] else 0


def add_parser(sub) -> None:
    from sdparity.args import out_file

    budget_help = "; ".join(f"{k}={v:g}" for k, (v, _) in BUDGETS.items())
    g = sub.add_parser("gate", help="fail when a candidate report loses parity against a baseline report",
                       description="Compare every check (stage, backend, case, output) of CANDIDATE with "
                       "BASELINE. Exit 1 when an error grows beyond its budget, a check now fails, errors, "
                       f"is skipped or is gone; 0 otherwise. Budgets: {budget_help} (docs/gate.md).")
    g.add_argument("baseline", type=Path)
    g.add_argument("candidate", type=Path)
    g.add_argument("--json", type=out_file, default=None, help="also write the gate result as JSON (atomically; "
                   "the path is checked before the reports are read)")
    g.add_argument("--all", action="store_true", help="list unchanged checks too")
    g.set_defaults(handler=cmd_gate)
