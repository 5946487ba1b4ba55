"""The one import path from PyTorch to Relax (TVM 0.27):
torch.export.export -> from_exported_program(keep_params_as_input=True) -> detach_params.

The resulting function takes the example inputs followed by its weights as separate
parameters; it is renamed to the stage's function name so stages can be merged into one
module (the browser pipeline loads them all from one wasm).
"""

from __future__ import annotations

import numpy as np

from sdparity.errors import SdparityError
from sdparity.ir import StageIR


def export_to_relax(module, example_args: tuple, function: str) -> StageIR:
    import torch
    import tvm
    from tvm import relax

    try:
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError as e:  # a TVM whose API differs
        raise SdparityError(f"this TVM ({tvm.__version__}) has no relax.frontend.torch."
                            f"from_exported_program: {e}") from None
    module = module.eval()
    with torch.no_grad():
        try:
            ep = torch.export.export(module, example_args)
        except Exception as e:
            raise SdparityError(f"torch.export of {function} failed: {str(e).splitlines()[0]}") from e
    try:
        mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:
        raise SdparityError(f"TVM {tvm.__version__} could not import {function}: "
                            f"{str(e).strip().splitlines()[-1]}") from e
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"].with_attr("global_symbol", function)
    new = tvm.IRModule({function: main})
    weights = [np.asarray(p.numpy()) for p in params.get("main", [])]
    return StageIR(new, {function: weights})


def merge(irs: list[StageIR]) -> StageIR:
    """Combine stage modules into one (function names must be unique). The GlobalVar objects
    are kept (IRModule.update), so calls into PrimFuncs (emit_te kernels) stay linked."""
    import tvm

    merged = tvm.IRModule()
    names: set[str] = set()
    params = {}
    for ir in irs:
        for gv in ir.mod.get_global_vars():
            if gv.name_hint in names:
                raise SdparityError(f"function {gv.name_hint} defined by two stages")
            names.add(gv.name_hint)
        merged.update(ir.mod)
        params.update(ir.params)
    return StageIR(merged, params)
