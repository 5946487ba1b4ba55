"""Localize a failing check: the first kernel whose result leaves the noise floor.

Kernel replay. The candidate (the built module that failed) runs the failing case once more
in the Relax VM with an instrument on every kernel call. Before a call the instrument copies
the call's arguments; after it, it runs the kernel of the same name from a *trusted* build on
those copies and compares every argument (inputs stay equal, outputs are what is checked).
Each kernel thus gets the candidate's own inputs, so a divergence is attributed to the
kernel that produced it, not to the ones downstream of it; the first diverging call in
execution order is the answer.

The trusted build is the same stage IR legalized and fused exactly as the backends do it
(so kernel names and signatures match) but left unscheduled, compiled for plain LLVM at
LLVM ``opt-level`` 0: naive loops, no vectorization, no threads. A kernel's name lists the
Relax operations fused into it (``fused_matmul_add2``, ``layer_norm1``...).

What it can and cannot see: it finds errors made at or below TIR (scheduling, TIR passes,
LLVM/GPU code generation, a damaged library). When every kernel agrees, the error is in the
Relax IR itself (frontend import, a Relax pass before legalization, or the stage definition)
and the record says so.

Op replay (``sdparity.check.opreplay``, issue 11) covers that blind spot from the PyTorch
side: every aten op of the stage's torch.export program is built alone through the stage's
own path and compared with torch; the first op over its floor-relative budget is named, with
a standalone repro. ``localize_check`` (called by the runner on a failing model check) runs
both and keeps both in one record: kernel replay's fields at the top level, op replay's
under ``"op"``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from sdparity.compile.schedule import TRUSTED_TARGET
from sdparity.errors import SdparityError, one_line

# A kernel call diverges when max |candidate - trusted| > KERNEL_RTOL * max |trusted| over
# one of its arguments (integers: any difference).
KERNEL_RTOL = 1e-5
KERNEL_RTOL_REASON = (
    "TVM's own cross-build kernel comparator (LibCompareVMInstrument) uses rtol = atol = 1e-5; "
    "two correct float32 builds of one kernel differ by reduction order or FMA contraction, a "
    "few ulp (1.2e-7) times the reduction depth: 1e-5 of the output's magnitude is ~80 ulp")
MAX_LISTED = 10  # diverging calls listed in the record after the first (all are counted)


def op_name(kernel: str) -> str:
    """The Relax operations in a kernel's name: 'fused_matmul3_add2' -> 'matmul_add'."""
    return re.sub(r"(?<=[a-z])\d+(?=_|$)", "", kernel).removeprefix("fused_")


def lower(ir_mod, target, fuse: bool = True, kind: str | None = None):
    """The kernels (PrimFuncs) of ``ir_mod``, unscheduled, named as the backends name them.

    Every native backend legalizes and fuses first (sdparity.compile.schedule: the "zero" pipeline's
    LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR) and schedules the
    fused kernels; ``fuse`` does the same fusion and leaves out the schedules. Without it,
    TVM's default llvm pipeline legalizes every operation into its own kernel. ``kind``: the
    candidate's target kind; an llvm candidate's Relax rewrites (whole-attention kernels,
    ``schedule_cpu.rewrite_graph``) are applied first, so its kernels have trusted twins."""
    import tvm
    from tvm import relax

    from sdparity.compile.compat import tir

    if kind == "llvm" and fuse:
        from sdparity.compile.schedule_cpu import rewrite_graph

        ir_mod = rewrite_graph(ir_mod)

    with target:
        if fuse:
            ir_mod = relax.get_pipeline("zero")(ir_mod)
        lowered = relax.get_pipeline("default")(ir_mod)
    prim_func = tir().PrimFunc
    return tvm.IRModule({gv: f for gv, f in lowered.functions.items() if isinstance(f, prim_func)})


def build_trusted(ir_mod, fuse: bool = True, kind: str | None = None):
    """Compile the kernels of ``ir_mod`` for the trusted target (as ``lower`` gives them for a
    candidate of target kind ``kind``); returns a runtime module."""
    import tvm

    trusted = tvm.target.Target(TRUSTED_TARGET)
    return tvm.compile(lower(ir_mod, trusted, fuse, kind), target=trusted)


def _diverges(cand: np.ndarray, ref: np.ndarray) -> dict | None:
    if cand.shape != ref.shape:
        return {"max_abs": float("inf"), "scale": None, "bound": 0.0, "why": "shape differs"}
    if cand.dtype.kind not in "fc":
        bad = int((cand != ref).sum())
        return {"max_abs": float(np.abs(cand.astype(np.float64) - ref.astype(np.float64)).max()),
                "scale": None, "bound": 0.0, "mismatches": bad} if bad else None
    c, r = cand.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(c - r)
    diff = np.where((c == r) | (np.isnan(c) & np.isnan(r)), 0.0, diff)  # equal infinities agree
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = np.abs(r[np.isfinite(r)])
    scale = float(finite.max()) if finite.size else 0.0
    bound = KERNEL_RTOL * scale
    top = float(diff.max()) if diff.size else 0.0
    if top <= bound:
        return None
    return {"max_abs": top, "scale": scale, "bound": bound,
            "rel": (top / scale) if scale else None, "worst_index": [int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape)]}


class ReplayInstrument:
    """VM instrument: replay every kernel call on the trusted module and compare."""

    def __init__(self, trusted):
        import tvm

        self.tvm, self.trusted = tvm, trusted
        self.calls = 0  # kernel calls compared
        self.unchecked: dict[str, int] = {}  # kernels the trusted build does not have
        self.kernels: set[str] = set()
        self.diverged: list[dict] = []
        self.n_diverged = 0
        self._before: list | None = None
        self._fns: dict = {}

    def _trusted_fn(self, name: str):
        if name not in self._fns:
            try:
                self._fns[name] = self.trusted[name]
            except Exception:  # noqa: BLE001  (missing functions raise differently across versions)
                self._fns[name] = None
        return self._fns[name]

    def __call__(self, func, name, before_run, ret_value, *args):
        if name.startswith("vm."):  # VM builtins (allocation, shape checks), not kernels
            return 0
        fn = self._trusted_fn(name)
        if fn is None:
            if before_run:
                self.unchecked[name] = self.unchecked.get(name, 0) + 1
            return 0
        if before_run:
            self._before = [a.numpy() if hasattr(a, "numpy") else a for a in args]
            return 0
        before, self._before = self._before, None
        if before is None:
            return 0
        from sdparity.compile.compat import tensor

        cpu = self.tvm.cpu(0)
        replay = [tensor(b, cpu) if isinstance(b, np.ndarray) else b for b in before]
        fn(*replay)
        index = self.calls
        self.calls += 1
        self.kernels.add(name)
        for i, (a, r) in enumerate(zip(args, replay)):
            if not hasattr(a, "numpy"):
                continue
            d = _diverges(a.numpy(), r.numpy())
            if d is not None:
                self.n_diverged += 1
                if len(self.diverged) <= MAX_LISTED:
                    self.diverged.append({"call": index, "kernel": name, "op": op_name(name), "arg": i,
                                          "shape": list(a.shape), "dtype": str(a.dtype), **d})
                break
        return 0


def replay(vm, trusted, function: str, args: list, device) -> dict:
    """Run ``vm[function](*args)`` with kernel replay; returns the localization record."""
    t0 = time.perf_counter()
    inst = ReplayInstrument(trusted)
    vm.set_instrument(inst)  # stays on this VM: callers load a fresh VM for each localization
    vm[function](*args)
    device.sync()
    rec = {"status": "diverged" if inst.diverged else "clean",
           "method": "kernel replay against a trusted build (llvm opt-level=0) on the candidate's inputs",
           "trusted_target": TRUSTED_TARGET, "kernel_rtol": KERNEL_RTOL, "kernel_rtol_reason": KERNEL_RTOL_REASON,
           "calls": inst.calls, "kernels": len(inst.kernels),
           "unchecked": inst.unchecked, "first": inst.diverged[0] if inst.diverged else None,
           "diverged": inst.diverged[1:], "n_diverged": inst.n_diverged,
           "seconds": round(time.perf_counter() - t0, 3)}
    if inst.diverged:
        f = inst.diverged[0]
        rel = "" if f.get("rel") is None else f" (rel {f['rel']:.2g} > {KERNEL_RTOL:g})"
        rec["summary"] = (f"first diverging kernel {f['kernel']} (op {f['op']}) at call {f['call']} of "
                          f"{inst.calls}: max abs {f['max_abs']:.3g}{rel}; {inst.n_diverged} call(s) diverge")
    else:
        rec["summary"] = (f"all {inst.calls} kernel calls agree with the trusted build: the error is "
                          f"upstream of code generation (Relax IR: frontend import, a Relax pass, or "
                          f"the stage definition)")
    if inst.unchecked:
        rec["summary"] += f"; {sum(inst.unchecked.values())} call(s) of kernels the trusted build lacks were not checked"
    return rec


def kernel_replay_check(stage, backend, artifact, model, variant, case, log=None) -> dict:
    """Kernel replay of one failing case (native backends): the record described above."""
    try:
        from sdparity.backends.native import LIB, PARAMS, load_params, tvm_tensor

        if not backend.native_vm or not (artifact / LIB).exists():
            return {"status": "unsupported", "summary": f"kernel replay needs a native TVM build "
                    f"(llvm, cuda, vulkan); backend {backend.name} has none"}
        import tvm
        from tvm import relax

        t0 = time.perf_counter()
        if log:
            log(f"[{backend.name}] {stage.name} {case.label}: localizing (trusted build, kernel replay)")
        trusted = build_trusted(stage.build_ir(model, variant).mod, kind=getattr(backend, "kind", None))
        dev = backend.device()
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact / LIB)), dev)
        params = load_params(artifact / PARAMS).get(case.function, [])
        args = [tvm_tensor(a, dev) for a in list(case.inputs) + params]
        rec = replay(vm, trusted, case.function, args, dev)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        if log:
            log(f"[{backend.name}] {stage.name} {case.label}: {rec['summary']}")
        return rec
    except Exception as e:  # localization is a diagnosis: it never turns a failure into a crash
        return {"status": "error", "summary": f"kernel replay failed: {one_line(e)}"}


def op_replay_check(stage, backend, artifact, model, variant, case, log=None, out_dir=None) -> dict:
    """Op replay of one failing case (sdparity.check.opreplay): the first aten op whose TVM build
    diverges alone, with a repro in ``out_dir`` (default opreplay.default_out_dir). Per-op builds
    go into the build cache that holds ``artifact``, so a test's temporary cache stays apart."""
    try:
        from sdparity.cache import BuildCache
        from sdparity.stages._torch import TorchStage
        from sdparity.check import opreplay

        if not isinstance(stage, TorchStage):
            return {"status": "unsupported", "summary": f"op replay needs a torch.export stage; {stage.name} is not one"}
        if log:
            log(f"[{backend.name}] {stage.name} {case.label}: localizing (op replay)")
        out = out_dir or opreplay.default_out_dir(stage.name, backend.name, case.label)
        with backend.session() as runner:
            rec = opreplay.localize_ops(stage, model, variant, case, backend, runner,
                                        BuildCache(Path(artifact).parent), out, artifact=artifact, log=log)
        if log:
            log(f"[{backend.name}] {stage.name} {case.label}: {rec['summary']}")
        return rec
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "summary": f"op replay failed: {one_line(e)}"}


def localize_check(stage, backend, artifact, model, variant, case, log=None) -> dict:
    """Localization record of one failing case of ``stage`` built by ``backend`` into ``artifact``:
    kernel replay (native backends; its fields at the top level, as before) and op replay
    (``record["op"]``, every backend). ``status`` is "diverged" when either names a culprit.
    $SDPARITY_LOCALIZE ("kernel,op" by default) selects the methods."""
    methods = set(os.environ.get("SDPARITY_LOCALIZE", "kernel,op").split(","))
    skipped = {"status": "skipped", "summary": "not selected ($SDPARITY_LOCALIZE)"}
    rec = kernel_replay_check(stage, backend, artifact, model, variant, case, log) if "kernel" in methods else dict(skipped)
    op = op_replay_check(stage, backend, artifact, model, variant, case, log) if "op" in methods else dict(skipped)
    rec["op"] = op
    parts = [f"kernel replay: {rec['summary']}", f"op replay: {op['summary']}"]
    if rec["status"] != "diverged" and op.get("status") == "diverged":
        rec["status"] = "diverged"
    rec["summary"] = "; ".join(parts)
    return rec


# ---- `sdparity localize STAGE`: op replay from the command line ------------------------------
def cmd_localize(args) -> int:
    from reference.models import ModelError, load_model

    from sdparity.backends import get_backend
    from sdparity.cache import BuildCache
    from sdparity.registry import get_stage
    from sdparity.errors import Progress
    from sdparity.check import opreplay
    from sdparity.stages._torch import TorchStage

    log = Progress(quiet=args.quiet)
    stage = get_stage(args.stage)
    if not isinstance(stage, TorchStage):
        raise SdparityError(f"stage {stage.name} is not a torch.export program: op replay needs a model stage")
    backend = get_backend(args.backend)
    reason = backend.unavailable_reason()
    if reason:
        raise SdparityError(f"backend {backend.name} is unavailable: {reason}")
    try:
        model = load_model(args.model, log=log)
    except ModelError as e:
        raise SdparityError(str(e)) from None
    variant = stage.default_variant(model)
    cases = stage.cases(model, variant, args.seed)
    case = next((c for c in cases if c.label == args.case), None) if args.case else cases[0]
    if case is None:
        raise SdparityError(f"stage {stage.name} has no case {args.case!r}; cases: {', '.join(c.label for c in cases)}")
    cache = BuildCache(rebuild=args.rebuild)
    out = args.out / f"{stage.name}-{backend.name}-{case.label}"
    with backend.session() as runner:
        artifact = None
        if not args.no_bisect:
            artifact, _, _ = backend.build_cached(lambda: stage.build_ir(model, variant),
                                                  stage.build_key(model, variant), cache, log=log,
                                                  label=f"{stage.name}/{backend.name}")
        log(f"[{backend.name}] {stage.name} {case.label}: op replay")
        rec = opreplay.localize_ops(stage, model, variant, case, backend, runner, cache, out, artifact=artifact,
                           stop_at_first=not args.all, log=log)
    from sdparity.files import write_atomic

    write_atomic(out / "localize.json", json.dumps(rec, indent=1, default=str))
    print(rec["summary"])
    print(f"record: {out / 'localize.json'}")
    return 1 if rec["status"] == "diverged" else 0


def add_parser(sub) -> None:
    p = sub.add_parser("localize", help="op replay: the first aten op whose TVM build diverges, with a repro",
                       description="Run STAGE's torch.export program node by node, build every distinct aten "
                       "op alone for the backend (cached by signature), compare each call with torch "
                       "(float64) against the op's float32 floor, report the first op over budget and "
                       "write a standalone repro beside the record. When every op agrees, bisect the "
                       "Relax pipeline. Exit 1 when an op diverges, 0 when none does.")
    p.add_argument("stage", help="a model stage: clip, unet, vae")
    p.add_argument("--backend", default="llvm", help="llvm | webgpu | cuda (default llvm)")
    p.add_argument("--model", default="tiny", help="tiny | sd15-random | PATH (default: tiny)")
    p.add_argument("--case", default=None, help="case label (default: the stage's first case)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("sdparity-localize"), help="folder for the record and repro")
    p.add_argument("--all", action="store_true", help="replay every call (default: stop at the first divergence)")
    p.add_argument("--no-bisect", action="store_true", help="skip the pipeline bisect when every op agrees")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(handler=cmd_localize)
