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
import os
import stat
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
#: images are embedded only when they are regular PNG files inside the report's own folder, each
#: at most this large (a report travels between machines: a crafted one must not make the page
#: embed a file from elsewhere, e.g. images_dir "../../etc")
MAX_IMAGE_BYTES = 16 * 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Every value from the report reaches the page through _e (escaped, quotes included) or a
# helper that calls it: a report is untrusted input (docs/reliability.md).


def _e(x) -> str:
    return escape(x if isinstance(x, str) else str(x), quote=True)


def _num(x, fmt=".3g") -> str:
    """A number formatted, or the value as text when it is not one (never raises)."""
    if x is None:
        return "-"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        try:
            return format(x, fmt)
        except (ValueError, TypeError, OverflowError):
            pass
    return str(x)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _obj(x) -> dict:
    return x if isinstance(x, dict) else {}


def _seq(x) -> list:
    return x if isinstance(x, list) else []


def _cls(verdict) -> str:
    """A verdict as a CSS class: only the known ones."""
    return verdict if isinstance(verdict, str) and verdict in RANK else ""


def _cell(text, cls: str = "", num: bool = False) -> str:
    c = " ".join(x for x in (_e(cls), "n" if num else "") if x)
    return f"<td class='{c}'>{_e(text)}</td>" if c else f"<td>{_e(text)}</td>"


def _table(head: list[str], rows: list[str]) -> str:
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def matrix(data: dict) -> tuple[list[str], list[str], dict]:
    """stages, backends, {(stage, backend): aggregate}."""
    stages, backends, agg = [], [], {}
    for r in _seq(data.get("results")):
        s, b = r["stage"], r["backend"]
        stages += [s] if s not in stages else []
        backends += [b] if b not in backends else []
        a = agg.setdefault((s, b), {"verdict": "pass", "checks": 0, "pass": 0, "known": 0, "max_abs": None,
                                    "ratio": None, "budget": None, "build": None, "run_s": 0.0, "message": ""})
        a["checks"] += 1
        a["pass"] += r["verdict"] == "pass"
        a["known"] += r["verdict"] == "known"
        if RANK.get(r["verdict"], 4) > RANK[a["verdict"]]:
            a["verdict"], a["message"] = r["verdict"], r.get("message") or ""
        m = {} if r.get("own_kernel") else _obj(r.get("metrics"))  # the stage's outputs' numbers only
        if _is_num(m.get("max_abs")):
            a["max_abs"] = max(a["max_abs"] or 0.0, m["max_abs"])
        budget = m.get("floor_budget") if _is_num(m.get("floor_budget")) and m["floor_budget"] > 0 else None
        if _is_num(m.get("floor_ratio")) and ratio_wins(m["floor_ratio"], budget,
                                                         {"worst_ratio": a["ratio"], "budget": a["budget"]}):
            a["ratio"], a["budget"] = m["floor_ratio"], budget
        t = _obj(r.get("timings"))
        if "build_cached" in t:
            a["build"] = (f"cached ({_num(t.get('original_build_s'), 'g')}s)" if t["build_cached"] else
                          f"{_num(t.get('build_s'), '.1f')}s")
        if _is_num(t.get("run_s")):
            a["run_s"] += t["run_s"]
    return stages, backends, agg


def _matrix_html(data: dict) -> str:
    stages, backends, agg = matrix(data)
    rows = []
    for s in stages:
        cells = [f"<th>{_e(s)}</th>"]
        for b in backends:
            a = agg.get((s, b))
            if a is None:
                cells.append("<td class='skip'>not run</td>")
                continue
            known = f", {a['known']} known" if a["known"] else ""
            detail = (f"{a['pass']}/{a['checks']} pass{known}<br>max |err| {_e(_num(a['max_abs']))}<br>"
                      f"err/floor/budget {_e(ratio_text(a['ratio'], a['budget']))}<br>"
                      f"build {_e(a['build'] or '-')}<br>run {_e(_num(a['run_s'], '.3f'))}s")
            why = f"<br><span class='small'>{_e(str(a['message'])[:200])}</span>" if a["verdict"] != "pass" else ""
            cells.append(f"<td class='{_cls(a['verdict'])}'><span class='v'>{_e(a['verdict'].upper())}</span><br>"
                         f"<span class='small'>{detail}</span>{why}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(["stage \\ backend", *backends], rows)


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and not name.startswith("."))


def _image_src(report_dir: Path, images_dir, name) -> tuple[str | None, str]:
    """(data URI, "") for a regular PNG file ``images_dir/name`` inside the report's folder;
    (None, why not) for anything else. Nothing outside the report's folder is ever opened."""
    if not images_dir:
        return None, "the report names no images folder"
    if (not isinstance(images_dir, str) or "\0" in images_dir or "\\" in images_dir
            or Path(images_dir).is_absolute() or ".." in Path(images_dir).parts):
        return None, "the report's images folder is not a folder inside the report's own folder"
    if not _plain_name(name):
        return None, "not a plain file name"
    try:
        root = report_dir.resolve()
        path = (root / images_dir / name).resolve()
        if not path.is_relative_to(root) or path == root:
            return None, "outside the report's folder"
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file"
            if st.st_size > MAX_IMAGE_BYTES:
                return None, f"over {MAX_IMAGE_BYTES >> 20} MiB"
            data = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a symlink loop (resolve)
        return None, f"cannot read it ({getattr(e, 'strerror', None) or type(e).__name__})"
    if len(data) > MAX_IMAGE_BYTES:
        return None, f"over {MAX_IMAGE_BYTES >> 20} MiB"
    if not data.startswith(PNG_MAGIC):
        return None, "not a PNG file"
    return "data:image/png;base64," + base64.b64encode(data).decode(), ""


def _images_html(data: dict, report_dir: Path) -> str:
    out = []
    for r in _seq(data.get("results")):
        im = r.get("images")
        if not im or not isinstance(im, dict):
            continue
        title = f"{r['stage']} / {r['backend']} / {r.get('case')} / {r.get('output')}"
        if "error" in im:
            out.append(f"<p>{_e(title)}: no images ({_e(im['error'])})</p>")
            continue
        figs = []
        for kind in ("reference", "candidate", "diff"):
            name = im.get(kind)
            src, why = _image_src(report_dir, data.get("images_dir"), name)
            diff_max = im.get("diff_max")
            cap = kind if kind != "diff" else (f"|difference|, white = {_num(diff_max)} (0..255 units)"
                                               if diff_max else "|difference|: none (all black)")
            body = (f"<img class='px' alt='{kind}' src='{_e(src)}'>" if src else
                    f"(no image: {_e(name)}: {_e(why)})")
            figs.append(f"<figure>{body}<figcaption>{_e(cap)}</figcaption></figure>")
        out.append(f"<h3 class='{_cls(r['verdict'])}'>{_e(title)}: {_e(r['verdict'].upper())}</h3>{''.join(figs)}")
    return "".join(out) or "<p>No stage in this report produces an image.</p>"


def _localization_html(data: dict) -> str:
    seen, out = set(), []
    for r in _seq(data.get("results")):
        loc = r.get("localization")
        key = (r["stage"], r["backend"], str(r.get("case")))
        if not loc or not isinstance(loc, dict) or key in seen:
            continue
        seen.add(key)
        rows = []
        first = [loc["first"]] if isinstance(loc.get("first"), dict) else []
        for d in first + [d for d in _seq(loc.get("diverged")) if isinstance(d, dict)]:
            rows.append("<tr>" + "".join([_cell(_num(d.get("call"), "d"), num=True), _cell(d.get("kernel", "")),
                                          _cell(d.get("op", "")), _cell(d.get("shape", "")),
                                          _cell(_num(d.get("max_abs")), num=True),
                                          _cell(_num(d.get("rel")), num=True), _cell(_num(d.get("bound")), num=True)])
                        + "</tr>")
        table = _table(["call", "kernel", "op", "shape", "max abs", "rel", "bound"], rows) if rows else ""
        out.append(f"<h3>{_e(r['stage'])} / {_e(r['backend'])} / {_e(r.get('case'))}</h3>"
                   f"<p><b>{_e(loc.get('status') or '')}</b>: {_e(loc.get('summary') or '')}</p>"
                   f"<p class='small'>{_e(loc.get('method') or '')}; {_e(_num(loc.get('calls', 0), 'd'))} kernel "
                   f"calls, {_e(_num(loc.get('seconds', 0), 'g'))}s</p>{table}{_op_replay_html(loc)}")
    return "".join(out) or "<p>No failing check was localized.</p>"


def _op_replay_html(loc: dict) -> str:
    """The op replay part of a localization (sdparity.check.opreplay): the first aten op over its
    budget, where it is in the program, its error against its float32 floor, and the repro."""
    op = _obj(loc.get("op"))
    if not op:
        return ""
    head = f"<p><b>op replay: {_e(op.get('status') or '')}</b>: {_e(op.get('summary') or '')}</p>"
    f = op.get("first")
    if not f or not isinstance(f, dict):
        return head
    kernels = f.get("kernels")
    row = "<tr>" + "".join([
        _cell(f"{f.get('op', '?')}" + (f" (from {f['decomposed_from']})" if f.get("decomposed_from") else "")),
        _cell(f"{f.get('position', '?')} of {op.get('calls', '?')} ({f.get('node', '')})"), _cell(f.get("module") or "-"),
        _cell(f.get("shapes")), _cell(_num(f.get("max_abs")), num=True), _cell(_num(f.get("floor")), num=True),
        _cell(_num(f.get("ratio")), num=True),
        _cell(", ".join(map(str, kernels)) if isinstance(kernels, list) else (kernels or "")),
        _cell(f"{f.get('repro', '-')}" + ("" if "repro_reproduces" not in f else
                                          f" (reproduces alone: {'yes' if f['repro_reproduces'] else 'no'})"))]) + "</tr>"
    return head + _table(["aten op", "position", "module", "input shapes", "max |err|", "float32 floor", "err/floor",
                          "kernels", "repro"], [row])


def _tolerance_text(tol: dict) -> str:
    if not tol:
        return "-"
    if "factor" in tol:  # the f16 rule (sdparity f16): a factor of PyTorch's own float16 error
        return f"<= {_num(tol['factor'], 'g')}x PyTorch f16 error"
    return (f"atol {_num(tol.get('atol'), 'g')} rtol {_num(tol.get('rtol'), 'g')}"
            + (f" frac {_num(tol['mismatch_frac'], 'g')}" if tol.get("mismatch_frac") else ""))


def _checks_html(data: dict) -> str:
    rows = []
    for r in _seq(data.get("results")):
        m, t, tol = _obj(r.get("metrics")), _obj(r.get("timings")), _obj(r.get("tolerance"))
        rows.append(f"<tr class='{_cls(r['verdict'])}'>" + "".join([
            _cell(r["stage"]), _cell(r["backend"]), _cell(r.get("case") or "-"), _cell(r.get("output") or "-"),
            _cell(r["verdict"].upper()), _cell(_num(m.get("max_abs")), num=True),
            _cell(_num(m.get("noise_floor"), ".2g"), num=True), _cell(_num(m.get("floor_ratio"), ".3g"), num=True),
            _cell(_num(m.get("floor_budget"), "g"), num=True), _cell(r.get("failed_bound") or "-"),
            _cell(_num(m.get("mismatch_frac"), ".4%") if m else "-", num=True), _cell(_tolerance_text(tol)),
            _cell(_num(t.get("run_s"), ".4f"), num=True), _cell(r.get("message") or "")]) + "</tr>")
    return _table(["stage", "backend", "case", "output", "verdict", "max |err|", "noise floor", "err/floor",
                   "floor budget", "failed bound", "mismatch", "tolerance", "run s", "message"], rows)


def _tolerances_html(data: dict) -> str:
    seen, rows = set(), []
    for r in _seq(data.get("results")):
        tol = _obj(r.get("tolerance"))
        key = (r["stage"], str(r.get("output")), r["backend"])
        if tol and key not in seen:
            seen.add(key)
            budget = "-" if tol.get("floor_budget") is None else f"{_num(tol['floor_budget'], 'g')}x"
            if "factor" in tol:  # the f16 rule: a factor of PyTorch's own float16 error
                budget = f"{_num(tol['factor'], 'g')}x PyTorch f16 error"
            rows.append("<tr>" + "".join(_cell(x) for x in (*key, tol.get("atol", "-"), tol.get("rtol", "-"),
                                                             tol.get("mismatch_frac", "-"),
                                                             tol.get("reason", ""), budget,
                                                             tol.get("floor_reason", ""))) + "</tr>")
    return _table(["stage", "output", "backend", "atol", "rtol", "mismatch", "reason", "err/floor budget",
                   "budget reason"], rows)


def _proof(r: dict) -> str:
    """', as built 18.4x, neutralized 1.46x': what proved a known check (docs/known-issues.md)."""
    n = r.get("neutralized") if isinstance(r.get("neutralized"), dict) else {}
    checks = [c for c in n.get("checks") or [] if isinstance(c, dict) and isinstance(c.get("metrics"), dict)]
    as_built = (r.get("metrics") or {}).get("floor_ratio") if isinstance(r.get("metrics"), dict) else None
    if not checks:
        return ""
    after = checks[0]["metrics"].get("floor_ratio")
    fmt = lambda x: f"{x:.3g}x" if isinstance(x, (int, float)) else "-"  # noqa: E731
    return f"; err/floor as built {fmt(as_built)}, with it neutralized {fmt(after)}"


def _known_html(data: dict) -> str:
    """Checks whose failure is a known upstream issue (sdparity.known_issues), by issue."""
    from sdparity.known_issues import all_issues

    by_id: dict[str, list[dict]] = {}
    for r in _seq(data.get("results")):
        if r["verdict"] == "known":
            by_id.setdefault(str(r.get("known_issue") or "?"), []).append(r)
    out = []
    for iid, recs in by_id.items():
        issue = all_issues().get(iid)
        about = (f"<p><b>{_e(issue.title)}</b> (seen on TVM {_e(', '.join(issue.tvm_versions))}; repro "
                 f"<code>python {_e(issue.to_json()['repro'])}</code>)</p><p class='small'>"
                 f"{_e(issue.description)}</p>") if issue else "<p>(not in this sdparity's registry)</p>"
        checks = ", ".join(f"{r['stage']}/{r['backend']}/{r.get('case')}/{r.get('output')} (was {r.get('known_was')}"
                           f"{_proof(r)})" for r in recs)
        out.append(f"<h3 class='known'>{_e(iid)}: {len(recs)} checks</h3>{about}<p class='small'>{_e(checks)}</p>")
    return "".join(out) or "<p>None.</p>"


def _facts_html(d) -> str:
    rows = [f"<tr><th>{_e(k)}</th>{_cell(v if not isinstance(v, (dict, list)) else json.dumps(v))}</tr>"
            for k, v in _obj(d).items()]
    return _table(["", ""], rows) if rows else "<p>-</p>"


def render(data: dict, report_dir: Path) -> str:
    s = _obj(data.get("summary"))
    model = _obj(data.get("model"))
    skips = [r for r in _seq(data.get("results")) if r["verdict"] in ("skip", "error")]
    skip_rows = ["<tr>" + "".join(_cell(x) for x in (r["stage"], r["backend"], r.get("case") or "-",
                                                      r["verdict"].upper(), r.get("message") or "")) + "</tr>"
                 for r in skips]
    backends = "".join(f"<h3>{_e(n)}</h3>{_facts_html(f)}" for n, f in _obj(data.get("backends")).items())
    argv = data.get("argv")
    head = (f"<p>Created {_e(data.get('created', '-'))}; model <b>{_e(model.get('name', '-'))}</b> "
            f"(digest {_e(model.get('digest', '-'))}); TVM {_e(_obj(data.get('versions')).get('apache-tvm'))}; "
            f"schema {_e(data.get('schema'))}</p>"
            f"<p>{_e(summary_line(s))}.</p><p class='small'>argv: "
            f"<code>{_e(' '.join(map(str, argv)) if isinstance(argv, list) else argv or '')}</code></p>")
    if data.get("faults"):
        faults = data["faults"]
        head += f"<p class='fail'>Injected faults: {_e(', '.join(map(str, faults)) if isinstance(faults, list) else faults)}</p>"
    if data.get("error"):
        head += f"<p class='error'>The check run did not happen: {_e(data['error'])}</p>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sdparity report</title>"
            f"<style>{CSS}</style></head><body><h1>sdparity parity report</h1>{head}"
            f"<h2>Stage &times; backend</h2>{_matrix_html(data)}"
            "<p class='small'>err/floor: max |candidate - reference| divided by the float32 noise floor of the "
            "reference (max |float64 - float32 reference|), against its calibrated budget (sdparity/calibration.json; "
            "the check nearest to or furthest over it), of the stage's outputs. Checks named <i>own kernel ...</i> "
            "judge one of the suite's own kernels alone at that shape (sdparity/check/own_kernels.py): their "
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
    from sdparity.args import out_file

    h = sub.add_parser("html", help="render a JSON report as one self-contained HTML page",
                       description="Render REPORT.json (schema sdparity.report/1, docs/gate.md) as HTML: "
                       "stage x backend matrix, skips, localizations, images, every check, versions.")
    h.add_argument("report", type=Path)
    h.add_argument("-o", "--output", type=out_file, default=None, help="HTML path (default: REPORT with .html); "
                   "checked before the report is read")
    h.set_defaults(handler=cmd_html)
