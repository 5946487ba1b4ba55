"""f16 mode: the model stages built with float16 compute, judged by PyTorch's own float16 error.

``sdparity f16`` builds CLIP, the UNet and the VAE (the stages with weights; the scheduler,
concat and RGBA stages are exact definitions and stay float32) through TVM's mixed-precision
pass (``relax.transform.ToMixedPrecision``: float16 compute, float32 accumulation in matmuls
and convolutions) and runs the usual cases. A float16 result cannot meet float32 tolerances,
and a tolerance picked for it would say nothing; instead every output is compared with the
float64 reference twice, the TVM float16 build's error and PyTorch's own float16 error (the
same wrapper in ``torch.float16`` on the same inputs), and passes when

    err(TVM f16) <= F16.factor * err(PyTorch f16)     (integer 0..255 outputs: at least F16.min_levels)

``sdparity.tolerances.F16`` gives the factor and how it was measured. The report holds both
errors side by side (``metrics.max_abs``, ``metrics.torch_f16_max_abs``, ``metrics.ratio``).

Backends: llvm here; cuda where TVM and a GPU are present (the same NativeBackend path); a
backend that is not available is a ``skip`` with its reason. WebGPU needs the adapter's
``shader-f16`` feature (Dawn on the lent NVIDIA cards does not offer it: docs/performance.md)
and is reported as a skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdparity.errors import SdparityError

PRECISION = "f16-mixed (ToMixedPrecision, float32 accumulation)"


def precision_key() -> dict:
    """What the f16 mode adds to a stage's build key: the precision and this module's source
    (``to_f16``'s rewrites live here; an edit must not reuse an f16 build)."""
    from sdparity.identity import source_digest

    return {"precision": PRECISION, "f16_sources": source_digest(["sdparity.commands.f16"])}


DEFAULT_REPORT = "sdparity-report-f16.json"


def to_f16(ir):
    """The stage's IR with float16 compute (TVM's own mixed-precision pass), each cast it
    inserts given to its uses one by one (``cast_per_use``), and each attention's safe softmax
    between its float16 scores and float16 probabilities computed by one kernel
    (``sdparity.compile.attention.fuse_safe_softmax``)."""
    from tvm import relax

    from sdparity.compile.attention import fuse_safe_softmax
    from sdparity.ir import StageIR

    mod = relax.transform.ToMixedPrecision(out_dtype="float32")(ir.mod)
    return StageIR(fuse_safe_softmax(cast_per_use(mod)), ir.params)


def cast_per_use(mod):
    """Every ``astype`` whose result has more than one use becomes one ``astype`` per use, so
    that FuseOps fuses each into its consumer instead of writing the converted tensor once and
    reading it back several times. The mixed-precision pass casts an attention's float16 scores
    to float32 for both the softmax and PyTorch's all-masked-row test: 2 x 8 x 4096 x 4096 values
    written in float32 and read twice, 0.9 ms a call of the full-size UNet on the H200
    (docs/performance.md, "f16 mode"). Each consumer computes the same conversion of the same
    values: the results are bit-identical."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

    astype = relax.op.astype
    op = tvm.ir.Op.get("relax.astype")

    @visitor
    class Uses(PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.count: dict = {}

        def visit_var_(self, var):
            self.count[var] = self.count.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            self.visit_var_(var)

    @mutator
    class PerUse(PyExprMutator):
        def __init__(self, mod, casts):
            super().__init__(mod)
            self.casts = casts  # Var -> its astype Call (more than one use)

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not any(isinstance(a, relax.Var) and a in self.casts for a in call.args):
                return call
            args = [self.builder_.emit(astype(self.casts[a].args[0], self.casts[a].attrs.dtype))
                    if isinstance(a, relax.Var) and a in self.casts else a for a in call.args]
            return relax.Call(call.op, args, call.attrs, call.ty_args, call.span)

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        uses = Uses()
        uses.visit_expr(func)
        casts = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if (isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call) and b.value.op.same_as(op)
                        and uses.count.get(b.var, 0) > 1):
                    casts[b.var] = b.value
        if casts:
            out[gv] = relax.analysis.remove_all_unused(PerUse(mod, casts).visit_expr(func))
    return out


def judge(cand: np.ndarray, ref64: np.ndarray, torch16: np.ndarray, integer: bool):
    """(Metrics, Tolerance): the f16 rule through the one comparison (sdparity.compare): the
    float16 build's error against float64, within ``F16.factor`` x PyTorch float16's own error
    (``tolerances.f16_tolerance``); ``floor_ratio`` is that ratio, ``noise_floor`` PyTorch's error."""
    from sdparity.compare import compare
    from sdparity.tolerances import f16_tolerance

    r, t = np.asarray(ref64, np.float64), np.asarray(torch16, np.float64)
    terr = float(np.abs(t - r).max()) if t.shape == r.shape and t.size else 0.0
    tol = f16_tolerance(terr, integer)
    m = compare(cand, r, tol, reference64=t, integer=integer)
    if m.passed or m.failed_bound in ("int", "abs"):
        err, ratio = m.max_abs, (m.max_abs / terr if terr > 0 else (0.0 if m.max_abs == 0 else float("inf")))
        m.why = (f"f16 error {err:.3g} is {ratio:.3g}x PyTorch float16's {terr:.3g} "
                 f"({'within' if m.passed else 'over'} the bound {tol.atol:.3g} = {tol.floor_note}"
                 + (f", at least {tol.atol:g} level" if integer and tol.atol > 2 * terr else "") + ")")
    return m, tol


def _judge_mode(st, spec, backend, scope, case_label, cand, ref64, torch16):
    return judge(cand, ref64, torch16, spec.integer)


def mode():
    """The f16 mode for the one check driver (sdparity.runner.Mode): the stage through ``to_f16``
    (``precision_key`` in its build key), judged against float64 with PyTorch float16 as the floor."""
    from sdparity.runner import Mode

    return Mode(name="f16", references=("float64", "float16"), judge=_judge_mode, transform=to_f16,
                key=precision_key, extra={"precision": "f16"}, own_kernels=False, prove_known=False)


WEBGPU_F16 = ("float16 on WebGPU needs the adapter's shader-f16 feature and an f16 build of the web runtime; "
              "not built in sdparity (Dawn on the lent NVIDIA cards offers no shader-f16)")


def run_f16(stages, backends, model, report, cache, seed: int = 0, log=None, only_cases=None) -> None:
    """The model stages in the f16 mode through the one check driver; backends without float16
    (the ``float16`` capability: WebGPU here) are skips with their reason. ``only_cases``: as
    ``run_checks``'s (labels every stage has)."""
    from sdparity.runner import run_checks

    model_stages = [s for s in stages if s.component]
    for b in backends:
        if not b.float16:
            for st in model_stages:
                report.add(stage=st.name, backend=b.name, device_class=b.device_class, case=None,
                           function=None, output=None, shapes=None, verdict="skip",
                           message=WEBGPU_F16 if b.name == "webgpu" else f"{b.name} has no float16",
                           metrics=None, tolerance=None, timings=None, precision="f16")
    run_checks(model_stages, [b for b in backends if b.float16], model, report, cache, seed=seed, log=log,
               mode=mode(), only_cases=only_cases)


def add_parser(sub) -> None:
    from sdparity.args import add_model_args, backend_list, out_file, stage_list

    p = sub.add_parser("f16", help="build the model stages in float16; judge each output by PyTorch's own "
                       "float16 error (docs/numerics.md, 'f16 mode')", description=__doc__.split("\n\n")[1])
    add_model_args(p)
    p.add_argument("--backends", type=backend_list, default=["llvm"], help="comma-separated (default: llvm)")
    p.add_argument("--stages", type=stage_list, default=None,
                   help="comma-separated (default: the model stages clip, unet, vae)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=out_file, default=Path(DEFAULT_REPORT),
                   help=f"report path (default: {DEFAULT_REPORT}; the HTML page goes beside it)")
    p.add_argument("--rebuild", action="store_true", help="ignore cached builds")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_f16)


def cmd_f16(args) -> int:
    from sdparity.cache import BuildCache
    from sdparity.args import load_selection
    from sdparity.reports.report import Report
    from sdparity.reports.table import print_table
    from sdparity.runner import Progress

    log = Progress(quiet=args.quiet)
    model, selected, backends, _ = load_selection(args, log)
    if not any(s.component for s in selected):
        raise SdparityError("f16 mode covers the model stages (clip, unet, vae); none is selected")
    report = Report(model)
    report.data["precision"] = "f16"
    from sdparity.tolerances import F16

    report.data["f16_rule"] = F16.to_json()
    run_f16(selected, backends, model, report, BuildCache(rebuild=args.rebuild), seed=args.seed, log=log)
    report.write(args.report)
    print_table(report.data)
    print(f"report: {args.report}")
    from sdparity.reports.html import write_html

    print(f"html: {write_html(args.report)}")
    return 0 if report.ok else 1
