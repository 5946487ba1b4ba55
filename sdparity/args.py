"""Argument types and the model/stage/backend selection every command shares.

Everything that can be checked from the command line alone is checked while parsing, in well
under a second, before any model load or build. This module sits below the commands: they and
``sdparity.cli`` import it, it imports none of them.
"""

from __future__ import annotations

import argparse
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


MAX_SHARDS = 10000  # far beyond any CI matrix; keeps a typo like 2/20000000 from being taken


def shard_arg(s: str) -> tuple[int, int]:
    """``check --shard K/N``: shard K (1-based) of N. Which units of work a shard runs is
    sdparity.reports.merge.shard_units (every N-th, from the K-th; docs/ci.md)."""
    k, sep, n = s.partition("/")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected K/N (shard K of N, e.g. 2/4), not {s!r}")
    try:
        k, n = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N with integers K and N (e.g. 2/4), not {s!r}") from None
    if not 1 <= n <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"the shard count N in {s!r} is outside 1..{MAX_SHARDS}")
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"the shard index K in {s!r} is outside 1..{n} (shards count from 1)")
    return k, n


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
    p.add_argument("--model", default="tiny", help="tiny | tiny-sd2 | tiny-sdxl | sd15-random | sd21-random | "
                   "sdxl-random | PATH (default: tiny); a folder is read as safetensors only")
    p.add_argument("--allow-pickle", action="store_true", help="also load pickle weights (.bin, .ckpt, "
                   ".pt, .pth) from a --model folder: pickle can run code, pass this only for a folder you trust")


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


