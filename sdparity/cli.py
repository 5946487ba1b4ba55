"""sdparity command line. `sdparity --help` and `sdparity COMMAND --help` explain everything.

Exit status: 0 all checks passed; 1 a check failed or errored; 2 bad input (one-line error).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sdparity.errors import SdparityError

DEFAULT_REPORT = "sdparity-report.json"


class Parser(argparse.ArgumentParser):
    """Bad arguments give one line, ``sdparity: error: ...``, and exit 2 (no usage dump).
    Subcommand parsers inherit this class (argparse makes them with ``type(parent)``)."""

    def error(self, message):
        cmd = self.prog.partition(" ")[2]
        self.exit(2, f"sdparity: error: {cmd + ': ' if cmd else ''}{message} (see '{self.prog} --help')\n")


# ---- argument types: everything that can be checked from the command line alone is checked
# ---- while parsing, in well under a second, before any model load or build


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def latent_hw(s: str) -> list[int]:
    from reference.models import MAX_LATENT_SIDE  # 512 latent = 4096 pixels (docs/reliability.md)

    try:
        h, w = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 16x16, not {s!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"latent sizes must be positive, not {s!r}")
    if max(h, w) > MAX_LATENT_SIDE:
        raise argparse.ArgumentTypeError(f"latent side {max(h, w)} is over {MAX_LATENT_SIDE} ({MAX_LATENT_SIDE * 8} "
                                         f"pixels), the largest sdparity accepts")
    return [h, w]


def _int_in(lo: int, hi: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


seed_arg = _int_in(0, 2**32 - 1)  # seeds numpy and torch generators: both take 0..2^32-1
positive_int = _int_in(1, 2**31 - 1)
port_arg = _int_in(1, 65535)


def _names(s: str, what: str, known) -> list[str]:
    names = list(dict.fromkeys(_csv(s)))  # a repeated name is checked once (order kept)
    if not names:
        raise argparse.ArgumentTypeError(f"no {what} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown)}; {what}s are: {', '.join(known)}")
    return names


def stage_list(s: str) -> list[str]:
    from sdparity.registry import all_stages

    return _names(s, "stage", list(all_stages()))


def backend_list(s: str) -> list[str]:
    from sdparity.backends import names as backend_names

    return _names(s, "backend", backend_names())


def out_file(s: str) -> Path:
    """A file this process can create or replace (atomically: a temp file in its folder): nothing
    or a regular file there (never a device node, folder, FIFO...), in a folder where a file can
    be created (not read-only) with some room (sdparity.files.check_output)."""
    from sdparity.files import check_output

    p = Path(s)
    if not s or p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a folder, not a file path")
    try:
        check_output(p)
    except SdparityError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return p


def report_file(s: str) -> Path:
    """``check --report``: an out_file, and so must be what is written beside it: the HTML page
    (REPORT with .html) and the images folder (``<stem>_images/``: only sdparity's own is
    replaced, reports.images.images_dir_problem)."""
    from sdparity.reports.images import images_dir_problem

    p = out_file(s)
    if p.suffix.lower() == ".html":
        raise argparse.ArgumentTypeError(f"{s}: the HTML page is written beside the report as REPORT.html, "
                                         f"which would overwrite the report: use a .json name")
    page = p.with_suffix(".html")
    try:
        out_file(str(page))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"the HTML page beside the report, {page}: {e}") from None
    problem = images_dir_problem(p)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return p


def existing_file(s: str) -> Path:
    p = Path(s)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{s} is not an existing file")
    return out_file(s)  # it is rewritten


def check_model_arg(spec: str, allow_pickle: bool) -> None:
    """Refuse a bad --model before anything is built: a missing or malformed folder, pickle
    weights without --allow-pickle (file names only; nothing is imported or loaded)."""
    from reference.models import BUILTIN_MODELS, ModelError, validate_folder

    if spec in BUILTIN_MODELS:
        return
    try:
        validate_folder(Path(spec).expanduser().resolve(), allow_pickle)
    except ModelError as e:
        raise SdparityError(str(e)) from None


def add_model_args(p) -> None:
    p.add_argument("--model", default="tiny", help="tiny | sd15-random | PATH (default: tiny); a folder "
                   "is read as safetensors only")
    p.add_argument("--allow-pickle", action="store_true", help="also load pickle weights (.bin, .ckpt, "
                   ".pt, .pth) from a --model folder: pickle can run code, pass this only for a folder you trust")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="sdparity",
        description="Numerical parity of TVM-compiled Stable Diffusion stages (native and WebGPU) "
        "against PyTorch/diffusers. Each stage is built per backend, run on generated inputs, and "
        "compared with the diffusers reference against a declared tolerance; the float32 noise "
        "floor of the reference (float64 vs float32) is reported next to every error.",
        epilog="Models: 'tiny' (default; seeded random, made locally), 'sd15-random' (full SD 1.5 "
        "architecture, random weights) or a local diffusers SD 1.x folder. Cache: $SDPARITY_CACHE "
        "(default ~/.cache/sdparity).",
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
                   "(sdparity.tiers.localize; costs one more build per failing stage)")

    sub.add_parser("stages", help="list stages, their outputs, tolerances and injectable faults")

    m = sub.add_parser("make-model", help="create a built-in model folder (tiny | sd15-random)")
    m.add_argument("kind", choices=["tiny", "sd15-random"])

    k = sub.add_parser("cache", help="show or clear the build cache")
    k.add_argument("action", choices=["path", "clear"])
    _extensions(sub)
    return p


#: modules that add their own subcommands (each has ``add_parser(sub)``)
COMMAND_MODULES = (
    "sdparity.reports.gate",
    "sdparity.reports.html",
    "sdparity.tiers.bench",
    "sdparity.tiers.serve",
    "sdparity.tiers.versions_env",
    "sdparity.tiers.calibrate",
    "sdparity.tiers.opreplay",
    "sdparity.tiers.f16",
)


def _extensions(sub) -> None:
    """Commands that live in their own modules register here (an import error is a bug: raise)."""
    import importlib

    for modname in COMMAND_MODULES:
        importlib.import_module(modname).add_parser(sub)


def load_selection(args, log):
    """What check, bench and calibrate share: the --model (validated before anything is
    loaded), the --stages (with --inject-fault applied), the --backends and the --latent
    variants. Returns (model, stages, backends, variants)."""
    from reference.models import ModelError, load_model

    from sdparity.backends import get_backend
    from sdparity.registry import all_stages

    check_model_arg(args.model, args.allow_pickle)
    stages = all_stages()
    names = args.stages or list(stages)  # names were checked while parsing (stage_list)
    selected = [stages[n] for n in names]
    for spec in getattr(args, "inject_fault", None) or []:
        stage_name, _, fault = spec.partition(":")
        if stage_name not in names:
            raise SdparityError(f"--inject-fault {spec}: stage {stage_name!r} is not selected")
        idx = names.index(stage_name)
        try:
            selected[idx] = selected[idx].with_fault(fault)
        except ValueError as e:
            raise SdparityError(str(e)) from None
    backends = [get_backend(b) for b in args.backends]
    try:
        model = load_model(args.model, log=log, allow_pickle=args.allow_pickle)
    except ModelError as e:
        raise SdparityError(str(e)) from None
    variants = None
    if getattr(args, "latent", None):
        variants = {s.name: {**s.default_variant(model), "latent": args.latent}
                    for s in selected if "latent" in s.default_variant(model)}
    return model, selected, backends, variants


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
    run_checks(selected, backends, model, report, BuildCache(rebuild=args.rebuild), seed=args.seed,
               log=log, variants=variants, localize=not args.no_localize)
    report.write(args.report)
    print_table(report.data)
    print(f"report: {args.report}")
    from sdparity.reports.html import write_html  # the HTML page beside the JSON (docs/gate.md)
    print(f"html: {write_html(args.report)}")
    _say_why_nothing_ran(report.data)
    return 0 if report.ok else 1


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
