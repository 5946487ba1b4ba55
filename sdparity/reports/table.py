"""The per-stage summary table printed after a check (read from the report data).

Columns: checks passed of all (a stage's own-kernel checks, sdparity.check.own_kernels,
included), checks whose failure is a known upstream issue (``known``, sdparity.known_issues:
counted apart, never as passes), worst max |err| of the stage's outputs, their err/floor
against its budget (the check nearest to or furthest over its calibrated budget; no budget:
the worst ratio alone), build, verdict of the worst check (own-kernel checks included)."""

from __future__ import annotations

RANK = {"pass": 0, "skip": 1, "known": 2, "fail": 3, "error": 4}


def summarize(data: dict) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for r in data["results"]:
        key = (r["stage"], r["backend"])
        row = rows.setdefault(key, {"stage": r["stage"], "backend": r["backend"], "checks": 0, "pass": 0,
                                    "known": 0, "worst_abs": 0.0, "worst_ratio": None, "budget": None,
                                    "verdict": "pass", "message": "", "build": ""})
        row["checks"] += 1
        v = r["verdict"]
        row["pass"] += v == "pass"
        row["known"] += v == "known"
        if RANK.get(v, 4) > RANK[row["verdict"]] or (v != "pass" and not row["message"]):
            row["verdict"], row["message"] = v, r["message"]
        m = r.get("metrics")
        if m and not r.get("own_kernel"):  # the stage's outputs only: an own kernel's ratio is another one
            row["worst_abs"] = max(row["worst_abs"], m["max_abs"])
            ratio, budget = m.get("floor_ratio"), m.get("floor_budget")
            if ratio is not None and ratio_wins(ratio, budget, row):
                row["worst_ratio"], row["budget"] = ratio, budget
        t = r.get("timings") or {}
        if "build_cached" in t:
            row["build"] = "cached" if t["build_cached"] else f"{t['build_s']:.1f}s"
    return list(rows.values())


def ratio_wins(ratio: float, budget: float | None, row: dict) -> bool:
    """Does this check show its stage's err/floor better than the one kept so far? Checks with a
    budget win (nearest to / furthest over it); among the rest, the largest ratio."""
    if row["worst_ratio"] is None:
        return True
    if budget is not None:
        return row["budget"] is None or ratio / budget > row["worst_ratio"] / row["budget"]
    return row["budget"] is None and ratio > row["worst_ratio"]


def ratio_text(ratio: float | None, budget: float | None) -> str:
    """'2.6x/7.9x' (err/floor against its budget), '1.3x' (no budget), '-' (no floor)."""
    if ratio is None:
        return "-"
    return f"{ratio:.1f}x" + (f"/{budget:g}x" if budget is not None else "")


def summary_line(s: dict) -> str:
    return (f"{s.get('pass', 0)} passed, {s.get('fail', 0)} failed, {s.get('known', 0)} known issues, "
            f"{s.get('error', 0)} errors, {s.get('skip', 0)} skipped")


def print_table(data: dict) -> None:
    rows = summarize(data)
    head = (f"{'stage':<18} {'backend':<8} {'checks':>7} {'known':>5} {'max abs err':>12} "
            f"{'err/floor/budget':>16} {'build':>8}  verdict")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r['stage']:<18} {r['backend']:<8} {r['pass']:>3}/{r['checks']:<3} {r['known'] or '-':>5} "
                f"{r['worst_abs']:>12.3g} {ratio_text(r['worst_ratio'], r['budget']):>16} {r['build']:>8}  "
                f"{r['verdict'].upper()}")
        if r["verdict"] != "pass":
            line += f": {r['message']}"
        print(line)
    print(summary_line(data.get("summary") or {}))
