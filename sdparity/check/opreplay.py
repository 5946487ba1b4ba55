"""Op replay: name the PyTorch (aten) operation whose TVM build diverges, and write its repro.

A stage is a ``torch.export`` program. TVM imports it after ``run_decompositions()`` (core
ATen: ``from_exported_program`` does that by default), so that decomposed program is what
is replayed here, node for node:

1. **Trace.** An fx Interpreter runs the program in float32 on the failing case's inputs.
   For every aten call it records the inputs, the float32 output and the float64 output of
   the same op on the same inputs upcast (the op's own float32 noise floor: its inputs are
   the float32 graph's, so the floor says what float32 rounding of *this op* costs, not what
   the ops before it accumulated).
2. **Build each distinct op alone** through the stage's own path: a one-op module ->
   ``sdparity.compile.frontend.export_to_relax`` (torch.export -> from_exported_program ->
   detach_params) -> ``backend.build_cached`` (the backend's legalization, schedules and
   build, llvm or webgpu alike) -> ``backend.session()`` runner. Builds are cached by the
   op's signature (op, non-tensor arguments, shapes, dtypes, outputs used) and by what the
   backend puts in every key (TVM libraries by content, the build code's sources). Calls
   are imported and built in batches of up to ``BATCH`` new signatures (``ops_ir``), each op
   still its own function, then judged in graph order.
3. **Judge** every call against the float64 result rounded to float32, with the
   floor-relative budget ``sdparity.tolerances.op_budget(backend)``; the first call in graph
   order over budget is the answer: aten name, attributes, shapes, error, floor, ratio,
   position, nn.Module path (``nn_module_stack``), the kernels it became, and a standalone
   repro (script + .npz, torch and TVM only) written beside the record and run once to
   say whether it reproduces on its own.
4. If every op agrees in isolation, ``bisect_pipeline`` builds the whole stage with more and
   more of the pipeline (legalized only; + fusion; the backend's scheduled build) and names
   the first step whose output leaves the stage's tolerance.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdparity.errors import SdparityError, one_line

VERSION = 1  # part of every per-op build key: bump when the one-op module or its export changes
FUNCTION = "op"  # the Relax function of a one-op build
SKIP = {"aten._assert_tensor_metadata.default"}  # returns nothing
MAX_LISTED = 10
#: op replay judges the traced calls in batches: the calls of up to BATCH new signatures (or
#: BATCH_BYTES of inputs held) are built as one module (``ops_ir``: one import, one build), then
#: judged in graph order. Past the first divergence at most one batch was traced and built for
#: nothing; one at a time, a one-op import and build cost ~0.7 s each on 2 cores, mostly fixed cost.
BATCH = 32
BATCH_BYTES = 512 << 20
#: ops that only move, select or compare data: exact on any correct backend, whatever the values
#: (their float64 result is their float32 one, so the trace does not recompute it)
DATA_MOVEMENT = {
    "aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.permute.default",
    "aten.expand.default", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.clone.default",
    "aten.alias.default", "aten.slice.Tensor", "aten.cat.default", "aten.split_with_sizes.default",
    "aten.split.Tensor", "aten.select.int", "aten.index.Tensor", "aten.embedding.default",
    "aten.transpose.int", "aten.t.default", "aten._to_copy.default", "aten.contiguous.default",
    "aten.upsample_nearest2d.vec", "aten.full_like.default", "aten.scalar_tensor.default",
    "aten.arange.start_step", "aten.arange.default", "aten.where.self", "aten.logical_not.default",
    "aten.any.dim", "aten.eq.Scalar", "aten.le.Tensor", "aten.argmax.default",
}


# ---- the program and its trace -------------------------------------------------------------
def export_program(stage, model, variant: dict):
    """The stage's exported program exactly as ``sdparity.compile.frontend`` exports it, then
    decomposed as ``from_exported_program`` decomposes it before importing."""
    import torch

    args = tuple(torch.from_numpy(np.array(a)) for a in stage.example_inputs(model, variant))
    # the module the stage exports (with its fault); fixed shapes: a symbolic-shape build runs
    # the same ops, and the replay needs the case's concrete ones
    export_module = getattr(stage, "export_module", None)
    module = (export_module(model, variant) if export_module else stage.wrapper(model, stage.fault)).eval()
    with torch.no_grad():
        return torch.export.export(module, args).run_decompositions()


@dataclass
class Slot:
    """Where the i-th tensor input of a one-op module goes in the op's arguments."""

    index: int


@dataclass
class OpCall:
    """One aten call of the traced program, with what it got and what torch made of it."""

    position: int  # index among the program's aten calls
    node: str  # fx node name
    op: str  # e.g. "aten.native_group_norm.default"
    target: object  # the OpOverload
    args: tuple  # with tensors replaced by Slot
    kwargs: dict
    tensors: list  # torch tensors (float32 graph values)
    weights: list  # per tensor: computed from the stage's weights/constants alone (no user input)
    outputs: tuple | None  # indices of a multi-output op's results that the program uses
    out32: list = field(default_factory=list)  # numpy
    out64: list = field(default_factory=list)  # numpy: the op in float64 on upcast inputs, rounded to out32's dtype
    module: str = ""  # nn.Module path, e.g. "unet.down_blocks.0.resnets.0.norm1"
    module_type: str = ""
    original: str = ""  # the op before decomposition (e.g. aten.silu.default), if different

    def attributes(self) -> dict:
        """Non-tensor arguments by schema name."""
        out = {}
        for i, a in enumerate(self.target._schema.arguments):
            v = self.args[i] if i < len(self.args) else self.kwargs.get(a.name, None)
            if a.name in self.kwargs:
                v = self.kwargs[a.name]
            if not _has_slot(v) and (i < len(self.args) or a.name in self.kwargs):
                out[a.name] = _literal(v)
        return out

    def signature(self) -> dict:
        return {"op": self.op, "args": _literal(self.args), "kwargs": _literal(self.kwargs),
                "tensors": [[list(t.shape), str(t.dtype)] for t in self.tensors],
                "outputs": None if self.outputs is None else list(self.outputs)}

    def key(self) -> str:
        from sdparity.ir import digest

        return digest(self.signature())

    def shapes(self) -> list:
        return [list(t.shape) for t in self.tensors]


def _has_slot(v) -> bool:
    if isinstance(v, Slot):
        return True
    return isinstance(v, (list, tuple)) and any(_has_slot(x) for x in v)


def _literal(v):
    """A JSON-able, exact rendering of a non-tensor argument (tensors as {"tensor": i})."""
    if isinstance(v, Slot):
        return {"tensor": v.index}
    if isinstance(v, (list, tuple)):
        return [_literal(x) for x in v]
    if isinstance(v, dict):
        return {k: _literal(x) for k, x in v.items()}
    if isinstance(v, float):
        return repr(v)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)  # dtype, device, layout, memory format


def _py(v) -> str:
    """Python source for a non-tensor argument (tensors as t[i]) in the repro script."""
    import torch

    if isinstance(v, Slot):
        return f"t[{v.index}]"
    if isinstance(v, list):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + "".join(_py(x) + ", " for x in v) + ")"
    if isinstance(v, float):
        return f"float({v!r})" if not np.isfinite(v) else repr(v)
    if isinstance(v, torch.dtype):
        return str(v)  # "torch.float32"
    if isinstance(v, torch.device):
        return f"torch.device({str(v)!r})"
    if isinstance(v, (torch.layout, torch.memory_format)):
        return str(v)  # "torch.strided", "torch.contiguous_format"
    if v is None or isinstance(v, (bool, int, str)):
        return repr(v)
    raise SdparityError(f"cannot write argument {v!r} of type {type(v).__name__} into a repro")


def _split_tensors(args, kwargs, node_args=(), node_kwargs=None):
    """(args, kwargs) with every tensor replaced by a Slot, the tensors in slot order, and the
    fx argument (node) each tensor came from (walked in parallel with the values)."""
    import torch

    tensors, sources = [], []

    def sub(v, n):
        if isinstance(v, torch.Tensor):
            tensors.append(v)
            sources.append(n)
            return Slot(len(tensors) - 1)
        if isinstance(v, (list, tuple)):
            ns = n if isinstance(n, (list, tuple)) and len(n) == len(v) else [None] * len(v)
            return type(v)(sub(x, m) for x, m in zip(v, ns))
        return v

    node_kwargs = node_kwargs or {}
    a = sub(tuple(args), tuple(node_args) if len(node_args) == len(args) else [None] * len(args))
    k = {name: sub(v, node_kwargs.get(name)) for name, v in kwargs.items()}
    return a, k, tensors, sources


def _fill(v, tensors):
    if isinstance(v, Slot):
        return tensors[v.index]
    if isinstance(v, (list, tuple)):
        return type(v)(_fill(x, tensors) for x in v)
    if isinstance(v, dict):
        return {k: _fill(x, tensors) for k, x in v.items()}
    return v


def _as64(t):
    import torch

    return t.to(torch.float64, memory_format=torch.contiguous_format) if t.is_floating_point() else t


def _numpy_outputs(out, outputs) -> list:
    import torch

    if outputs is None:
        out = [out]
    else:
        out = [out[i] for i in outputs]
    return [o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out]


def _rounded(out64: list, like: list) -> list:
    """float64 results rounded to the float32 outputs' dtypes (what judge compares with anyway)."""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as float32 would give
        return [a.astype(b.dtype) if b.dtype.kind == "f" else a for a, b in zip(out64, like)]


def run_op(call: OpCall, tensors: list, dtype: str = "float32") -> list:
    """torch's result of the op on ``tensors`` (float inputs upcast for "float64")."""
    import torch

    if dtype == "float64":
        tensors = [_as64(t) for t in tensors]
    with torch.no_grad():
        out = call.target(*_fill(call.args, tensors), **_fill(call.kwargs, tensors))
    return _numpy_outputs(out, call.outputs)


def _placeholders(ep, user_inputs: list) -> list:
    """Values of the graph's placeholders: lifted weights/buffers/constants, then the inputs."""
    import torch

    it = iter(user_inputs)
    values = []
    for spec in ep.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            values.append(torch.from_numpy(np.array(next(it))))
        elif spec.target in ep.state_dict:
            values.append(ep.state_dict[spec.target])
        else:
            values.append(ep.constants[spec.target])
    return values


class _Stop(Exception):
    pass


def trace(ep, user_inputs: list, on_call) -> list:
    """Run ``ep`` with torch in float32, calling ``on_call(OpCall)`` after every aten call
    (in graph order). ``on_call`` returning True stops the run. Returns the program's outputs
    (or None when stopped)."""
    import torch
    from torch.fx import Interpreter
    from torch.utils._pytree import tree_map_only

    graph_module = ep.graph_module
    position = [0]
    # nodes computed from weights/buffers/constants alone (their values are the model's, not data)
    derived = {s.arg.name for s in ep.graph_signature.input_specs if s.kind.name != "USER_INPUT"}

    class Recorder(Interpreter):
        def call_function(self, target, args, kwargs):
            # strides are not part of the decomposed program's meaning, but some kernels insist
            # (native_group_norm after attention: eager group_norm made it contiguous first)
            args, kwargs = tree_map_only(torch.Tensor, lambda t: t.contiguous(), (args, kwargs))
            return super().call_function(target, args, kwargs)

        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.all_input_nodes and all(m.name in derived for m in n.all_input_nodes):
                derived.add(n.name)
            if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
                return out
            name = str(n.target)
            if name in SKIP:
                return out
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            a, k, tensors, sources = _split_tensors(args, kwargs, n.args, n.kwargs)
            outputs = None
            if isinstance(out, (tuple, list)):
                outputs = tuple(sorted({u.args[1] for u in n.users if u.target is operator.getitem}))
            stack = n.meta.get("nn_module_stack") or {}
            path, mtype = (list(stack.values())[-1] if stack else ("", ""))
            original = n.meta.get("original_aten")
            call = OpCall(position=position[0], node=n.name, op=name, target=n.target, args=a, kwargs=k,
                          tensors=[t.detach().contiguous() for t in tensors], outputs=outputs, module=path,
                          weights=[getattr(m, "name", None) in derived for m in sources],
                          module_type=str(mtype).rsplit(".", 1)[-1],
                          original="" if original is None or str(original) == name else str(original))
            position[0] += 1
            call.out32 = _numpy_outputs(out, outputs)
            if name in DATA_MOVEMENT and not name.startswith("aten.arange"):
                call.out64 = call.out32  # copies, selections, comparisons: float64 gives the same values
            else:
                call.out64 = _rounded(run_op(call, call.tensors, "float64"), call.out32)
            if on_call(call):
                raise _Stop
            return out

    with torch.no_grad():
        try:
            return Recorder(graph_module).run(*_placeholders(ep, user_inputs))
        except _Stop:
            return None


# ---- one op alone through the stage's build path ---------------------------------------------
def _one_op_module(call: OpCall):
    import torch

    class OneOp(torch.nn.Module):
        def forward(self, *tensors):
            out = call.target(*_fill(call.args, tensors), **_fill(call.kwargs, tensors))
            return out if call.outputs is None else tuple(out[i] for i in call.outputs)

    return OneOp()


def op_ir(call: OpCall):
    """The one-op module through the stage's import path (sdparity.compile.frontend)."""
    from sdparity.compile.frontend import export_to_relax

    return export_to_relax(_one_op_module(call), tuple(call.tensors), FUNCTION)


def ops_ir(calls: list[OpCall], names: list[str]):
    """``op_ir`` of many calls at once (function ``names[i]`` is call i's one-op function),
    imported as one program (``sdparity.compile.frontend.export_many``)."""
    from sdparity.compile.frontend import export_many

    return export_many([(_one_op_module(c), tuple(c.tensors)) for c in calls], names)


def kernel_names(call: OpCall, backend) -> list[str]:
    """The kernels (PrimFuncs) the op becomes on ``backend``: its legalization + fusion + schedules."""
    from sdparity.compile.compat import tir
    from sdparity.compile.schedule import schedule_for

    mod = schedule_for(op_ir(call).mod, backend.target())
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tir().PrimFunc))


# ---- judging ---------------------------------------------------------------------------------
def judge(cands: list, out32: list, out64: list, budget) -> dict:
    """Compare a backend's outputs of one op with torch's, by the one comparison
    (sdparity.compare). Float outputs: against the float64 result rounded to the output dtype
    (so an overflow to inf in float32 is the reference, not an error); the floor is the same
    comparison of torch's float32 result with it (max_abs = floor, ref_scale = scale), and the
    bound an absolute one, ``budget.allowed(floor, scale)`` (sdparity.tolerances.OpBudget).
    Others: bit-exact. The verdict {"ok", "max_abs", "floor", "allowed", "ratio", "scale",
    "output", "why"} of the worst output (the first failing one, else the largest ratio)."""
    from sdparity.compare import compare
    from sdparity.tolerances import EXACT, Tolerance

    worst = {"ok": True, "max_abs": 0.0, "floor": 0.0, "allowed": 0.0, "ratio": None, "output": 0}
    if len(cands) != len(out32):
        return {**worst, "ok": False, "why": f"{len(cands)} outputs, torch has {len(out32)}"}
    for i, (c, r32, r64) in enumerate(zip(cands, out32, out64)):
        c = np.asarray(c)
        if r32.dtype.kind not in "fc":
            m = compare(c, r32, EXACT, integer=True)
            if not m.passed:
                return {**worst, "ok": False, "output": i, "mismatches": m.mismatches,
                        "why": f"exact op: {m.why}"}
            continue
        with np.errstate(over="ignore"):  # beyond float32's range: the reference is inf
            ref = r64.astype(r32.dtype, copy=False)
        own = compare(r32, ref, EXACT)  # torch float32's own error: the floor, and the output's scale
        floor, scale = own.max_abs, own.ref_scale or 0.0
        allowed = budget.allowed(floor, scale, r32.dtype)
        m = compare(c, ref, Tolerance(allowed, reason=f"op budget: {budget.floor_ratio:g}x the floor "
                                      f"{floor:.3g} + {budget.ulps:g} ulp of {scale:.3g}"), reference64=r32)
        if m.failed_bound == "shape":
            return {**worst, "ok": False, "output": i, "why": f"{m.why} (torch's)"}
        err = m.max_abs
        ratio = err / floor if floor > 0 else (0.0 if err == 0 else float("inf"))
        item = {"max_abs": err, "floor": floor, "allowed": allowed, "ratio": ratio, "scale": scale, "output": i}
        if not m.passed:
            return {**item, "ok": False, "why": f"{m.why}; allowed {allowed:.3g} = {budget.floor_ratio:g}x "
                    f"the floor {floor:.3g} ({ratio:.3g}x) + {budget.ulps:g} ulp"}
        if worst["ratio"] is None or (ratio > worst["ratio"]):
            worst = {"ok": True, **item}
    return worst


# ---- the engine -------------------------------------------------------------------------------
class OpReplay:
    """Builds (cached by signature), runs and judges single ops on one backend. ``prepare``
    builds many ops at once, one function each in one module: one build, one link and, on
    WebGPU, one load instead of one per op (op-statistics fuzzing knows its ops in advance)."""

    def __init__(self, backend, runner, cache, log=None):
        from sdparity.tolerances import op_budget

        self.backend, self.runner, self.cache = backend, runner, cache
        self.budget = op_budget(backend.name)
        self.log = log or (lambda *a: None)
        # key -> (artifact, function, None) | (None, None, error)
        self.artifacts: dict[str, tuple] = {}
        self.built = self.cached = 0
        self.build_s = 0.0

    def _build(self, factory, key: dict, label: str):
        t0 = time.perf_counter()
        try:
            art, _, cached = self.backend.build_cached(factory, key, self.cache, log=lambda *a: None, label=label)
            self.cached += cached
            self.built += not cached
            return art
        finally:
            self.build_s += time.perf_counter() - t0

    def prepare(self, calls: list[OpCall]) -> None:
        """Build the calls not built yet in one module (function ``op<i>`` for the i-th), cached
        by their signatures. Each op is still computed alone: the module's functions share no
        values. If the module cannot be made or built (an op TVM cannot import or build), the
        calls are left to ``artifact``, which builds each alone and keeps its own error."""
        todo = list({c.key(): c for c in calls if c.key() not in self.artifacts}.values())
        if len(todo) < 2:
            return
        names = [f"{FUNCTION}{i}" for i in range(len(todo))]

        def factory():
            return ops_ir(todo, names)

        try:
            art = self._build(factory, {"opreplay": VERSION, "batch": [c.signature() for c in todo]},
                              f"ops/{len(todo)}/{self.backend.name}")
        except Exception as e:  # noqa: BLE001
            self.log(f"op replay: {len(todo)} ops in one module failed ({one_line(e)}); building each alone")
            return
        for c, n in zip(todo, names):
            self.artifacts[c.key()] = (art, n, None)

    def artifact(self, call: OpCall):
        """(artifact, function, None) or (None, None, the build's error)."""
        k = call.key()
        if k not in self.artifacts:
            try:
                art = self._build(lambda: op_ir(call), {"opreplay": VERSION, "signature": call.signature()},
                                  f"op/{call.op}/{self.backend.name}")
                self.artifacts[k] = (art, FUNCTION, None)
            except Exception as e:  # noqa: BLE001  (an op TVM cannot import or build alone)
                self.artifacts[k] = (None, None, one_line(e))
        return self.artifacts[k]

    def run(self, call: OpCall, tensors: list | None = None) -> list:
        art, function, err = self.artifact(call)
        if art is None:
            raise SdparityError(f"build failed: {err}")
        tensors = call.tensors if tensors is None else tensors
        out = self.runner.run(art, function, [t.numpy() for t in tensors])
        if self.backend.native_vm:
            _release_tvm_pool()
        return out

    def check(self, call: OpCall) -> dict:
        """The verdict of one traced call: {"ok", "max_abs", "floor", "allowed", "ratio", ...}
        or {"ok": None, "error": ...} when the op could not be built or run alone."""
        try:
            cands = self.run(call)
        except Exception as e:  # noqa: BLE001
            return {"ok": None, "error": one_line(e)}
        return judge(cands, call.out32, call.out64, self.budget)


def _release_tvm_pool() -> None:
    """Return the freed buffers TVM's pooled allocator keeps. It keeps one per size it has seen,
    which is fine for one stage but not for hundreds of one-op modules of different shapes:
    8 ops of 16..128 MiB left RSS +851 MiB (+275 after this), and the full-size UNet replay
    was killed at 20.8 GB without it. Safe with live VMs and tensors (only free blocks go)."""
    import tvm

    clear = tvm.get_global_func("vm.builtin.memory_manager.clear", allow_missing=True)
    if clear is not None:
        clear()


def describe(call: OpCall, verdict: dict) -> dict:
    d = {"op": call.op, "position": call.position, "node": call.node, "module": call.module,
         "module_type": call.module_type, "attributes": call.attributes(), "shapes": call.shapes(),
         "dtypes": [str(t.dtype).removeprefix("torch.") for t in call.tensors], "signature": call.key()}
    if call.original:
        d["decomposed_from"] = call.original
    d.update({k: v for k, v in verdict.items() if k != "ok"})
    return d


def replay(ep, user_inputs: list, backend, runner, cache, *, stop_at_first: bool = True, log=None) -> dict:
    """Op replay of ``ep`` on ``user_inputs``: the record, plus ``_first_call`` (the OpCall of the
    first divergence, for the repro; removed before the record is stored)."""
    t0 = time.perf_counter()
    eng = OpReplay(backend, runner, cache, log)
    state = {"calls": 0, "signatures": set(), "diverged": [], "n_diverged": 0, "errors": {}, "first": None}

    last = [time.perf_counter()]
    pending: list[OpCall] = []  # traced, not judged yet: built together, then judged in graph order
    waiting = {"new": set(), "bytes": 0}  # pending's signatures not built yet, and its input bytes

    def judge_pending() -> bool:
        eng.prepare(pending)
        try:
            for call in pending:
                v = eng.check(call)
                if v["ok"] is None:
                    state["errors"].setdefault(call.op, v["error"])
                elif not v["ok"]:
                    state["n_diverged"] += 1
                    if state["first"] is None:
                        state["first"] = call
                    if len(state["diverged"]) < MAX_LISTED + 1:
                        state["diverged"].append(describe(call, v))
                    if stop_at_first:
                        return True
            return False
        finally:
            pending.clear()
            waiting["new"].clear()
            waiting["bytes"] = 0

    def on_call(call: OpCall) -> bool:
        key = call.key()
        state["calls"] += 1
        state["signatures"].add(key)
        if log and time.perf_counter() - last[0] > 30:  # full-size replays take minutes
            last[0] = time.perf_counter()
            log(f"  op replay: {state['calls']} calls, {len(state['signatures'])} distinct, {eng.built} built, "
                f"{eng.cached} cached, {state['n_diverged']} diverged ({call.op} at {call.module or '-'})")
        pending.append(call)
        if key not in eng.artifacts:
            waiting["new"].add(key)
        waiting["bytes"] += sum(t.nbytes for t in call.tensors)
        return (len(waiting["new"]) >= BATCH or waiting["bytes"] >= BATCH_BYTES) and judge_pending()

    trace(ep, user_inputs, on_call)
    if pending:  # the run's last calls (a stopped run judged and cleared its own)
        judge_pending()
    b = eng.budget
    rec = {"status": "diverged" if state["diverged"] else "clean",
           "method": "op replay: every aten call of the decomposed torch.export program built alone "
                     f"for {backend.name} and run on the float32 graph's inputs",
           "backend": backend.name, "budget": b.to_json(), "calls": state["calls"],
           "signatures": len(state["signatures"]), "built": eng.built, "cached": eng.cached,
           "build_s": round(eng.build_s, 2), "stopped_at_first": stop_at_first and bool(state["diverged"]),
           "errors": state["errors"], "first": state["diverged"][0] if state["diverged"] else None,
           "diverged": state["diverged"][1:], "n_diverged": state["n_diverged"],
           "seconds": round(time.perf_counter() - t0, 2), "_first_call": state["first"]}
    if rec["first"]:
        f = rec["first"]
        rec["summary"] = (f"first diverging op {f['op']} at {f['position']} of the program's aten calls "
                          f"({f['module'] or 'top level'}): max |err| {f['max_abs']:.3g} vs float32 floor "
                          f"{f['floor']:.3g} ({f['ratio']:.3g}x; allowed {f['allowed']:.3g})")
    else:
        rec["summary"] = (f"all {state['calls']} aten calls ({len(state['signatures'])} distinct) agree with "
                          f"torch in isolation")
    if state["errors"]:
        rec["summary"] += f"; {len(state['errors'])} op kind(s) could not be built or run alone"
    return rec


# ---- the standalone repro ----------------------------------------------------------------------
#: the repro script, a real module (sdparity/check/op_repro.py) copied beside its JSON and npz
REPRO = Path(__file__).with_name("op_repro.py")


def write_repro(call: OpCall, first: dict, budget, out_dir: Path, backend: str) -> Path:
    """Write ``repro_<op>.py`` and its ``.npz`` into ``out_dir``; returns the script's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"repro_{call.op.replace('aten.', '').replace('.', '_')}_{call.position}"
    np.savez(out_dir / f"{stem}.npz", **{f"t{i}": t.numpy() for i, t in enumerate(call.tensors)})
    overload = call.target._overloadpacket.__name__ + "." + call.target._overloadname
    about = (f"{call.op}{f' (decomposed from {call.original})' if call.original else ''} from "
             f"{call.module or 'the top level'} ({call.module_type or '-'}), call {call.position} of the stage's "
             f"decomposed torch.export program; shapes {call.shapes()}. Recorded on {backend}: max |err| "
             f"{first['max_abs']:.6g} vs torch's float32 floor {first['floor']:.6g} ({first['ratio']:.4g}x); "
             f"allowed {first['allowed']:.6g} = {budget.floor_ratio:g} x floor + {budget.ulps:g} ulp(max |ref|).")
    spec = {"about": about, "target": f"aten.{overload}", "n_tensors": len(call.tensors),
            "args": ", ".join(_py(a) for a in call.args),
            "kwargs": ", ".join(f"{k}={_py(v)}" for k, v in call.kwargs.items()),
            "outputs": None if call.outputs is None else list(call.outputs),
            "ratio": budget.floor_ratio, "ulps": budget.ulps, "backend": backend}
    (out_dir / f"{stem}.json").write_text(json.dumps(spec, indent=1))
    path = out_dir / f"{stem}.py"
    shutil.copyfile(REPRO, path)
    return path


def run_repro(path: Path, env: dict | None = None, timeout: float = 600) -> dict:
    """Run a repro script alone (fresh interpreter, no sdparity on the path)."""
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(env or {})
    t0 = time.perf_counter()
    path = Path(path).resolve()  # run from its own folder: a relative path would be doubled
    p = subprocess.run([sys.executable, str(path)], cwd=str(path.parent), env=e, capture_output=True,
                       text=True, timeout=timeout)
    return {"returncode": p.returncode, "reproduces": p.returncode == 1, "seconds": round(time.perf_counter() - t0, 2),
            "output": (p.stdout + p.stderr).strip()[-2000:]}


# ---- bisecting the Relax pipeline -----------------------------------------------------------------
PIPELINE_STEPS = (
    ("legalized", "every op legalized into its own kernel (sdparity's precise legalization, then TVM's "
                  "default pipeline), unscheduled, llvm opt-level 0"),
    ("fused", "+ FuseOps/FuseTIR as the backends fuse (relax 'zero' pipeline), unscheduled, llvm opt-level 0"),
    ("backend", "the backend's own build (schedules, code generation): the build that failed"),
)


def _build_step(step: str, ir_mod):
    import tvm
    from tvm import relax

    from sdparity.compile import legalize
    from sdparity.compile.schedule import TRUSTED_TARGET

    target = tvm.target.Target(TRUSTED_TARGET)
    mod = legalize.apply(ir_mod, target)
    if step == "fused":
        with target:
            mod = relax.get_pipeline("zero")(mod)
    return relax.build(mod, target=target, relax_pipeline="default")


def bisect_pipeline(stage, model, variant: dict, case, backend, artifact, runner, log=None) -> dict:
    """Run ``case`` through builds with more and more of the pipeline; the first step whose output
    leaves the stage's tolerance names where the divergence comes in."""
    import tvm
    from tvm import relax

    from sdparity.backends.native import tvm_tensor, to_numpy_list
    from sdparity.compare import compare
    from sdparity.tolerances import lookup

    t0 = time.perf_counter()
    ir = stage.build_ir(model, variant)
    r32, r64 = case.reference("float32"), case.reference("float64")
    scope = model.scope  # from the architecture, not the name
    steps = []
    for step, what in PIPELINE_STEPS:
        try:
            if step == "backend":
                outs = runner.run(artifact, case.function, case.inputs)
            else:
                dev = tvm.cpu()
                vm = relax.VirtualMachine(_build_step(step, ir.mod), dev)
                args = [tvm_tensor(a, dev) for a in list(case.inputs) + ir.params.get(case.function, [])]
                outs = to_numpy_list(vm[case.function](*args))
        except Exception as e:  # noqa: BLE001
            steps.append({"step": step, "what": what, "error": one_line(e)})
            continue
        worst = None
        judged_as = backend.name if step == "backend" else "llvm"  # the other steps are llvm builds
        for spec, c, a, b in zip(case.outputs, outs, r32, r64):
            m = compare(c, a, lookup(stage.name, spec.name, judged_as, scope), b, integer=spec.integer)
            worst = worst or (None if m.passed else {"output": spec.name, "max_abs": m.max_abs, "why": m.why})
        steps.append({"step": step, "what": what, "passed": worst is None, **({"failed": worst} if worst else {})})
        if log:
            log(f"  pipeline bisect: {step}: {'pass' if worst is None else 'FAIL'}")
        if worst is not None:
            break
    first = next((s for s in steps if s.get("passed") is False), None)
    if first is None:
        verdict = "no pipeline step reproduces the failure on this case"
    elif first["step"] == "legalized":
        verdict = ("the unfused, unscheduled build already fails although every op agrees alone: the "
                   "divergence is in the imported Relax graph as a whole (the stage definition, or how "
                   "from_exported_program connects the ops), or in a pass of TVM's default pipeline")
    elif first["step"] == "fused":
        verdict = "introduced by operator fusion (FuseOps/FuseTIR): the unfused build passes, the fused one fails"
    else:
        verdict = ("introduced by the backend's schedules or code generation: the unscheduled fused "
                   "build passes")
    return {"steps": steps, "culprit": None if first is None else first["step"], "verdict": verdict,
            "seconds": round(time.perf_counter() - t0, 2)}


# ---- entry points ------------------------------------------------------------------------------------
def localize_ops(stage, model, variant: dict, case, backend, runner, cache, out_dir: Path | None = None,
                 artifact=None, stop_at_first: bool = True, verify_repro: bool = True, log=None) -> dict:
    """Op replay of one case of ``stage`` on ``backend``; repro + pipeline bisect as needed."""
    t0 = time.perf_counter()
    ep = export_program(stage, model, variant)
    rec = replay(ep, case.inputs, backend, runner, cache, stop_at_first=stop_at_first, log=log)
    call = rec.pop("_first_call")
    if call is not None:
        try:
            rec["first"]["kernels"] = kernel_names(call, backend)
        except Exception as e:  # noqa: BLE001
            rec["first"]["kernels_error"] = one_line(e)
        if out_dir is not None:
            from sdparity.tolerances import op_budget

            path = write_repro(call, rec["first"], op_budget(backend.name), Path(out_dir), backend.name)
            rec["first"]["repro"] = str(path.resolve())
            if verify_repro:
                r = run_repro(path)
                rec["first"]["repro_reproduces"] = r["reproduces"]
                rec["first"]["repro_output"] = r["output"][-600:]
                if not r["reproduces"]:
                    rec["summary"] += ("; the llvm repro (TVM's default pipeline) does not reproduce it: "
                                       "the divergence needs sdparity's build path or this backend")
            rec["summary"] += f"; repro: {path}"
    elif artifact is not None:
        rec["pipeline"] = bisect_pipeline(stage, model, variant, case, backend, artifact, runner, log)
        rec["summary"] += f"; pipeline bisect: {rec['pipeline']['verdict']}"
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def default_out_dir(stage: str, backend: str, case: str) -> Path:
    """Where a failing check's repro goes: $SDPARITY_LOCALIZE_OUT (default ./sdparity-localize,
    beside the default report) / STAGE-BACKEND-CASE."""
    return Path(os.environ.get("SDPARITY_LOCALIZE_OUT", "sdparity-localize")) / f"{stage}-{backend}-{case}"
