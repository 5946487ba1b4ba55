"""`sdparity html REPORT.json [-o OUT.html]`: one self-contained HTML page of a report.

Sections: summary, stage x backend matrix (verdict, checks passed, worst max |err|, worst
err/noise-floor ratio, build and run time), skips and errors with their reasons,
localizations, images (reference, candidate, difference heat map, embedded as PNG data
URIs from the report's images folder), every check, tolerances with reasons, versions,
machine and backend facts. Rendered from the JSON alone; written atomically.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from sdparity.errors import SdparityError
from sdparity.reports.table import ratio_text, ratio_wins, summary_line

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-family:monospace}
.pass{background:#dff3df}.fail{background:#f8d4d4}.error{background:#f3c0a0}.skip{background:#eee;color:#666}
.known{background:#e4dcf5}
.v{font-weight:bold}.small{font-size:12px;color:#555}
figure{display:inline-block;margin:0 8px 8px 0}figcaption{font-size:12px}
img.px{image-rendering:pixelated;min-width:160px;border:1px solid #999}
code{background:#f6f6f6;padding:0 2px}
"""
RANK = {"pass": 0, "skip": 1, "known": 2, "fail": 3, "error": 4}  # "known": sdparity.known_issues


def _num(x, fmt=".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _cell(text, cls: str = "", num: bool = False) -> str:
    c = " ".join(x for x in (cls, "n" if num else "") if x)
    return f"<td class='{c}'>{escape(str(text))}</td>" if c else f"<td>{escape(str(text))}</td>"


def _table(head: list[str], rows: list[str]) -> str:
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def matrix(data: dict) -> tuple[list[str], list[str], dict]:
    """stages, backends, {(stage, backend): aggregate}."""
    stages, backends, agg = [], [], {}
    for r in data.get("results", []):
        s, b = r["stage"], r["backend"]
        stages += [s] if s not in stages else []
        backends += [b] if b not in backends else []
        a = agg.setdefault((s, b), {"verdict": "pass", "checks": 0, "pass": 0, "known": 0, "max_abs": None,
                                    "ratio": None, "budget": None, "build": None, "run_s": 0.0, "message": ""})
        a["checks"] += 1
        a["pass"] += r["verdict"] == "pass"
        a["known"] += r["verdict"] == "known"
        if RANK[r["verdict"]] > RANK[a["verdict"]]:
            a["verdict"], a["message"] = r["verdict"], r.get("message") or ""
        m = {} if r.get("own_kernel") else r.get("metrics") or {}  # the stage's outputs' numbers only
        if m.get("max_abs") is not None:
            a["max_abs"] = max(a["max_abs"] or 0.0, m["max_abs"])
        if m.get("floor_ratio") is not None and ratio_wins(m["floor_ratio"], m.get("floor_budget"),
                                                             {"worst_ratio": a["ratio"], "budget": a["budget"]}):
            a["ratio"], a["budget"] = m["floor_ratio"], m.get("floor_budget")
        t = r.get("timings") or {}
        if "build_cached" in t:
            a["build"] = f"cached ({t.get('original_build_s')}s)" if t["build_cached"] else f"{t['build_s']:.1f}s"
        a["run_s"] += t.get("run_s") or 0.0
    return stages, backends, agg


def _matrix_html(data: dict) -> str:
    stages, backends, agg = matrix(data)
    rows = []
    for s in stages:
        cells = [f"<th>{escape(s)}</th>"]
        for b in backends:
            a = agg.get((s, b))
            if a is None:
                cells.append("<td class='skip'>not run</td>")
                continue
            known = f", {a['known']} known" if a["known"] else ""
            detail = (f"{a['pass']}/{a['checks']} pass{known}<br>max |err| {_num(a['max_abs'])}<br>"
                      f"err/floor/budget {ratio_text(a['ratio'], a['budget'])}<br>build {escape(a['build'] or '-')}<br>"
                      f"run {a['run_s']:.3f}s")
            why = f"<br><span class='small'>{escape(a['message'][:200])}</span>" if a["verdict"] != "pass" else ""
            cells.append(f"<td class='{a['verdict']}'><span class='v'>{a['verdict'].upper()}</span><br>"
                         f"<span class='small'>{detail}</span>{why}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(["stage \\ backend", *backends], rows)


def _image_src(report_dir: Path, images_dir: str | None, name: str) -> str | None:
    if not images_dir:
        return None
    path = report_dir / images_dir / name
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    except OSError:
        return None


def _images_html(data: dict, report_dir: Path) -> str:
    out = []
    for r in data.get("results", []):
        im = r.get("images")
        if not im:
            continue
        title = f"{r['stage']} / {r['backend']} / {r['case']} / {r['output']}"
        if "error" in im:
            out.append(f"<p>{escape(title)}: no images ({escape(im['error'])})</p>")
            continue
        figs = []
        for kind in ("reference", "candidate", "diff"):
            src = _image_src(report_dir, data.get("images_dir"), im[kind])
            cap = kind if kind != "diff" else (f"|difference|, white = {_num(im.get('diff_max'))} (0..255 units)"
                                               if im.get("diff_max") else "|difference|: none (all black)")
            body = f"<img class='px' alt='{kind}' src='{src}'>" if src else f"(missing {escape(im[kind])})"
            figs.append(f"<figure>{body}<figcaption>{escape(cap)}</figcaption></figure>")
        out.append(f"<h3 class='{r['verdict']}'>{escape(title)}: {r['verdict'].upper()}</h3>{''.join(figs)}")
    return "".join(out) or "<p>No stage in this report produces an image.</p>"


def _localization_html(data: dict) -> str:
    seen, out = set(), []
    for r in data.get("results", []):
        loc = r.get("localization")
        if not loc or (r["stage"], r["backend"], r["case"]) in seen:
            continue
        seen.add((r["stage"], r["backend"], r["case"]))
        rows = []
        for d in ([loc["first"]] if loc.get("first") else []) + (loc.get("diverged") or []):
            rows.append("<tr>" + "".join([_cell(d["call"], num=True), _cell(d["kernel"]), _cell(d["op"]),
                                          _cell(d["shape"]), _cell(_num(d["max_abs"]), num=True),
                                          _cell(_num(d.get("rel")), num=True), _cell(_num(d.get("bound")), num=True)])
                        + "</tr>")
        table = _table(["call", "kernel", "op", "shape", "max abs", "rel", "bound"], rows) if rows else ""
        out.append(f"<h3>{escape(r['stage'])} / {escape(r['backend'])} / {escape(str(r['case']))}</h3>"
                   f"<p><b>{escape(loc.get('status', ''))}</b>: {escape(loc.get('summary', ''))}</p>"
                   f"<p class='small'>{escape(loc.get('method', ''))}; {loc.get('calls', 0)} kernel calls, "
                   f"{loc.get('seconds', 0)}s</p>{table}{_op_replay_html(loc)}")
    return "".join(out) or "<p>No failing check was localized.</p>"


def _op_replay_html(loc: dict) -> str:
    """The op replay part of a localization (sdparity.tiers.opreplay): the first aten op over its
    budget, where it is in the program, its error against its float32 floor, and the repro."""
    op = loc.get("op") or {}
    if not op:
        return ""
    head = f"<p><b>op replay: {escape(op.get('status', ''))}</b>: {escape(op.get('summary', ''))}</p>"
    f = op.get("first")
    if not f:
        return head
    row = "<tr>" + "".join([
        _cell(f["op"] + (f" (from {f['decomposed_from']})" if f.get("decomposed_from") else "")),
        _cell(f"{f['position']} of {op.get('calls', '?')} ({f.get('node', '')})"), _cell(f.get("module") or "-"),
        _cell(f.get("shapes")), _cell(_num(f.get("max_abs")), num=True), _cell(_num(f.get("floor")), num=True),
        _cell(_num(f.get("ratio")), num=True), _cell(", ".join(f.get("kernels") or [])),
        _cell(f"{f.get('repro', '-')}" + ("" if "repro_reproduces" not in f else
                                          f" (reproduces alone: {'yes' if f['repro_reproduces'] else 'no'})"))]) + "</tr>"
    return head + _table(["aten op", "position", "module", "input shapes", "max |err|", "float32 floor", "err/floor",
                          "kernels", "repro"], [row])


def _checks_html(data: dict) -> str:
    rows = []
    for r in data.get("results", []):
        m, t, tol = r.get("metrics") or {}, r.get("timings") or {}, r.get("tolerance") or {}
        if "factor" in tol:  # the f16 rule (sdparity f16): a factor of PyTorch's own float16 error
            tol_s = f"<= {tol['factor']:g}x PyTorch f16 error"
        else:
            tol_s = f"atol {tol['atol']:g} rtol {tol['rtol']:g}" + (
                f" frac {tol['mismatch_frac']:g}" if tol.get("mismatch_frac") else "") if tol else "-"
        rows.append(f"<tr class='{r['verdict']}'>" + "".join([
            _cell(r["stage"]), _cell(r["backend"]), _cell(r.get("case") or "-"), _cell(r.get("output") or "-"),
            _cell(r["verdict"].upper()), _cell(_num(m.get("max_abs")), num=True),
            _cell(_num(m.get("noise_floor"), ".2g"), num=True), _cell(_num(m.get("floor_ratio"), ".3g"), num=True),
            _cell(_num(m.get("floor_budget"), "g"), num=True), _cell(r.get("failed_bound") or "-"),
            _cell(_num(m.get("mismatch_frac"), ".4%") if m else "-", num=True), _cell(tol_s),
            _cell(_num(t.get("run_s"), ".4f"), num=True), _cell(r.get("message") or "")]) + "</tr>")
    return _table(["stage", "backend", "case", "output", "verdict", "max |err|", "noise floor", "err/floor",
                   "floor budget", "failed bound", "mismatch", "tolerance", "run s", "message"], rows)


def _tolerances_html(data: dict) -> str:
    seen, rows = set(), []
    for r in data.get("results", []):
        tol = r.get("tolerance")
        key = (r["stage"], r.get("output"), r["backend"])
        if tol and key not in seen:
            seen.add(key)
            budget = "-" if tol.get("floor_budget") is None else f"{tol['floor_budget']:g}x"
            if "factor" in tol:  # the f16 rule: a factor of PyTorch's own float16 error
                budget = f"{tol['factor']:g}x PyTorch f16 error"
            rows.append("<tr>" + "".join(_cell(x) for x in (*key, tol.get("atol", "-"), tol.get("rtol", "-"),
                                                             tol.get("mismatch_frac", "-"),
                                                             tol.get("reason", ""), budget,
                                                             tol.get("floor_reason", ""))) + "</tr>")
    return _table(["stage", "output", "backend", "atol", "rtol", "mismatch", "reason", "err/floor budget",
                   "budget reason"], rows)


def _known_html(data: dict) -> str:
    """Checks whose failure is a known upstream issue (sdparity.known_issues), by issue."""
    from sdparity.known_issues import all_issues

    by_id: dict[str, list[dict]] = {}
    for r in data.get("results", []):
        if r["verdict"] == "known":
            by_id.setdefault(r.get("known_issue") or "?", []).append(r)
    out = []
    for iid, recs in by_id.items():
        issue = all_issues().get(iid)
        about = (f"<p><b>{escape(issue.title)}</b> (seen on TVM {escape(', '.join(issue.tvm_versions))}; repro "
                 f"<code>python {escape(issue.to_json()['repro'])}</code>)</p><p class='small'>"
                 f"{escape(issue.description)}</p>") if issue else "<p>(not in this sdparity's registry)</p>"
        checks = ", ".join(f"{r['stage']}/{r['backend']}/{r.get('case')}/{r.get('output')} (was {r.get('known_was')})"
                           for r in recs)
        out.append(f"<h3 class='known'>{escape(iid)}: {len(recs)} checks</h3>{about}<p class='small'>{escape(checks)}</p>")
    return "".join(out) or "<p>None.</p>"


def _facts_html(d: dict | None) -> str:
    rows = [f"<tr><th>{escape(str(k))}</th>{_cell(v if not isinstance(v, (dict, list)) else json.dumps(v))}</tr>"
            for k, v in (d or {}).items()]
    return _table(["", ""], rows) if rows else "<p>-</p>"


def render(data: dict, report_dir: Path) -> str:
    s = data.get("summary") or {}
    model = data.get("model") or {}
    skips = [r for r in data.get("results", []) if r["verdict"] in ("skip", "error")]
    skip_rows = ["<tr>" + "".join(_cell(x) for x in (r["stage"], r["backend"], r.get("case") or "-",
                                                      r["verdict"].upper(), r.get("message") or "")) + "</tr>"
                 for r in skips]
    backends = "".join(f"<h3>{escape(n)}</h3>{_facts_html(f)}" for n, f in (data.get("backends") or {}).items())
    head = (f"<p>Created {escape(str(data.get('created', '-')))}; model <b>{escape(str(model.get('name', '-')))}</b> "
            f"(digest {escape(str(model.get('digest', '-')))}); TVM {escape(str((data.get('versions') or {}).get('apache-tvm')))}; "
            f"schema {escape(str(data.get('schema')))}</p>"
            f"<p>{escape(summary_line(s))}.</p><p class='small'>argv: <code>{escape(' '.join(map(str, data.get('argv') or [])))}</code></p>")
    if data.get("faults"):
        head += f"<p class='fail'>Injected faults: {escape(', '.join(data['faults']))}</p>"
    if data.get("error"):
        head += f"<p class='error'>The check run did not happen: {escape(data['error'])}</p>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sdparity report</title>"
            f"<style>{CSS}</style></head><body><h1>sdparity parity report</h1>{head}"
            f"<h2>Stage &times; backend</h2>{_matrix_html(data)}"
            "<p class='small'>err/floor: max |candidate - reference| divided by the float32 noise floor of the "
            "reference (max |float64 - float32 reference|), against its calibrated budget (sdparity/calibration.json; "
            "the check nearest to or furthest over it), of the stage's outputs. Checks named <i>own kernel ...</i> "
            "judge one of the suite's own kernels alone at that shape (sdparity/tiers/own_kernels.py): their "
            "'noise floor' is the error of TVM's own chain that the kernel replaces and their err/floor the ratio "
            "of rms errors against float64. <span class='known'>known</span>: fails because of a "
            "registered upstream issue; never counted as a pass.</p>"
            f"<h2>Known upstream issues</h2>{_known_html(data)}"
            f"<h2>Skipped and errored</h2>{_table(['stage', 'backend', 'case', 'verdict', 'reason'], skip_rows) if skips else '<p>None.</p>'}"
            f"<h2>Localization</h2>{_localization_html(data)}"
            f"<h2>Images</h2>{_images_html(data, report_dir)}"
            f"<h2>Every check</h2>{_checks_html(data)}"
            f"<h2>Tolerances</h2>{_tolerances_html(data)}"
            f"<h2>Versions</h2>{_facts_html(data.get('versions'))}"
            f"<h2>Machine</h2>{_facts_html(data.get('machine'))}"
            f"<h2>Backends</h2>{backends or '<p>-</p>'}</body></html>")


def write_html(report_path: Path, out: Path | None = None) -> Path:
    from sdparity.files import write_atomic
    from sdparity.reports.report import load

    report_path = Path(report_path)
    out = Path(out) if out else report_path.with_suffix(".html")
    write_atomic(out, render(load(report_path), report_path.parent))
    return out


def cmd_html(args) -> int:
    if args.output and args.output.resolve() == args.report.resolve():
        raise SdparityError("the HTML output would overwrite the report itself")
    print(write_html(args.report, args.output))
    return 0


def add_parser(sub) -> None:
    h = sub.add_parser("html", help="render a JSON report as one self-contained HTML page",
                       description="Render REPORT.json (schema sdparity.report/1, docs/gate.md) as HTML: "
                       "stage x backend matrix, skips, localizations, images, every check, versions.")
    h.add_argument("report", type=Path)
    h.add_argument("-o", "--output", type=Path, default=None, help="HTML path (default: REPORT with .html)")
    h.set_defaults(handler=cmd_html)
