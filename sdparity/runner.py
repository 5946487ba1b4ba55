"""Run checks: for every stage, build on every backend (through the cache), run each case,
compare with the reference, record the result. Stage-major, so each reference is computed
once and shared by every backend."""

from __future__ import annotations

import contextlib
import sys
import time
import traceback

import numpy as np

from sdparity import known_issues
from sdparity.cache import BuildCache
from sdparity.compare import compare
from sdparity.errors import Progress, SdparityError, one_line  # noqa: F401  (Progress re-exported)
from sdparity.reports.report import Report
from sdparity.tolerances import lookup






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
               log: Progress | None = None, variants: dict | None = None, localize: bool = False) -> Report:
    """``localize``: name the first diverging kernel of each failing stage (sdparity.tiers.localize)."""
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
                           message=message, metrics=None, tolerance=None, timings=None)
        live = [b for b in backends if b.name in sessions]
        for st in stages:
            variant = (variants or {}).get(st.name) or st.default_variant(model)
            try:
                cases = st.cases(model, variant, seed)
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
                           localize)
    return report


def _check_inputs(stage, case) -> None:
    if stage.accepts_nonfinite:
        return
    for i, a in enumerate(case.inputs):
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise SdparityError(f"stage {stage.name} case {case.label}: input {i} contains NaN or Inf")


def _error(report, st, b, case, message, timings=None):
    report.add(stage=st.name, backend=b.name, device_class=b.device_class,
               case=None if case is None else case.label, function=None if case is None else case.function,
               output=None, shapes=None if case is None else case.shapes, verdict="error",
               message=message, metrics=None, tolerance=None, timings=timings)


def _run_stage(st, b, runner, model, variant, cases, refs, report, cache, scope, log, localize=False):
    tag = f"[{b.name}] {st.name}"
    log(f"{tag}: building {variant or ''}".rstrip())
    t0 = time.perf_counter()
    try:
        art, meta, cached = b.build_cached(lambda: st.build_ir(model, variant), st.build_key(model, variant),
                                           cache, log=log, label=f"{st.name}/{b.name}")
    except SdparityError as e:
        if "corrupt" in str(e):
            raise
        log(f"{tag}: build failed: {e}")
        _error(report, st, b, None, f"build failed: {e}")
        return
    except Exception as e:
        log(f"{tag}: build failed: {one_line(e)}")
        if log and not log.quiet:
            traceback.print_exc(limit=3)
        _error(report, st, b, None, f"build failed: {one_line(e)}")
        return
    build_s = time.perf_counter() - t0
    log(f"{tag}: {'cached build reused' if cached else 'built'} in {build_s:.1f}s"
        + (f" (original build {meta.get('build_s')}s)" if cached else "") + f" -> {art}")
    for case in cases:
        timings = {"build_s": round(build_s, 3), "build_cached": cached,
                   "original_build_s": meta.get("build_s")}
        try:
            t1 = time.perf_counter()
            outs = runner.run(art, case.function, case.inputs)
            timings["run_s"] = round(time.perf_counter() - t1, 4)
            if case.label not in refs:
                t2 = time.perf_counter()
                r32 = case.reference("float32")
                t3 = time.perf_counter()
                r64 = case.reference("float64")
                refs[case.label] = (r32, r64, round(t3 - t2, 4))
            r32, r64, ref_s = refs[case.label]
            timings["ref_s"] = ref_s
        except SdparityError as e:
            _error(report, st, b, case, str(e), timings)
            log(f"{tag} {case.label}: ERROR {e}")
            continue
        except Exception as e:
            _error(report, st, b, case, f"run failed: {one_line(e)}", timings)
            log(f"{tag} {case.label}: ERROR {one_line(e)}")
            continue
        if len(outs) != len(case.outputs):
            _error(report, st, b, case, f"backend returned {len(outs)} outputs, expected {len(case.outputs)}",
                   timings)
            continue
        failed = []
        for spec, cand, ref, ref64 in zip(case.outputs, outs, r32, r64):
            try:
                tol = lookup(st.name, spec.name, b.name, scope, case.label)
            except KeyError as e:  # an undeclared tolerance: this check cannot be judged
                report.add(stage=st.name, backend=b.name, device_class=b.device_class, case=case.label,
                           function=case.function, output=spec.name, shapes=case.shapes, verdict="error",
                           message=str(e.args[0] if e.args else e), metrics=None, tolerance=None,
                           timings=timings)
                log(f"{tag} {case.label} {spec.name}: ERROR {e.args[0] if e.args else e}")
                continue
            m = compare(cand, ref, tol, ref64, integer=spec.integer)
            verdict = "pass" if m.passed else "fail"
            rec = report.add(stage=st.name, backend=b.name, device_class=b.device_class, case=case.label,
                             function=case.function, output=spec.name, shapes=case.shapes, verdict=verdict,
                             message=m.why, metrics=m.to_json(), tolerance=tol.to_json(), timings=timings,
                             integer=spec.integer, model_scope=scope, failed_bound=m.failed_bound)
            if spec.image:
                from sdparity.reports.images import attach

                attach(report, rec, cand, ref)
            if rec["verdict"] in ("fail", "known"):
                failed.append(rec)
            floor = "n/a" if m.noise_floor is None else f"{m.noise_floor:.2g}"
            ratio = "" if m.floor_ratio is None else f" err/floor={m.floor_ratio:.3g}x" + (
                f" (budget {m.floor_budget:g}x)" if m.floor_budget is not None else "")
            log(f"{tag} {case.label} {spec.name}: {rec['verdict'].upper()} max_abs={m.max_abs:.3g} "
                f"floor={floor}{ratio} ({timings['run_s']:.3f}s)")
        if failed and localize:
            from sdparity.tiers.localize import localize_check

            loc = localize_check(st, b, art, model, variant, case, log)
            for rec in failed:
                rec["localization"] = loc
                known_issues.apply(rec)  # entries may cover a check by what localization found
            localize = False  # once per stage and backend: the first failing case
    for k in meta.get("own_kernels", []):  # the suite's own kernels in this build, each alone
        from sdparity.tiers.own_kernels import check

        check(st, b, runner, k, report, cache, log=log)
