"""`sdparity calibrate`: measure err/floor of the clean suite over N seeds; the floor budgets
of sdparity.tolerances come from what this writes.

For every check group (stage, output, backend, model scope) it records the largest
err/floor (max |cand - ref| / max |ref64 - ref32|) of each seed, with the TVM version,
machine, date and command, into the one committed file ``sdparity/calibration.json``
(written atomically; groups not measured in this run are kept), and the worst of each case
label. Every build is made with the known issues neutralized (compile/neutralize.py), so no
budget absorbs a known bug. A group gets ``rule: "floor"`` when its outputs are floats with a non-negligible floor
(compare.NEGLIGIBLE_FLOOR), else ``rule: "absolute"`` with the reason. Checks with verdict
``known`` (sdparity.known_issues) are left out: a known bug is not the clean suite.

``--validate`` writes nothing: every check is judged with the committed budgets (the floor
bound again from its recorded metrics, so ``--from-reports`` re-judges an earlier run) and each
group's check nearest its budget is printed (held-out seeds: any failure is a false alarm).
Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SCHEMA = "sdparity.calibration/1"


def _seeds(s: str) -> list[int]:
    """"5" -> 0..4; "5-9" -> 5..9; "1,3,7" -> those."""
    try:
        if "-" in s:
            a, b = (int(x) for x in s.split("-"))
            seeds = list(range(a, b + 1))
        elif "," in s:
            seeds = [int(x) for x in s.split(",") if x.strip()]
        else:
            seeds = list(range(int(s)))
    except ValueError:
        raise argparse.ArgumentTypeError("expected a count (5), a range (5-9) or a list (1,3,7)") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError("seeds must be non-negative and at least one")
    return seeds


def group_records(results: list[dict]) -> dict[str, list[dict]]:
    from sdparity.tolerances import group_key

    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("output") is None or r.get("own_kernel"):  # own kernels have their own rule (tolerances)
            continue
        key = group_key(r["stage"], r["output"], r["backend"], r.get("model_scope") or "tiny")
        groups.setdefault(key, []).append(r)
    return groups


def summarize_group(recs_by_seed: dict[int, list[dict]]) -> dict:
    """One calibration group from its records, per seed."""
    from sdparity.compare import NEGLIGIBLE_FLOOR

    first = next(iter(recs_by_seed.values()))[0]
    out = {"stage": first["stage"], "output": first["output"], "backend": first["backend"],
           "model_scope": first.get("model_scope") or "tiny", "seeds": sorted(recs_by_seed)}
    metrics = [r.get("metrics") or {} for recs in recs_by_seed.values() for r in recs]
    rels = [m.get("floor_rel") or 0.0 for m in metrics]
    out["checks_per_seed"] = len(metrics) // len(recs_by_seed)
    if first.get("integer"):
        out.update(rule="absolute", why="integer output (pixels, packed RGBA): exact or mismatch-budget rule")
        return out
    real = {sd: [r for r in recs if ((r.get("metrics") or {}).get("floor_rel") or 0.0) > NEGLIGIBLE_FLOOR]
            for sd, recs in recs_by_seed.items()}
    if not any(real.values()):
        nonzero = [x for x in rels if x]
        out.update(rule="absolute", floor_rel_max=max(nonzero, default=None),
                   why=("no float32 noise floor (bit-exact reference)" if not nonzero else
                        f"negligible floor: noise floor / max|ref| at most {max(nonzero):.2g} <= "
                        f"{NEGLIGIBLE_FLOOR:.2g} (half a float32 ulp): err/floor would count sub-ulp noise")
                   + "; the absolute rule alone")
        return out
    per_seed = [max((r["metrics"]["floor_ratio"] or 0.0 for r in real[s]), default=0.0) for s in out["seeds"]]
    kept = [r["metrics"]["floor_rel"] for recs in real.values() for r in recs]
    out.update(rule="floor", per_seed_max=[round(x, 3) for x in per_seed], max=round(max(per_seed), 3),
               min=round(min(per_seed), 3),
               spread=round(max(per_seed) / min(per_seed), 3) if min(per_seed) > 0 else None,
               negligible_floor_checks=sum(len(recs) - len(real[sd]) for sd, recs in recs_by_seed.items()),
               floor_rel_min=min(kept), floor_rel_max=max(kept))
    cases: dict[str, float] = {}  # per case label: its worst over the seeds (cases differ: CFG
    for recs in real.values():    # 7.5 amplifies the floor, guidance 1 does not)
        for r in recs:
            cases[str(r.get("case"))] = round(max(cases.get(str(r.get("case")), 0.0), r["metrics"]["floor_ratio"] or 0.0), 3)
    if out["max"] > 0:  # a bit-exact group gets the minimum budget for every case anyway
        out["cases"] = dict(sorted(cases.items()))
    return out


def calibrate(results_by_seed: dict[int, list[dict]], measured: dict) -> dict:
    """{group key: group} from the records of every seed."""
    per_group: dict[str, dict[int, list[dict]]] = {}
    for seed, results in results_by_seed.items():
        for key, recs in group_records([r for r in results if r["verdict"] != "known"]).items():
            per_group.setdefault(key, {})[seed] = recs
    return {k: {**summarize_group(v), "measured": measured} for k, v in sorted(per_group.items())}


def write_calibration(groups: dict, path: Path) -> dict:
    """Merge ``groups`` into the calibration file at ``path`` (other groups kept); atomic."""
    from sdparity.reports.report import write_atomic

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        data = {}
    data["schema"] = SCHEMA
    data["about"] = ("observed err/floor per check group; sdparity/tolerances.py derives the floor "
                     "budgets from it. Regenerate with the command in each group's 'measured'.")
    data.setdefault("groups", {}).update(groups)
    data["groups"] = dict(sorted(data["groups"].items()))
    write_atomic(Path(path), json.dumps(data, indent=1) + "\n")
    return data


def run_seeds(args, log) -> dict[int, list[dict]]:
    from sdparity.cache import BuildCache
    from sdparity.args import load_selection
    from sdparity.reports.report import Report
    from sdparity.runner import run_checks

    model, stages, backends, _ = load_selection(args, log)
    cache = BuildCache()
    out = {}
    for seed in args.seeds:
        t0 = time.time()
        report = Report(model)
        if not args.validate:
            report.data["neutralized"] = calibration_neutralizers()
        # calibration measures the suite with its known bugs neutralized; --validate judges the
        # builds as `sdparity check` makes them (a known bug then has to be proven, not budgeted)
        neutralize = None if args.validate else calibration_neutralizers()
        if args.pipeline:  # one generation per backend (sdparity.app.pipeline), not the stage checks
            from sdparity.app.pipeline import generation_records

            report.data["model_scope"] = model.scope
            for b in backends:
                for rec in generation_records(b, model, cache, seed, model.default_latent_hw, log=log,
                                              neutralize=neutralize, scheduler=args.scheduler):
                    report.add(**rec)
        else:
            run_checks(stages, backends, model, report, cache, seed=seed, log=log, neutralize=neutralize)
        if args.report_dir:
            report.write(Path(args.report_dir) / f"calibrate-seed{seed}.json")
        s = report.summary()
        print(f"seed {seed}: {s} ({time.time() - t0:.0f}s)", flush=True)
        out[seed] = report.results
    return out


def calibration_neutralizers() -> list[str]:
    """Every known issue a check can meet, neutralized while calibrating (issue 22): a budget
    calibrated on top of a known bug (the WebGPU UNet's unreduced sin/cos: 19.6x the floor at
    guidance 1, budget 58.8x) would let a new bug of that size pass."""
    from sdparity.compile.neutralize import NEUTRALIZERS

    return sorted(NEUTRALIZERS)


def from_reports(folder: Path) -> tuple[dict[int, list[dict]], dict]:
    """The records of the ``calibrate-seed<N>.json`` reports a run wrote with --report-dir."""
    from sdparity.reports.report import load

    results, first = {}, None
    for path in sorted(Path(folder).glob("calibrate-seed*.json")):
        data = load(path)
        first = first or data
        results[int(path.stem.removeprefix("calibrate-seed"))] = data["results"]
    if not results:
        from sdparity.errors import SdparityError

        raise SdparityError(f"no calibrate-seed*.json reports in {folder}")
    return results, first


def cmd_calibrate(args) -> int:
    from sdparity.reports.report import machine, versions
    from sdparity.errors import Progress

    log = Progress(quiet=args.quiet)
    if args.scheduler != "dpm" and not args.pipeline:
        from sdparity.errors import SdparityError

        raise SdparityError(f"--scheduler {args.scheduler} needs --pipeline: it picks a generation's scheduler "
                            f"(the scheduler stages are calibrated with --stages)")
    if args.from_reports:
        results, data = from_reports(args.from_reports)
        v, mach, date = data.get("versions") or {}, data.get("machine"), str(data.get("created"))[:10]
        args.model = (data.get("model") or {}).get("name") or args.model
        argv = [str(a) for a in data.get("argv") or []]
        args.argv_tail = argv[argv.index("calibrate") + 1:] if "calibrate" in argv else args.argv_tail
        command = None if "calibrate" in argv else " ".join(argv)  # e.g. the CUDA tier's device run
        neutralized = data.get("neutralized") or []
        cards = sorted({str(b.get("torch_device") or b.get("device_name")) for b in (data.get("backends") or {}).values()
                        if isinstance(b, dict) and (b.get("torch_device") or b.get("device_name"))})
    else:
        results = run_seeds(args, log)
        v, mach, date = versions(), machine(), time.strftime("%Y-%m-%d")
        command, neutralized, cards = None, calibration_neutralizers(), []
    if args.validate:
        return _print_validation(results)
    bad = [r for recs in results.values() for r in recs if r["verdict"] in ("fail", "error")]
    measured = {"apache-tvm": v.get("apache-tvm"), "torch": v.get("torch"), "diffusers": v.get("diffusers"),
                "machine": mach, "date": date, "model": args.model, "neutralized": neutralized,
                "command": command or "sdparity calibrate " + " ".join(args.argv_tail)}
    if cards:
        measured["card"] = cards[0] if len(cards) == 1 else cards
    groups = calibrate(results, measured)
    # own-kernel records have their own rule and are no calibration input (group_records)
    broken = [r for r in bad if (r.get("metrics") or {}).get("failed_bound") not in ("floor",)
              and not r.get("own_kernel")]
    if broken:  # a build outside its absolute tolerance is no clean suite: do not learn from it
        for r in broken[:10]:
            print(f"not clean: {r['stage']}/{r['backend']}/{r.get('case')}/{r.get('output')}: {r['message']}")
        print(f"calibration NOT written: {len(broken)} checks fail their absolute tolerance or error")
        return 1
    write_calibration(groups, args.out)
    for k, g in groups.items():
        spread = "-" if g.get("spread") is None else f"{g['spread']}x"
        tail = (f"max {g['max']}x (per seed {g['per_seed_max']}, spread {spread})" if g["rule"] == "floor"
                else g["why"])
        print(f"{k:<44} {g['rule']:<9} {tail}")
    print(f"wrote {len(groups)} groups to {args.out}")
    return 0


def judge(r: dict) -> str | None:
    """The bound a recorded check fails under the committed budgets (None: passes). The abs
    bound is as recorded; the floor bound is judged again from the recorded metrics, so
    reports measured before a recalibration can be validated against it (--from-reports)."""
    from sdparity.compare import NEGLIGIBLE_FLOOR
    from sdparity.tolerances import floor_budget

    if r["verdict"] in ("error", "skip", "known") or not r.get("metrics"):
        return "error" if r["verdict"] == "error" else None  # known: explained, counted apart
    m = r["metrics"]
    abs_bad = (m.get("failed_bound") or r.get("failed_bound") or "") not in ("", "floor")
    budget = None
    if not r.get("integer") and (m.get("floor_rel") or 0.0) > NEGLIGIBLE_FLOOR:
        budget = floor_budget(r["stage"], r["output"], r["backend"], r.get("model_scope") or "tiny", r.get("case"))[0]
    floor_bad = budget is not None and (m.get("floor_ratio") or 0.0) > budget
    return "abs+floor" if abs_bad and floor_bad else "abs" if abs_bad else "floor" if floor_bad else None


def _print_validation(results: dict[int, list[dict]]) -> int:
    from sdparity.tolerances import floor_budget

    bad = []
    for key, recs in sorted(group_records([r for rs in results.values() for r in rs]).items()):
        worst = None
        for r in recs:
            failed = judge(r)
            if failed:
                bad.append((r, failed))
            if r["verdict"] == "known":  # proven known: as built it is over budget by definition
                continue
            ratio = (r.get("metrics") or {}).get("floor_ratio")
            budget = floor_budget(r["stage"], r["output"], r["backend"], r.get("model_scope") or "tiny",
                                  r.get("case"))[0]
            if ratio is not None and (worst is None or ratio / (budget or 1e9) > worst[0] / (worst[1] or 1e9)):
                worst = (ratio, budget, r.get("case"))
        text = "-" if worst is None else (f"{worst[0]:.3g}x (case {worst[2]}, budget "
                                          f"{'-' if worst[1] is None else f'{worst[1]:g}x'})")
        print(f"{key:<44} nearest its budget: {text}; {len(recs)} checks, "
              f"{sum(1 for r, _ in bad if r in recs)} fail")
    for r, failed in bad:
        print(f"FAILS ({failed}): {r['stage']}/{r['backend']}/{r.get('case')}/{r.get('output')}: {r['message']}")
    n = sum(len(v) for v in results.values())
    known = sum(r["verdict"] == "known" for v in results.values() for r in v)
    print(f"{n} checks over seeds {sorted(results)}: {len(bad)} fail under the committed budgets"
          + (f" ({known} known-issue checks not counted)" if known else ""))
    return 1 if bad else 0


def add_parser(sub) -> None:
    from reference.pipeline import SCHEDULERS

    from sdparity.args import add_model_args, backend_list, out_file, stage_list
    from sdparity.tolerances import CALIBRATION

    c = sub.add_parser("calibrate", help="measure err/floor of the clean suite over seeds; write the "
                       "calibration file the floor budgets come from",
                       description=__doc__.split("\n\n")[1] + " " + __doc__.split("\n\n")[2])
    c.add_argument("--seeds", type=_seeds, default=list(range(5)),
                   help="count (5 = seeds 0..4, the default), range (5-9) or list (1,3,7)")
    c.add_argument("--backends", type=backend_list, default=["llvm"], help="comma-separated (default: llvm)")
    add_model_args(c)
    c.add_argument("--stages", type=stage_list, default=None, help="comma-separated stages (default: all)")
    c.add_argument("--out", type=out_file, default=CALIBRATION, help=f"calibration file (default: {CALIBRATION})")
    c.add_argument("--validate", action="store_true", help="judge with the committed budgets, write nothing "
                   "(use held-out seeds, e.g. --seeds 5-9)")
    c.add_argument("--pipeline", action="store_true", help="calibrate the whole generation (embeddings and "
                   "the latents after every step, against a float64 loop: sdparity.app.pipeline) instead of "
                   "the stage checks")
    c.add_argument("--scheduler", choices=SCHEDULERS, default="dpm", help="with --pipeline: the generation's "
                   "scheduler (default dpm; the others' generations have their own groups, stage "
                   "pipeline_<scheduler>, and step counts: sdparity.app.pipeline.SCHEDULER_STEPS)")
    c.add_argument("--report-dir", type=Path, default=None, help="also write each seed's report here")
    c.add_argument("--from-reports", type=Path, default=None, metavar="DIR", help="summarize the reports an "
                   "earlier run wrote with --report-dir instead of running the checks")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    c.set_defaults(handler=_with_argv)


def _with_argv(args) -> int:
    import sys

    argv = sys.argv[1:]
    args.argv_tail = argv[argv.index("calibrate") + 1:] if "calibrate" in argv else []
    return cmd_calibrate(args)
