"""sdparity command line. `sdparity --help` and `sdparity COMMAND --help` explain everything.

Exit status: 0 all checks passed; 1 a check failed or errored; 2 bad input (one-line error).
"""

from __future__ import annotations

import argparse
import os
import sys

from sdparity.errors import SdparityError

from sdparity.args import (  # noqa: F401  (re-exported: tests and docs name them here)
    DEFAULT_REPORT, Parser, add_model_args, backend_list, check_model_arg, existing_file, latent_hw,
    load_selection, out_file, port_arg, positive_int, report_file, seed_arg, shard_arg, stage_list)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="sdparity",
        description="Numerical parity of TVM-compiled Stable Diffusion stages (native and WebGPU) "
        "against PyTorch/diffusers. Each stage is built per backend, run on generated inputs, and "
        "compared with the diffusers reference against a declared tolerance; the float32 noise "
        "floor of the reference (float64 vs float32) is reported next to every error.",
        epilog="Models: 'tiny' (default; seeded random SD 1.x, made locally), 'tiny-sd2', 'tiny-sdxl' "
        "(SD 2.x and SDXL architectures, the same way), 'sd15-random', 'sd21-random', 'sdxl-random' (full "
        "SD 1.5, SD 2.1 and SDXL base architectures, random weights) or a local diffusers folder (its "
        "architecture read from its configs). Cache: $SDPARITY_CACHE (default ~/.cache/sdparity).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="build, run and compare stages; write a JSON report",
                       description="Build every selected stage for every selected backend, run it, "
                       "compare with the PyTorch reference, print a table, write the report. Exit 0 "
                       "only when every check passes.")
    c.add_argument("--stages", type=stage_list, default=None, help="comma-separated stages (default: all)")
    c.add_argument("--backends", type=backend_list, default=["llvm"], help="comma-separated: "
                   "llvm,cuda,vulkan,webgpu (default: llvm)")
    add_model_args(c)
    c.add_argument("--report", type=report_file, default=DEFAULT_REPORT, help=f"JSON report path "
                   f"(default: {DEFAULT_REPORT}); written atomically")
    c.add_argument("--seed", type=seed_arg, default=0, help="seed of generated inputs, 0..2^32-1 (default 0)")
    c.add_argument("--latent", type=latent_hw, default=None, help="latent HxW for unet/vae "
                   "(default: the model's sample_size)")
    c.add_argument("--rebuild", action="store_true", help="ignore cached builds")
    c.add_argument("--inject-fault", action="append", default=[], metavar="STAGE:FAULT",
                   help="build STAGE deliberately wrong (see 'sdparity stages'); the check must fail")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    c.add_argument("--no-localize", action="store_true", help="do not localize failing stages to a kernel "
                   "(sdparity.check.localize; costs one more build per failing stage)")
    c.add_argument("--shard", type=shard_arg, default=None, metavar="K/N", help="run only shard K of N: "
                   "every N-th (stage, backend) pair, from the K-th (stages, then backends, in registry "
                   "order); 'sdparity merge' joins the N reports (docs/ci.md)")

    sub.add_parser("stages", help="list stages, their outputs, tolerances and injectable faults")

    from reference.models import BUILTIN_MODELS

    m = sub.add_parser("make-model", help=f"create a built-in model folder ({' | '.join(BUILTIN_MODELS)})")
    m.add_argument("kind", choices=list(BUILTIN_MODELS))

    k = sub.add_parser("cache", help="show or clear the build cache")
    k.add_argument("action", choices=["path", "clear"])
    _extensions(sub)
    return p


def _extensions(sub) -> None:
    """Commands that live in their own modules, each registering its subcommands. Imported here
    explicitly (no import by name): the modules import ``sdparity.args``, never this one."""
    from sdparity.app import serve
    from sdparity.check import localize
    from sdparity.commands import bench, calibrate, f16, versions_env
    from sdparity.reports import gate, html, merge

    for module in (gate, html, merge, bench, serve, versions_env, calibrate, localize, f16):
        module.add_parser(sub)


def cmd_check(args) -> int:
    from sdparity.cache import BuildCache
    from sdparity.reports.report import Report
    from sdparity.reports.table import print_table
    from sdparity.runner import Progress, run_checks

    from sdparity.files import check_cache_root

    check_cache_root()  # read-only, a file, or full: one line before any work
    log = Progress(quiet=args.quiet)
    model, selected, backends, variants = load_selection(args, log)
    report = Report(model)
    report.data["faults"] = args.inject_fault
    runs = [(selected, backends)]
    if args.shard:  # this shard's (stage, backend) units, one runner call per backend set
        runs = _shard(args, selected, backends, report)
    cache = BuildCache(rebuild=args.rebuild)
    for stages, bes in runs:
        run_checks(stages, bes, model, report, cache, seed=args.seed, log=log, variants=variants,
                   localize=not args.no_localize)
    if args.shard:
        from sdparity.reports.merge import order_results

        report.data["results"] = order_results(report.results, report.data["shard"]["selection"])
    report.write(args.report)
    print_table(report.data)
    print(f"report: {args.report}")
    from sdparity.reports.html import write_html  # the HTML page beside the JSON (docs/gate.md)
    print(f"html: {write_html(args.report)}")
    _say_why_nothing_ran(report.data)
    if args.shard and not runs:
        return 0  # an empty shard is not a failure (_shard said so)
    return 0 if report.ok else 1


def _shard(args, selected, backends, report) -> list:
    """The runner calls of ``--shard K/N`` (sdparity.reports.merge.plan); records the shard in
    the report and says so when it has no units."""
    from sdparity.backends import names as backend_names
    from sdparity.registry import all_stages
    from sdparity.reports.merge import plan

    k, n = args.shard
    runs, shard = plan(k, n, selected, backends, list(all_stages()), backend_names(), args.seed, args.latent)
    report.data["shard"] = shard
    if not runs:
        print(f"shard {k}/{n}: no units of work (the selection has {len(shard['selection'])} (stage, backend) "
              f"pairs for {n} shards): nothing to check, an empty report is written")
    return runs


def _say_why_nothing_ran(data: dict) -> None:
    """When every check was skipped, one line on stderr says why (also with --quiet)."""
    results = data.get("results") or []
    if not results or any(r.get("verdict") != "skip" for r in results):
        return
    why = {}
    for r in results:
        why.setdefault(r.get("backend"), r.get("message") or "unavailable")
    print("sdparity: nothing was checked: every selected backend was skipped here ("
          + "; ".join(f"{b}: {m}" for b, m in why.items()) + ")", file=sys.stderr)


def cmd_stages(args) -> int:
    from sdparity.registry import all_stages
    from sdparity.tolerances import TABLE, calibration, floor_budget

    groups = calibration().get("groups", {})
    for s in all_stages().values():
        print(f"{s.name}: {s.description}")
        for o in s.outputs:
            for (st, out, be, scope), tol in TABLE.items():
                if st == s.name and out == o.name:
                    print(f"    {o.name} [{be}, {scope}] atol={tol.atol:g} rtol={tol.rtol:g}"
                          + (f" mismatch<={tol.mismatch_frac:g}" if o.integer else "") + f": {tol.reason}")
            for key in groups:  # calibrated err/floor budgets (sdparity/calibration.json)
                st, out, be, scope = key.split("/")
                budget, note, _ = floor_budget(st, out, be, scope) if (st, out) == (s.name, o.name) else (None,) * 3
                if budget is not None:
                    print(f"    {o.name} [{be}, {scope}] err/floor <= {budget:g}x ({note}; per-case budgets "
                          f"may be tighter)")
        for f, what in s.faults.items():
            print(f"    fault {s.name}:{f}: {what}")
    return 0


def cmd_make_model(args) -> int:
    from reference.models import ensure_builtin

    print(ensure_builtin(args.kind))
    return 0


def cmd_cache(args) -> int:
    from sdparity.cache import BuildCache

    cache = BuildCache()  # $SDPARITY_CACHE/builds (sdparity.files.cache_root; empty = unset)
    if args.action == "path":
        print(cache.root)
    else:
        n = cache.clear()  # SdparityError (exit 2, one line) when something could not be removed
        busy = f"; {cache.in_use} in use by a running sdparity, left" if cache.in_use else ""
        print(f"removed {n} entries from {cache.root}{busy}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = getattr(args, "handler", None) or globals()[f"cmd_{args.command.replace('-', '_')}"]
    try:
        return handler(args)
    except SdparityError as e:
        print(f"sdparity: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdparity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
