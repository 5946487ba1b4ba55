"""The one check driver: for every stage, build on every backend (through the cache), run each
case, judge it with the one comparison (sdparity.compare), record the result; prove a failure
``known`` by rebuilding it with the known issues' neutralizers; judge the suite's own kernels in
the build. Stage-major, so each reference is computed once and shared by every backend. A
``Mode`` changes only how stages are built and judged (the f16 mode)."""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sdparity import known_issues
from sdparity.cache import BuildCache
from sdparity.compare import compare
from sdparity.errors import Progress, SdparityError, one_line  # noqa: F401  (Progress re-exported)
from sdparity.reports.report import Report
from sdparity.tolerances import lookup


def judge_by_table(st, spec, backend: str, scope, case_label, cand, ref, ref_floor):
    """The default rule: the tolerance table and the calibrated floor budget (sdparity.tolerances),
    against the float32 reference, its float64 twin as the noise floor."""
    tol = lookup(st.name, spec.name, backend, scope, case_label)
    return compare(cand, ref, tol, ref_floor, integer=spec.integer), tol


@dataclass(frozen=True)
class Mode:
    """How the one check driver builds and judges a stage. The default: the backend's build of
    the stage, judged against the float32 reference with the float64 one as its noise floor by
    the tolerance table (``judge_by_table``). Another mode (the f16 mode, commands/f16.py) changes
    the build (``transform`` of the StageIR, ``key`` added to the build key), the two references
    (``references``: the one compared with, the one that gives the floor), the rule (``judge``:
    returns the one Metrics type and the Tolerance applied) and fields every record carries.
    A tier that runs what was prepared elsewhere (the CUDA device half, sdparity.gpu.cuda)
    gives its own ``cases`` (the carried inputs, references computed where it runs) beside a
    backend whose ``build_cached`` loads the prepared artifact."""

    name: str = "default"
    references: tuple[str, str] = ("float32", "float64")
    judge: Callable = judge_by_table
    transform: Callable | None = None  # StageIR -> StageIR, before the backend's build
    key: Callable | None = None  # () -> dict merged into the build key
    extra: dict = field(default_factory=dict)  # fields every record of this mode carries
    own_kernels: bool = True  # judge the suite's own kernels the build holds (check/own_kernels)
    prove_known: bool = True  # known issues' proofs by neutralized builds
    cases: Callable | None = None  # (stage, model, variant, seed) -> cases; default: the stage's own


DEFAULT = Mode()


def open_sessions(backends, stack: contextlib.ExitStack, log) -> tuple[dict, dict]:
    """Start a session (a runner) for every backend that can run here, inside ``stack``.
    Returns ({name: runner}, {name: ("skip", why) | ("error", why)}) for the others: a backend
    that is unavailable here is a skip, one that fails to start is an error."""
    sessions, problems = {}, {}
    for b in backends:
        reason = b.unavailable_reason()
        if reason:
            log(f"[{b.name}] skipped: {reason}")
            problems[b.name] = ("skip", reason)
            continue
        try:
            sessions[b.name] = stack.enter_context(b.session())
        except SdparityError as e:
            log(f"[{b.name}] cannot start: {e}")
            problems[b.name] = ("error", str(e))
    return sessions, problems


def run_checks(stages, backends, model, report: Report, cache: BuildCache, seed: int = 0,
               log: Progress | None = None, variants: dict | None = None, localize: bool = False,
               neutralize: list[str] | None = None, mode: Mode = DEFAULT, only_cases=None) -> Report:
    """``localize``: name the first diverging kernel of each failing stage (sdparity.check.localize).
    ``neutralize``: known issues neutralized in every build of a stage with model weights (the
    calibration measures the suite without its known bugs: compile/neutralize.py). ``mode``: how
    stages are built and judged (``Mode``; default: as `sdparity check`). ``only_cases``: run
    only the cases with these labels (each must exist)."""
    log = log or Progress()
    scope = model.scope if model is not None else "tiny"  # from the architecture, not the name
    report.data["model_scope"] = scope  # records carry it (tolerances and known issues use it)
    with contextlib.ExitStack() as stack:
        sessions, problems = open_sessions(backends, stack, log)
        for b in backends:
            if b.name in sessions:
                report.data["backends"][b.name] = b.describe_session(sessions[b.name])
                continue
            verdict, message = problems[b.name]
            for st in stages:
                report.add(stage=st.name, backend=b.name, device_class=b.device_class, case=None,
                           function=None, output=None, shapes=None, verdict=verdict,
                           message=message, metrics=None, tolerance=None, timings=None, **mode.extra)
        live = [b for b in backends if b.name in sessions]
        for st in stages:
            variant = (variants or {}).get(st.name) or st.default_variant(model)
            if neutralize and st.component:
                variant = {**variant, "neutralize": sorted(neutralize)}
            try:
                cases = (mode.cases or (lambda st, *a: st.cases(*a)))(st, model, variant, seed)
                if only_cases is not None:
                    missing = set(only_cases) - {c.label for c in cases}
                    if missing:
                        raise SdparityError(f"stage {st.name} has no case {sorted(missing)[0]}")
                    cases = [c for c in cases if c.label in only_cases]
                for c in cases:
                    _check_inputs(st, c)
            except SdparityError:
                raise
            except Exception as e:
                for b in live:
                    _error(report, st, b, None, f"could not make inputs: {one_line(e)}")
                continue
            refs: dict[str, tuple] = {}
            for b in live:
                _run_stage(st, b, sessions[b.name], model, variant, cases, refs, report, cache, scope, log,
                           localize, mode)
    return report


def _check_inputs(stage, case) -> None:
    if stage.accepts_nonfinite:
        return
    for i, a in enumerate(case.inputs):
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise SdparityError(f"stage {stage.name} case {case.label}: input {i} contains NaN or Inf")


def _error(report, st, b, case, message, timings=None, extra: dict | None = None):
    return report.add(stage=st.name, backend=b.name, device_class=b.device_class,
                      case=None if case is None else case.label, function=None if case is None else case.function,
                      output=None, shapes=None if case is None else case.shapes, verdict="error",
                      message=message, metrics=None, tolerance=None, timings=timings, **(extra or {}))


def _build(st, b, model, variant, cache, log, mode: Mode = DEFAULT):
    """(artifact, meta, build seconds, cached) or raises (SdparityError for a corrupt cache)."""
    t0 = time.perf_counter()

    def ir():
        built = st.build_ir(model, variant)
        return mode.transform(built) if mode.transform else built

    key = {**st.build_key(model, variant), **(mode.key() if mode.key else {})}
    label = f"{st.name}/{b.name}" + ("" if mode.name == "default" else f"/{mode.name}")
    art, meta, cached = b.build_cached(ir, key, cache, log=log, label=label)
    return art, meta, time.perf_counter() - t0, cached


def _run_stage(st, b, runner, model, variant, cases, refs, report, cache, scope, log, localize=False,
               mode: Mode = DEFAULT):
    tag = f"[{b.name}] {st.name}" + ("" if mode.name == "default" else f" {mode.name}")
    log(f"{tag}: building {variant or ''}".rstrip())
    try:
        art, meta, build_s, cached = _build(st, b, model, variant, cache, log, mode)
    except Exception as e:
        if isinstance(e, SdparityError) and "corrupt" in str(e):
            raise
        why = str(e) if isinstance(e, SdparityError) else one_line(e)
        log(f"{tag}: build failed: {why}")
        if not isinstance(e, SdparityError) and log and not log.quiet:
            traceback.print_exc(limit=3)
        rec = _error(report, st, b, None, f"build failed: {why}", extra=mode.extra)
        if mode.prove_known:
            _prove_known(st, b, runner, model, variant, cases, refs, [rec], cache, scope, log)
        return
    log(f"{tag}: {'cached build reused' if cached else 'built'} in {build_s:.1f}s"
        + (f" (original build {meta.get('build_s')}s)" if cached else "") + f" -> {art}")
    timing = {"build_s": round(build_s, 3), "build_cached": cached, "original_build_s": meta.get("build_s")}
    failed = []
    for case in cases:
        for rec in check_case(st, b, runner, art, case, refs, scope, dict(timing), log, mode):
            image = rec.pop("_image", None)
            rec = report.add(**rec)
            if image is not None:
                from sdparity.reports.images import attach

                attach(report, rec, *image)
            if rec["verdict"] in ("fail", "error"):
                failed.append(rec)
    if mode.prove_known:
        _prove_known(st, b, runner, model, variant, cases, refs, failed, cache, scope, log)
    failed = [r for r in failed if r["verdict"] != "known"]  # a proven known bug needs no localizing
    if failed and localize:  # name the first diverging kernel of the first failing case
        from sdparity.check.localize import localize_check

        case = next(c for c in cases if c.label == failed[0]["case"])
        loc = localize_check(st, b, art, model, variant, case, log)
        for rec in failed:
            if rec["case"] == case.label:
                rec["localization"] = loc
    if mode.own_kernels and meta.get("own_kernels"):  # the suite's own kernels, each alone
        from sdparity.check.own_kernels import check

        check(st, b, runner, meta["own_kernels"], report, cache, log=log)


def check_case(st, b, runner, art, case, refs, scope, timings, log, mode: Mode = DEFAULT) -> list[dict]:
    """Run one case of a built stage and judge each output by the mode's rule: the records (not
    yet in a report). ``refs`` memoizes the mode's two references by case label across backends."""
    tag = f"[{b.name}] {st.name}" + ("" if mode.name == "default" else f" {mode.name}")
    base = dict(stage=st.name, backend=b.name, device_class=b.device_class, case=case.label,
                function=case.function, shapes=case.shapes, model_scope=scope, timings=timings, **mode.extra)

    def error(message, output=None):
        log(f"{tag} {case.label}: ERROR {message}")
        return [dict(base, output=output, verdict="error", message=message, metrics=None, tolerance=None)]

    try:
        t1 = time.perf_counter()
        outs = runner.run(art, case.function, case.inputs)
        timings["run_s"] = round(time.perf_counter() - t1, 4)
        if case.label not in refs:
            t2 = time.perf_counter()
            r32 = case.reference(mode.references[0])
            t3 = time.perf_counter()
            r64 = case.reference(mode.references[1])
            refs[case.label] = (r32, r64, round(t3 - t2, 4))
        r32, r64, timings["ref_s"] = refs[case.label]
    except SdparityError as e:
        return error(str(e))
    except Exception as e:
        return error(f"run failed: {one_line(e)}")
    if len(outs) != len(case.outputs):
        return error(f"backend returned {len(outs)} outputs, expected {len(case.outputs)}")
    return judge_case(st, b.name, b.device_class, case, outs, r32, r64, scope, timings, log, mode)


def judge_case(st, backend: str, device_class: str, case, outs, r32, r64, scope, timings, log,
               mode: Mode = DEFAULT) -> list[dict]:
    """The records of one case's outputs, each judged by the mode's rule: the one place a record
    is made from a comparison (``check_case``'s stages; a generation's embeddings, steps and
    image, app/pipeline.judge_generation)."""
    tag = f"[{backend}] {st.name}" + ("" if mode.name == "default" else f" {mode.name}")
    base = dict(stage=st.name, backend=backend, device_class=device_class, case=case.label,
                function=case.function, shapes=case.shapes, model_scope=scope, timings=timings,
                **mode.extra)
    run_s = f" ({timings['run_s']:.3f}s)" if timings and "run_s" in timings else ""
    records = []
    for spec, cand, ref, ref64 in zip(case.outputs, outs, r32, r64):
        try:
            m, tol = mode.judge(st, spec, backend, scope, case.label, cand, ref, ref64)
        except KeyError as e:  # an undeclared tolerance: this check cannot be judged
            message = str(e.args[0] if e.args else e)
            log(f"{tag} {case.label}: ERROR {message}")
            records.append(dict(base, output=spec.name, verdict="error", message=message, metrics=None,
                                tolerance=None))
            continue
        rec = dict(base, output=spec.name, verdict="pass" if m.passed else "fail", message=m.why,
                   metrics=m.to_json(), tolerance=tol.to_json(), integer=spec.integer,
                   failed_bound=m.failed_bound)
        if spec.image:
            rec["_image"] = (cand, ref)
        records.append(rec)
        floor = "n/a" if m.noise_floor is None else f"{m.noise_floor:.2g}"
        ratio = "" if m.floor_ratio is None else f" err/floor={m.floor_ratio:.3g}x" + (
            f" (budget {m.floor_budget:g}x)" if m.floor_budget is not None else "")
        log(f"{tag} {case.label} {spec.name}: {rec['verdict'].upper()} max_abs={m.max_abs:.3g} "
            f"floor={floor}{ratio}{run_s}")
    return records


def _prove_known(st, b, runner, model, variant, cases, refs, failed, cache, scope, log) -> None:
    """Known means proven (issue 22): a failing or erroring record is labelled ``known`` only
    when the same check, built with the neutralizers of every registered issue that pre-selects
    it (sdparity.known_issues.candidates), passes its normal tolerance and budget. Otherwise it
    stays a failure, and its message says what the neutralized build gave. A neutralized
    build's own failures may be pre-selected by further issues (a build error hid them): their
    neutralizers are added and the build made again, at most ``len(NEUTRALIZERS)`` times."""
    from sdparity.compile.neutralize import NEUTRALIZERS

    groups: dict[tuple, list] = {}
    for rec in failed:
        ids = tuple(sorted(i.id for i in known_issues.candidates(rec)))
        if ids:
            groups.setdefault(ids, []).append(rec)
    tag = f"[{b.name}] {st.name}"
    for ids, recs in groups.items():
        ids, redo, why = list(ids), {}, ""
        for _ in range(len(NEUTRALIZERS)):
            why = known_issues.no_neutralizer(ids)
            if why:
                break
            log(f"{tag}: {len(recs)} failing check(s) pre-selected by {', '.join(ids)}: rebuilding neutralized")
            try:
                art, _, _, _ = _build(st, b, model, {**(variant or {}), "neutralize": ids}, cache, log)
            except Exception as e:
                why = f"the neutralized build failed: {one_line(e)}"
                break
            redo = {c.label: check_case(st, b, runner, art, c, refs, scope, {}, log) for c in cases
                    if any(rec["case"] in (None, c.label) for rec in recs)}
            more = {i.id for rs in redo.values() for r in rs for i in known_issues.candidates(r)} - set(ids)
            if not more:
                break
            ids = sorted(set(ids) | more)
        for rec in recs:
            again = [r for c, rs in redo.items() if rec["case"] in (None, c) for r in rs
                     if rec["case"] is None or rec.get("output") in (None, r["output"])]
            known_issues.settle(rec, ids, why, again)
            log(f"{tag} {rec.get('case') or ''} {rec.get('output') or ''}: {rec['verdict'].upper()} "
                f"after neutralizing {', '.join(ids)}")
