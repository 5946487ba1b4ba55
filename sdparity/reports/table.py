"""The per-stage summary table printed after a check (read from the report data)."""

from __future__ import annotations


def summarize(data: dict) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for r in data["results"]:
        key = (r["stage"], r["backend"])
        row = rows.setdefault(key, {"stage": r["stage"], "backend": r["backend"], "checks": 0,
                                    "pass": 0, "worst_abs": 0.0, "worst_ratio": None, "verdict": "pass",
                                    "message": "", "build": ""})
        row["checks"] += 1
        v = r["verdict"]
        row["pass"] += v == "pass"
        rank = {"pass": 0, "skip": 1, "fail": 2, "error": 3}
        if rank[v] > rank[row["verdict"]] or (v != "pass" and not row["message"]):
            row["verdict"], row["message"] = v, r["message"]
        m = r.get("metrics")
        if m:
            row["worst_abs"] = max(row["worst_abs"], m["max_abs"])
            if m.get("floor_ratio") is not None:
                row["worst_ratio"] = max(row["worst_ratio"] or 0.0, m["floor_ratio"])
        t = r.get("timings") or {}
        if "build_cached" in t:
            row["build"] = "cached" if t["build_cached"] else f"{t['build_s']:.1f}s"
    return list(rows.values())


def print_table(data: dict) -> None:
    rows = summarize(data)
    head = f"{'stage':<18} {'backend':<8} {'checks':>7} {'max abs err':>12} {'err/floor':>10} {'build':>8}  verdict"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = "-" if r["worst_ratio"] is None else f"{r['worst_ratio']:.1f}x"
        line = (f"{r['stage']:<18} {r['backend']:<8} {r['pass']:>3}/{r['checks']:<3} {r['worst_abs']:>12.3g} "
                f"{ratio:>10} {r['build']:>8}  {r['verdict'].upper()}")
        if r["verdict"] != "pass":
            line += f": {r['message']}"
        print(line)
    s = data.get("summary") or {}
    print(f"{s.get('pass', 0)} passed, {s.get('fail', 0)} failed, {s.get('error', 0)} errors, "
          f"{s.get('skip', 0)} skipped")
