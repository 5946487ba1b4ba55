"""Known issue tvm_nearest_resize_half_pixel: TVM's PyTorch frontend gives
F.interpolate(mode="nearest", size=...) other pixels than PyTorch when the output size is not
an integer multiple of the input size.

PyTorch's "nearest" reads source index floor(dst * in / out). TVM 0.27's
relax.frontend.torch (``_upsample_impl``) lowers it to relax.op.image.resize2d with
coordinate_transformation_mode="half_pixel" and the default rounding_method="round", i.e.
round((dst + 0.5) * in / out - 0.5). Both agree for exact 2x (what SD uses at latent sides that
divide by the UNet's up factor) and differ otherwise: 3 -> 5 rows read [0, 0, 1, 1, 2] in
PyTorch and [0, 0, 1, 2, 2] in TVM. diffusers' UNet2DConditionModel passes such sizes
(``upsample_size``) whenever a latent side is not a multiple of 2**num_upsamplers.

Standalone (torch + TVM only). Exit status (sdparity's repro protocol): 1 while the bug
reproduces (some size pair reads other rows than PyTorch), 0 once it is fixed, 3 for any
exception (an error of this script, not evidence).
Run: python sdparity/known_issues/repros/tvm_nearest_resize_half_pixel.py
"""

import sys


def rows(n_in: int, n_out: int) -> tuple[list[int], list[int]]:
    """Source row read for every output row, by PyTorch and by the TVM build (column 0)."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    class Nearest(torch.nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = size

        def forward(self, x):
            return torch.nn.functional.interpolate(x, size=self.size, mode="nearest")

    x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1).repeat(1, 1, 1, 2)
    model = Nearest((n_out, 2))
    mod = from_exported_program(torch.export.export(model, (x,)))
    vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    got = (out if hasattr(out, "numpy") else out[0]).numpy()
    ref = model(x).numpy()
    return ref[0, 0, :, 0].astype(int).tolist(), got[0, 0, :, 0].astype(int).tolist()


def main() -> int:
    import numpy as np
    import torch
    import tvm

    print(f"tvm {tvm.__version__}, torch {torch.__version__}")
    bad = 0
    for n_in, n_out in [(4, 8), (2, 3), (3, 5), (5, 9), (12, 23)]:  # (ceil(h/2), h): the tiny UNet's up step
        ref, got = rows(n_in, n_out)
        same = np.array_equal(ref, got)
        bad += not same
        print(f"{n_in:2d} -> {n_out:2d}: {'same' if same else 'DIFFERENT'}  torch {ref}  tvm {got}")
    print("reproduces" if bad else "fixed: TVM matches PyTorch's nearest")
    return 1 if bad else 0


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
