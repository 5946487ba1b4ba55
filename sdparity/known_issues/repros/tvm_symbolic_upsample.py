"""Known issue tvm_symbolic_upsample: TVM's PyTorch frontend cannot import a nearest
F.interpolate whose input or output height/width is symbolic (torch.export with
torch.export.Dim), neither with a scale factor nor with an output size.

relax.frontend.torch (``_upsample_impl`` / ``_upsample_nearest2d``) assumes constant sizes:
(1) scale_factor: the output size is computed as ``int(shape[i].value * scale_factor)``; a
symbolic dimension is a tirx.Var, which has no ``.value`` -> "AttributeError: 'Var' object has
no attribute 'value'". (2) size: the size list holds torch.fx Nodes (the symbolic sizes), which
are passed to relax.ShapeExpr unconverted -> "TypeError: Mismatched type on argument #0 when
calling: `relax.ShapeExpr(...)`". diffusers' Upsample2D takes path (1) without an output size
(the whole SD VAE decoder; the UNet when the latent sides divide by its up factor) and path
(2) otherwise, so neither model can be built once for all latent sizes. Both could keep the
size symbolic (shape[i] * int(scale); the size nodes' Relax values).

Standalone (torch + TVM only). Exit status (sdparity's repro protocol): 1 while an import
fails with one of the two errors above, 0 once both import and match PyTorch, 3 for anything
else (another import error, a build that differs from PyTorch, any exception: an error of this
script, not evidence).
Run: python sdparity/known_issues/repros/tvm_symbolic_upsample.py
"""

import sys


def models() -> list:
    import torch

    class ByScale(torch.nn.Module):
        def forward(self, x, like):
            return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")

    class BySize(torch.nn.Module):
        def forward(self, x, like):
            return torch.nn.functional.interpolate(x, size=like.shape[2:], mode="nearest")

    return [ByScale(), BySize()]


def is_the_bug(e: Exception) -> bool:
    """The two errors of the issue; any other is an error of this script."""
    text = " ".join(str(e).split())
    return (isinstance(e, AttributeError) and "'value'" in text) or \
        (isinstance(e, TypeError) and "ShapeExpr" in text)


def check(model) -> bool:
    """True when the symbolic import works and matches PyTorch; False when it fails with the
    bug's error. Raises otherwise."""
    import numpy as np
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    ep = torch.export.export(model, (torch.zeros(1, 2, 4, 6), torch.zeros(1, 1, 8, 12)),
                             dynamic_shapes={"x": {2: h, 3: w}, "like": {2: 2 * h, 3: 2 * w}})
    try:
        mod = from_exported_program(ep)
    except Exception as e:  # noqa: BLE001  (the failure is what this script reports)
        if not is_the_bug(e):
            raise
        print(f"{type(model).__name__}: import failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}")
        return False
    rng = np.random.default_rng(0)
    x, like = rng.standard_normal((1, 2, 5, 3)).astype(np.float32), np.zeros((1, 1, 10, 6), np.float32)
    vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(like))
    got = (out if hasattr(out, "numpy") else out[0]).numpy()
    same = np.array_equal(got, model(torch.from_numpy(x), torch.from_numpy(like)).numpy())
    print(f"{type(model).__name__}: imports with symbolic h, w; " + ("matches PyTorch" if same else "DIFFERS from PyTorch"))
    if not same:
        raise RuntimeError(f"{type(model).__name__} imports but differs from PyTorch: another bug than this one")
    return True


def main() -> int:
    import torch
    import tvm

    print(f"tvm {tvm.__version__}, torch {torch.__version__}")
    ok = [check(m) for m in models()]
    print("fixed" if all(ok) else "reproduces")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
