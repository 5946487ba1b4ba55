"""Standalone repro of one aten op that diverges, written by `sdparity localize` (op replay).

`sdparity localize` copies this file as ``repro_<op>_<call>.py`` beside ``<same>.json`` (the op,
its arguments, where it came from, the recorded error and the budget) and ``<same>.npz`` (its
tensors). It needs only torch, numpy and TVM (no sdparity import): it builds the op alone for
llvm (torch.export -> from_exported_program -> relax.build, TVM's default pipeline), runs it on
the recorded inputs, compares with torch float64 rounded to the output dtype, and exits 1 when
the error exceeds the budget, 3 on any error of its own (``allowed``: the op-replay budget of sdparity.tolerances.OpBudget,
``ratio`` x torch's float32 floor + ``ulps`` ulp of the largest |reference|), 0 when it does not.
Hook for tests: REPRO_PRELUDE=file.py is executed first (e.g. to perturb a TVM legalization).
"""

import json
import os
import sys

import numpy as np


def allowed(floor: float, scale: float, ratio: float, ulps: float) -> float:
    """The budget (the same formula as sdparity.tolerances.OpBudget.allowed, float32 outputs)."""
    return ratio * floor + ulps * float(np.spacing(np.float32(scale)))


def main() -> int:
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    here = os.path.splitext(os.path.abspath(__file__))[0]
    with open(here + ".json") as f:
        spec = json.load(f)
    print(spec["about"])
    if os.environ.get("REPRO_PRELUDE"):
        with open(os.environ["REPRO_PRELUDE"]) as f:
            exec(f.read(), {"__name__": "__prelude__"})
    data = np.load(here + ".npz")
    inputs = [torch.from_numpy(data[f"t{i}"]) for i in range(spec["n_tensors"])]
    op = eval(f"torch.ops.{spec['target']}", {"torch": torch})  # noqa: S307 - the recorded op's name

    class Op(torch.nn.Module):
        def forward(self, *t):
            out = op(*eval(f"[{spec['args']}]", {"t": t, "torch": torch}),  # noqa: S307
                     **eval(f"dict({spec['kwargs']})", {"t": t, "torch": torch}))  # noqa: S307
            return out if spec["outputs"] is None else tuple(out[i] for i in spec["outputs"])

    def torch_outputs(dtype):
        t = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
        with torch.no_grad():
            out = Op()(*t)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    def flat(v):
        return [v.numpy()] if hasattr(v, "numpy") else [a for x in v for a in flat(x)]

    ep = torch.export.export(Op().eval(), tuple(inputs))
    mod, _ = relax.frontend.detach_params(from_exported_program(ep, keep_params_as_input=True))
    vm = relax.VirtualMachine(relax.build(mod, target="llvm"), tvm.cpu())
    got = flat(vm["main"](*[tvm.runtime.tensor(x.numpy()) for x in inputs]))
    bad = False
    for i, (g, r32, r64) in enumerate(zip(got, torch_outputs(torch.float32), torch_outputs(torch.float64))):
        if r32.dtype.kind not in "fc":
            n = int((g != r32).sum())
            print(f"output {i}: {n} elements differ (exact op)")
            bad |= n > 0
            continue
        with np.errstate(over="ignore"):
            ref = r64.astype(r32.dtype).astype(np.float64)

        def diff(a):
            return float(np.nan_to_num(np.where(a == ref, 0.0, np.abs(a - ref)), nan=np.inf).max())

        err, floor = diff(g.astype(np.float64)), diff(r32.astype(np.float64))
        scale = float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0))
        limit = allowed(floor, scale, spec["ratio"], spec["ulps"])
        print(f"output {i}: TVM {g.ravel()[:4]} torch {r32.ravel()[:4]}")
        print(f"output {i}: max |TVM - float64| {err:.6g}, torch float32 floor {floor:.6g}, allowed {limit:.6g}")
        bad |= err > limit
    print("DIVERGES" if bad else "within budget")
    return 1 if bad else 0


if __name__ == "__main__":
    # exit 1: the op diverges (the bug reproduces); 0: within budget; 3: an error of the repro
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - never evidence of the bug
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
