"""Shards of one check run, and their merge (docs/ci.md).

A check run is a list of **units of work**, (stage, backend) pairs: the selected stages in
registry order, each with the selected backends in registry order (so the list depends neither
on the order the names were typed in nor on what is cached). ``check --shard K/N`` runs
``units[K-1::N]``: every N-th unit, from the K-th. Round robin rather than contiguous blocks:
a stage's backends go to different shards, and the expensive model stages (registry order puts
them between cheap ones) spread over the shards.

A shard report is a normal ``sdparity.report/1`` report with ``shard``: ``index`` (K),
``count`` (N), ``units`` (its own), and what every shard of one run must share, so that the
merge can tell shards of different runs apart: ``selection`` (all units, in order), ``seed``,
``latent``.

``sdparity merge OUT SHARD...`` checks the shards belong together (one model digest, one set
of versions, one count, every index once, one selection, seed, latent and fault list, no check
in two shards, no record outside its shard's units), then writes one report: the records in
unit order, the summary recomputed, ``merged_from`` (the shard paths), ``shards`` (per shard:
index, path, created, machine, units) and the shards' images copied into the merged report's
own images folder (those that could not be read are listed in ``images_not_merged``).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

from sdparity.errors import SdparityError

SHARD_KEYS = ("index", "count", "units", "selection", "seed", "latent")
#: of ``versions.tvm``, what identifies the TVM (paths and timing differ between machines)
TVM_IDENTITY = ("version", "libs_sha256", "commit", "ffi_version")


# ---- sharding a check run --------------------------------------------------------------------


def _ordered(names: list[str], order: list[str]) -> list[str]:
    """``names`` in the order of ``order``; names it lacks keep their given order, after it."""
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def units(stages: list[str], backends: list[str], stage_order: list[str], backend_order: list[str]) -> list:
    """The run's units of work: [stage, backend] pairs, stage-major, both in registry order."""
    return [[s, b] for s in _ordered(stages, stage_order) for b in _ordered(backends, backend_order)]


def shard_units(all_units: list, k: int, n: int) -> list:
    """Shard ``k`` (1-based) of ``n``: every n-th unit, from the k-th."""
    return all_units[k - 1::n]


def plan(k: int, n: int, stages: list, backends: list, stage_order: list[str], backend_order: list[str],
         seed: int, latent) -> tuple[list[tuple[list, list]], dict]:
    """The calls of the runner for shard ``k`` of ``n`` and the report's ``shard`` field.
    ``stages``/``backends`` are the selected objects (anything with ``.name``). Each call is
    (stages, backends): the stages that run the same backends go in one call, stages in registry
    order, so a stage's reference is computed once for all its backends in this shard and each
    backend starts once per distinct backend set."""
    by_stage = {s.name: s for s in stages}
    by_backend = {b.name: b for b in backends}
    every = units(list(by_stage), list(by_backend), stage_order, backend_order)
    mine = shard_units(every, k, n)
    per_stage: dict[str, list[str]] = {}
    for s, b in mine:
        per_stage.setdefault(s, []).append(b)
    calls: dict[tuple, list] = {}
    for s, bs in per_stage.items():
        calls.setdefault(tuple(bs), []).append(by_stage[s])
    runs = [(sts, [by_backend[b] for b in bs]) for bs, sts in calls.items()]
    record = {"index": k, "count": n, "units": mine, "selection": every, "seed": seed,
              "latent": list(latent) if latent else None}
    return runs, record


def order_results(results: list[dict], selection: list) -> list[dict]:
    """Records in unit order (stable: each unit's records keep their order)."""
    rank = {tuple(u): i for i, u in enumerate(selection)}
    return sorted(results, key=lambda r: rank.get((r.get("stage"), r.get("backend")), len(rank)))


# ---- merging shard reports -------------------------------------------------------------------


def _unit_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(u, list) and len(u) == 2 and all(isinstance(x, str) for x in u)
                                       for u in v)


def _shard_field(data: dict, path: Path) -> dict:
    sh = data.get("shard")
    if not isinstance(sh, dict):
        raise SdparityError(f"{path} is not a shard report (no 'shard' field: written by 'sdparity check "
                            f"--shard K/N')")
    missing = [k for k in SHARD_KEYS if k not in sh]
    if missing:
        raise SdparityError(f"{path}: its 'shard' field lacks {', '.join(missing)}")
    ints = all(isinstance(sh[k], int) and not isinstance(sh[k], bool) for k in ("index", "count"))
    if not ints or not 1 <= sh["index"] <= sh["count"]:
        raise SdparityError(f"{path}: shard index/count must be integers with 1 <= index <= count, not "
                            f"{str(sh['index'])[:20]}/{str(sh['count'])[:20]}")
    if not _unit_list(sh["units"]) or not _unit_list(sh["selection"]):
        raise SdparityError(f"{path}: shard units and selection must be lists of [stage, backend]")
    if sh["units"] != shard_units(sh["selection"], sh["index"], sh["count"]):
        raise SdparityError(f"{path}: its units are not shard {sh['index']}/{sh['count']} of its selection")
    return sh


def comparable_versions(versions) -> dict:
    """What must agree between shards: every pinned version and the TVM's identity (by content),
    not where it was installed or how long hashing it took."""
    if not isinstance(versions, dict):
        return {}
    out = {k: v for k, v in versions.items() if k != "tvm"}
    tvm = versions.get("tvm")
    if isinstance(tvm, dict):
        out.update({f"tvm.{k}": tvm.get(k) for k in TVM_IDENTITY})
    else:
        out["tvm"] = tvm
    return out


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _same(what: str, values: list, paths: list[Path]) -> None:
    """Refuse (one line) when the shards disagree on ``what``."""
    for v, p in zip(values[1:], paths[1:]):
        if v != values[0]:
            raise SdparityError(f"{p} and {paths[0]} are not shards of one run: different {what} "
                                f"({_short(v)} vs {_short(values[0])})")


def _key(r: dict) -> tuple:
    return (r.get("stage"), r.get("backend"), r.get("case"), r.get("output"))


def _read_images(data: dict, path: Path, images: dict, not_merged: list) -> None:
    """The PNGs a shard's records name, read as the HTML page reads them (regular PNG files inside
    the shard report's own folder, nothing elsewhere), into ``images``."""
    from sdparity.reports.html import _image_src

    for r in data["results"]:
        im = r.get("images")
        if not isinstance(im, dict):
            continue
        for kind in ("reference", "candidate", "diff"):
            name = im.get(kind)
            if name is None:
                continue
            src, why = _image_src(path.parent, data.get("images_dir"), name)
            if src is None:
                not_merged.append({"shard": str(path), "name": str(name)[:200], "why": why})
                continue
            png = base64.b64decode(src.partition(",")[2])
            if images.get(name, png) != png:  # names carry stage.backend.case.output: never in two shards
                raise SdparityError(f"{path}: image {name} is also in another shard, with other content")
            images[name] = png


def merge(paths: list[Path]) -> tuple[dict, dict[str, bytes]]:
    """(merged report data without summary, images {name: PNG bytes}) or SdparityError (one line)."""
    from sdparity.reports.report import SCHEMA, load

    paths = [Path(p) for p in paths]
    datas = [load(p) for p in paths]
    shards = [_shard_field(d, p) for d, p in zip(datas, paths)]
    _same("models (model digest)", [(d.get("model") or {}).get("digest") for d in datas], paths)
    versions = [comparable_versions(d.get("versions")) for d in datas]
    for v, p in zip(versions[1:], paths[1:]):
        diff = sorted(k for k in set(v) | set(versions[0]) if v.get(k) != versions[0].get(k))
        if diff:
            k = diff[0]
            raise SdparityError(f"{p} and {paths[0]} are not shards of one run: different versions: {k} "
                                f"{_short(v.get(k))} vs {_short(versions[0].get(k))}"
                                + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""))
    _same("shard counts", [s["count"] for s in shards], paths)
    _same("selections of stages and backends", [s["selection"] for s in shards], paths)
    _same("seeds", [s["seed"] for s in shards], paths)
    _same("latent sizes", [s["latent"] for s in shards], paths)
    _same("injected faults", [d.get("faults") or [] for d in datas], paths)
    scoped = [(d["model_scope"], p) for d, p in zip(datas, paths) if d.get("model_scope")]  # none if no units
    _same("model scopes", [sc for sc, _ in scoped], [p for _, p in scoped])
    n = shards[0]["count"]
    seen: dict[int, Path] = {}
    for s, p in zip(shards, paths):
        if s["index"] in seen:
            raise SdparityError(f"shard {s['index']}/{n} is given twice: {seen[s['index']]} and {p}")
        seen[s["index"]] = p
    missing = [i for i in range(1, n + 1) if i not in seen]
    if missing:
        raise SdparityError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing[:10])}"
                            f"{' ...' if len(missing) > 10 else ''} missing: {len(paths)} of {n} given")

    owner: dict[tuple, Path] = {}
    results, images, not_merged, backends = [], {}, [], {}
    for d, s, p in zip(datas, shards, paths):
        mine = {tuple(u) for u in s["units"]}
        keys = set()
        for r in d["results"]:
            if (r["stage"], r["backend"]) not in mine:
                raise SdparityError(f"{p}: a record of {r['stage']}/{r['backend']} is outside its shard's units")
            keys.add(_key(r))
        for k in keys:
            if k in owner:
                raise SdparityError(f"{p} and {owner[k]} overlap: both hold the check "
                                    f"{' / '.join(str(x) for x in k if x is not None)}")
            owner[k] = p
        results += d["results"]
        for name, facts in (d.get("backends") or {}).items():
            backends.setdefault(name, facts)
        _read_images(d, p, images, not_merged)

    first = datas[0]
    merged = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "model": first.get("model"),
        "versions": first.get("versions"),
        "machine": first.get("machine"),
        "backends": backends,
        "faults": first.get("faults") or [],
        "results": order_results(results, shards[0]["selection"]),
        "merged_from": [str(p) for p in paths],
        "shards": sorted(({"index": s["index"], "path": str(p), "created": d.get("created"),
                           "machine": d.get("machine"), "units": s["units"]}
                          for d, s, p in zip(datas, shards, paths)), key=lambda x: x["index"]),
    }
    if scoped:
        merged["model_scope"] = scoped[0][0]
    errors = [f"shard {s['index']}/{n}: {d['error']}" for d, s in zip(datas, shards) if d.get("error")]
    if errors:
        merged["error"] = "; ".join(errors)
    if not_merged:
        merged["images_not_merged"] = not_merged
    return merged, images


def write_merged(paths: list[Path], out: Path) -> dict:
    """Merge and write ``out`` (atomically, with its images folder); returns the written data."""
    from sdparity.reports.report import Report

    data, images = merge(paths)
    report = Report.__new__(Report)  # not __init__: its environment facts would be this machine's
    report.data, report.images = data, images
    report.write(Path(out))
    return report.data


def cmd_merge(args) -> int:
    from sdparity.reports.html import write_html
    from sdparity.reports.table import print_table

    data = write_merged(args.shards, args.out)
    print_table(data)
    s = data["summary"]
    print(f"merged {len(args.shards)} shard(s), {len(data['results'])} records ("
          + ", ".join(f"{v} {k}" for k, v in s.items() if v) + f"): {args.out}")
    if data.get("images_not_merged"):
        print(f"sdparity: {len(data['images_not_merged'])} image(s) of the shards could not be read and are "
              f"not in the merged report (images_not_merged)", file=sys.stderr)
    print(f"html: {write_html(args.out)}")
    return 0


def add_parser(sub) -> None:
    from sdparity.args import report_file

    m = sub.add_parser("merge", help="merge the reports of 'check --shard K/N' runs into one report",
                       description="Merge the shard reports of one check run (every shard 1..N once, one "
                       "model, one set of versions, one selection) into one sdparity.report/1 report, with "
                       "the summary recomputed and the shards' images copied; writes OUT.html beside it. "
                       "Exit 0 when written (the verdict is the gate's or the shards'), 2 when the shards do "
                       "not belong together. docs/ci.md.")
    m.add_argument("out", type=report_file, metavar="OUT.json", help="the merged report (written atomically)")
    m.add_argument("shards", type=Path, nargs="+", metavar="SHARD.json", help="the shard reports")
    m.set_defaults(handler=cmd_merge)
