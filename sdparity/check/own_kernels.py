"""The own-kernel check: every kernel the suite writes itself, against the chain it replaces.

sdparity's builds replace some of TVM's lowerings with kernels of their own (today: each
unmasked float32 attention on llvm, ``compile/attention.fuse_attention``). A stage's parity
check does not see every fault of such a kernel: an error of the softmax's exp partly cancels
in its quotient, and one attention is a small part of a UNet's residual stream (NOTES.md: TVM's
floor lowering perturbed to trunc put the attention kernel at 5.8x the unfused chain's error
while the tiny UNet stayed inside its budget). So each build records which own kernels it
holds, with their shapes (``found``, in the build's meta; the registry is
``sdparity.compile.own_kernels``), and ``sdparity check`` judges each
alone at those shapes:

* **candidate**: the kernel, built as the backend builds it (rewrite on);
* **twin**: the same computation with the rewrite off, TVM's own chain (``disabled``);
* **reference**: PyTorch in float64 on the same seeded inputs.

It passes when the kernel's root-mean-square error against float64 is at most
``OWN_KERNELS[name].factor`` x the twin's (``sdparity.tolerances``, with its reason), every
element within a coarse absolute bound: ``compare`` runs with the twin's output as its
"float32 reference" and the rms statistic, so its err/floor *is* that ratio. A record per
kernel shape, stage and backend, case ``own kernel <name> <shapes>``; the gate compares them
like any other check.

An own kernel's own transcendental functions are also judged on their own, at their own
precision (``check_transcendental``): the rms ratio above lets an exp that drifts by a few ulp
through (an error of the softmax's exp partly cancels in its quotient; a one-digit change in one
coefficient of ``exp_f32``'s polynomial, up to ~12 ulp at the range reduction's interval edges,
moved the tiny UNet's ratios from 0.60-1.02x to 0.73-1.27x, all under 1.5x). So the function
is built alone for the backend's target(s), as the kernel uses it (a 16-lane vector loop),
evaluated over its whole input range (for the softmax's exp, the scores minus the row max:
a dense grid of [EXP_F32_LOW, 0], every reduction interval's edges with their float32
neighbours, the values next to 0) and its largest error in float32 ulp against float64 must
stay within ``tolerances.OWN_TRANSCENDENTALS[name]``; the values it defines at the edges (0 for
-inf and below EXP_F32_LOW, NaN for NaN, 1 at 0) must be exact. One record per stage and
backend whose build holds the kernel, case ``own kernel exp_f32 ulp``, output "ulp": its
metrics' max_abs is the largest error in ulp (the gate compares it like any other).

To add an own kernel: one ``OwnKernel`` entry (how to find it in a built module, the torch
computation at its shapes, how to build without it, the transcendentals it calls) and its
budget in ``tolerances.OWN_KERNELS`` (and ``OWN_TRANSCENDENTALS``).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from sdparity.compile.own_kernels import (FUNCTION, INPUT_SCALE, LANES, OWN_KERNELS, QUANTUM, TRANSCENDENTALS,  # noqa: F401
                                          OwnKernel, Transcendental, found)
from sdparity.errors import SdparityError, one_line


def _transcendental_targets(backend) -> list:
    """Every target the backend compiles the kernel with: its own (this CPU's mcpu, with fused
    multiply-adds where it has them: stages with contractions) and the one
    ``schedule_cpu.build_target`` gives a module without contractions (the kernel built alone)."""
    from sdparity.compile.schedule_cpu import build_target

    import tvm

    own = backend.target()
    alone = build_target(tvm.IRModule({}), own)
    return [own] if str(alone) == str(own) else [own, alone]


def _transcendental_build(t: Transcendental, n: int, target, backend, cache):
    """The folder of ``t`` built alone for ``target``: main(x: float32[n], y: float32[n])."""
    from sdparity.identity import source_digest

    key = {"own_kernel_transcendental": t.name, "n": n, "lanes": LANES, "shaped_by": t.shaped_by(),
           "target": str(target), "env": backend.env_key(),
           "source": source_digest([__name__, "sdparity.compile.attention"])}

    def build(tmp):
        import tvm
        from tvm import te

        fn = t.expr()
        x = te.placeholder((n,), "float32", "x")
        y = te.compute((n,), lambda i: fn(x[i]), "y")
        sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
        (loop,) = sch.get_loops(sch.get_sblock("y"))
        sch.vectorize(sch.split(loop, [None, LANES])[1])
        tvm.compile(sch.mod, target=target).export_library(str(tmp / "lib.so"))
        return {"compiled_for": str(target)}

    path, _, _ = cache.get_or_build(key, build, log=lambda *a: None,
                                    label=f"own-kernel/{t.name}/{'generic' if 'mcpu' not in str(target) else 'host'}")
    return path


def _ulp_errors(y: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|y - exact| in units of the float32 spacing at exact (float64; NaN where y is NaN)."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - exact) / spacing


def check_transcendental(stage, backend, kernel: OwnKernel, name: str, report, cache, log=print) -> dict:
    """Judge the transcendental ``name`` of ``kernel`` alone (module docstring); the record is
    added to ``report``."""
    import tvm

    from sdparity.compare import compare
    from sdparity.tolerances import transcendental_tolerance

    t = TRANSCENDENTALS[name]
    label = f"own kernel {name} ulp"
    base = dict(stage=stage.name, backend=backend.name, device_class=backend.device_class, case=label,
                function=name, output="ulp", shapes={}, own_kernel=kernel.name, transcendental=name)
    t0 = time.perf_counter()
    try:
        tol = transcendental_tolerance(name)
        xs = t.points()
        exact_cases = t.exact()
        args = np.concatenate([xs, np.array([a for a, _ in exact_cases], np.float32)])
        n = -(-args.size // LANES) * LANES
        args = np.concatenate([args, np.zeros(n - args.size, np.float32)])
        ref = t.reference(xs.astype(np.float64))
        per_target, worst, bad_edges = [], None, []
        for target in _transcendental_targets(backend):
            lib = tvm.runtime.load_module(str(_transcendental_build(t, n, target, backend, cache) / "lib.so"))
            out = tvm.runtime.tensor(np.empty(n, np.float32))
            lib["main"](tvm.runtime.tensor(args), out)
            y = out.numpy()
            err = _ulp_errors(y[:xs.size], ref)
            got = y[xs.size:xs.size + len(exact_cases)]
            for (a, want), g in zip(exact_cases, got):
                if not (np.isnan(g) if np.isnan(want) else g == want):
                    bad_edges.append(f"{name}({a:g}) = {g:g}, not {want:g} ({target.attrs.get('mcpu', 'generic')})")
            err_max = float(np.nan_to_num(err, nan=np.inf).max())
            i = int(np.nan_to_num(err, nan=np.inf).argmax())
            per_target.append({"target": str(target), "max_ulp": err_max, "at": float(xs[i]),
                               "mean_ulp": float(np.nanmean(err))})
            if worst is None or err_max > worst[0]:
                worst = (err_max, err)
    except Exception as e:
        message = str(e) if isinstance(e, SdparityError) else f"own-kernel check failed: {one_line(e)}"
        log(f"[{backend.name}] {stage.name} {label}: ERROR {message}")
        return report.add(**base, verdict="error", message=message, metrics=None, tolerance=None, timings=None)
    # compare's candidate is the error in ulp, its reference 0: max_abs is the largest ulp error
    # and the bound its atol
    m = compare(worst[1], np.zeros_like(worst[1]), tol)
    metrics = {**m.to_json(), "per_target": per_target, "points": int(xs.size), "exact_failures": bad_edges}
    at = max(per_target, key=lambda p: p["max_ulp"])
    why = (f"max {m.max_abs:.3g} ulp of float32 (at x={at['at']:.9g}, {at['target']}) over {xs.size} "
           f"arguments in [{xs.min():g}, {xs.max():g}], budget {tol.atol:g} ulp")
    passed = m.passed and not bad_edges
    failed = None if passed else ("abs" if not m.passed else "edges") if m.failed_bound != "nonfinite" else "nonfinite"
    if bad_edges:
        why = f"{len(bad_edges)} defined values wrong: {'; '.join(bad_edges[:3])}; " + why
    rec = report.add(**base, verdict="pass" if passed else "fail", message=why, metrics=metrics,
                     tolerance=tol.to_json(), timings={"run_s": round(time.perf_counter() - t0, 3)},
                     failed_bound=failed)
    log(f"[{backend.name}] {stage.name} {label}: {rec['verdict'].upper()} {why}")
    return rec


def _transcendentals_due(stage, backend, kernel: OwnKernel, report) -> list[str]:
    """The kernel's transcendentals not yet judged for this stage and backend in ``report``."""
    done = {r.get("transcendental") for r in report.results
            if r.get("stage") == stage.name and r.get("backend") == backend.name and r.get("transcendental")}
    return [n for n in kernel.transcendentals if n not in done]


def _inputs(shapes: list[tuple], seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [(np.round(INPUT_SCALE * g.standard_normal(s) / QUANTUM) * QUANTUM).astype(np.float32) for s in shapes]


def _function(i: int) -> str:
    """The Relax function of the ``i``-th shape in a batch build."""
    return f"{FUNCTION}_{i}"


def _build(kernel: OwnKernel, batch: list, backend, cache, rewrite: bool):
    """(artifact, meta) of every ``(module, inputs)`` of ``batch`` (one a shape), function
    ``_function(i)`` each, built together by ``backend`` through the cache, with the rewrite on
    (the candidate) or off (the twin). One build for all of a stage's shapes: a build's fixed
    cost (export, TVM's passes, LLVM, linking; ~1.5 s for one attention) was paid per shape and
    again for its twin (a tiny UNet's four shapes: 8 builds, 10-20 s under the suite's load). Each function
    is legalized, rewritten and scheduled on its own, as it is built alone."""
    import torch

    from sdparity.compile.frontend import export_many, export_to_relax, merge
    from sdparity.identity import source_digest

    key = {"own_kernel": kernel.name, "rewrite": rewrite,
           "inputs": [[list(a.shape) for a in inputs] for _, inputs in batch],
           "source": source_digest([__name__, "sdparity.compile.own_kernels"])}  # they make the modules built

    def factory():  # one import of every shape (frontend.export_many), else one import each
        items = [(module, tuple(torch.from_numpy(a) for a in inputs)) for module, inputs in batch]
        names = [_function(i) for i in range(len(batch))]
        try:
            return export_many(items, names)
        except SdparityError:
            return merge([export_to_relax(module, inputs, name) for (module, inputs), name in zip(items, names)])

    with contextlib.nullcontext() if rewrite else kernel.disabled():
        art, meta, _ = backend.build_cached(factory, key, cache, log=lambda *a: None,
                                           label=f"own-kernel/{kernel.name}/{'kernel' if rewrite else 'chain'}")
    return art, meta


def check(stage, backend, runner, found_kernels: list[dict], report, cache, seed: int = 0, log=print) -> list[dict]:
    """Judge the own kernels of ``stage``'s build on ``backend`` (``found_kernels``: its meta's
    list; module docstring), each shape alone, every shape of a kernel in one candidate and one
    twin build (``_build``); returns the records added to ``report``, one per entry."""
    out = []
    for name in dict.fromkeys(f["kernel"] for f in found_kernels):
        kernel = OWN_KERNELS[name]
        for t in _transcendentals_due(stage, backend, kernel, report):  # once per stage and backend
            check_transcendental(stage, backend, kernel, t, report, cache, log=log)
        shapes = [f["shapes"] for f in found_kernels if f["kernel"] == name]
        out += _check_kernel(stage, backend, runner, kernel, shapes, report, cache, seed, log)
    return out


def _check_kernel(stage, backend, runner, kernel: OwnKernel, shapes_list: list[dict], report, cache, seed, log):
    """``shapes_list``: distinct shapes, as ``found`` lists them."""
    import torch

    from sdparity.compare import compare
    from sdparity.tolerances import own_kernel_tolerance

    batch, built, failure = [], None, None
    t0 = time.perf_counter()
    try:
        tol = own_kernel_tolerance(kernel.name)
        for shapes in shapes_list:
            module, input_shapes = kernel.torch_module(shapes)
            batch.append((module, _inputs(input_shapes, seed)))
        art, meta = _build(kernel, batch, backend, cache, True)
        twin_art, twin_meta = _build(kernel, batch, backend, cache, False)
        if twin_meta.get("own_kernels"):
            raise SdparityError(f"the twin build still holds {twin_meta['own_kernels']}: the rewrite was not off")
        built = [f["shapes"] for f in meta.get("own_kernels", []) if f["kernel"] == kernel.name]
    except Exception as e:
        failure = str(e) if isinstance(e, SdparityError) else f"own-kernel check failed: {one_line(e)}"
    build_s = time.perf_counter() - t0
    out = []
    for i, shapes in enumerate(shapes_list):
        label = kernel.label(shapes)
        base = dict(stage=stage.name, backend=backend.name, device_class=backend.device_class, case=label,
                    function=_function(i), output="out", shapes=shapes, own_kernel=kernel.name)
        t1 = time.perf_counter()
        try:
            if failure:
                raise SdparityError(failure)
            if shapes not in built:
                raise SdparityError(f"the rewrite did not produce the {kernel.name} kernel at these shapes "
                                    f"when built without the stage (found {meta.get('own_kernels')})")
            module, inputs = batch[i]
            (cand,) = runner.run(art, _function(i), inputs)
            (twin,) = runner.run(twin_art, _function(i), inputs)
            with torch.no_grad():
                ref64 = module(*(torch.from_numpy(a).double() for a in inputs)).numpy()
        except Exception as e:
            message = str(e) if isinstance(e, SdparityError) else f"own-kernel check failed: {one_line(e)}"
            log(f"[{backend.name}] {stage.name} {label}: ERROR {message}")
            out.append(report.add(**base, verdict="error", message=message, metrics=None, tolerance=None,
                                  timings=None))
            continue
        # compare's "reference" is float64, its "float32 reference" the twin: err/floor is
        # rms(kernel - float64) / rms(twin - float64)
        m = compare(cand, ref64, tol, reference64=twin)
        why = m.why.replace("err/floor", "rms err/twin's")
        rec = report.add(**base, verdict="pass" if m.passed else "fail", message=why, metrics=m.to_json(),
                         tolerance=tol.to_json(), failed_bound=m.failed_bound,
                         timings={"build_s": round(build_s, 3), "run_s": round(time.perf_counter() - t1, 3)})
        ratio = "n/a" if m.floor_ratio is None else f"{m.floor_ratio:.3g}x"
        log(f"[{backend.name}] {stage.name} {label}: {rec['verdict'].upper()} max_abs={m.max_abs:.3g} "
            f"twin's={m.noise_floor:.3g} rms ratio={ratio} (budget {tol.floor_budget:g}x)")
        out.append(rec)
    return out
