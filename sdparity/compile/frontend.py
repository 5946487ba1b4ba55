"""The one import path from PyTorch to Relax (TVM 0.27):
torch.export.export -> from_exported_program(keep_params_as_input=True) -> detach_params.

The resulting function takes the example inputs followed by its weights as separate
parameters; it is renamed to the stage's function name so stages can be merged into one
module (the browser pipeline loads them all from one wasm).

Importing is half the cost of a tiny build (measured: 89 of 168 s of a UNet shape fuzz, most
of it torch.export and PyTorch's decomposition), and a process often imports one stage
several times: for llvm and for WebGPU, for the f16 mode, with a TVM lowering perturbed
(after the import), with known issues neutralized (the same decomposed program, other
converters). So a caller that names what it imports (``memo``: a key of everything that
changes the exported program) gets the decomposed program and the Relax module from a small
in-process memo. Only small programs are kept (``MEMO_MAX_BYTES`` of weights): a full-size
model is imported as before.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from sdparity.errors import SdparityError
from sdparity.ir import StageIR

MEMO_ENTRIES = 6
MEMO_MAX_BYTES = 256 << 20
_EXPORTED: OrderedDict = OrderedDict()  # memo -> torch's decomposed ExportedProgram
_IMPORTED: OrderedDict = OrderedDict()  # (memo, patch_upsample, neutralize) -> StageIR


def _remember(table: OrderedDict, key, value, nbytes: int) -> None:
    if nbytes <= MEMO_MAX_BYTES:
        table[key] = value
        while len(table) > MEMO_ENTRIES:
            table.popitem(last=False)


def _recall(table: OrderedDict, key):
    if key is None or key not in table:
        return None
    table.move_to_end(key)
    return table[key]


def export_to_relax(module, example_args: tuple, function: str, dynamic_shapes=None,
                    patch_upsample: bool = True, neutralize=(), memo: str | None = None) -> StageIR:
    """``dynamic_shapes`` (torch.export's argument) makes a symbolic-shape build; its nearest
    upsamplings then go through ``_symbolic_upsample_nearest`` unless ``patch_upsample`` is
    False (known issue tvm_symbolic_upsample: TVM's own conversion cannot take a symbolic size;
    its neutralizer switches the patch back on). ``neutralize``: names of known issues whose
    neutralizers (compile/neutralize.py) replace TVM's conversion of the ops they are in.
    ``memo``: see the module's docstring (None: no memo)."""
    ikey = None if memo is None else (memo, bool(patch_upsample), tuple(sorted(neutralize)))
    held = _recall(_IMPORTED, ikey)
    if held is None:
        held = _import(module, example_args, function, dynamic_shapes, patch_upsample, neutralize, memo)
        if ikey is None:
            return held
        _remember(_IMPORTED, ikey, held, sum(w.nbytes for ws in held.params.values() for w in ws))
    # each caller its own StageIR around the same (immutable) module and arrays
    return StageIR(held.mod, {f: list(ws) for f, ws in held.params.items()})


def _import(module, example_args, function, dynamic_shapes, patch_upsample, neutralize, memo) -> StageIR:
    from sdparity.compile.neutralize import convert_map
    import torch
    import tvm
    from tvm import relax

    try:
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError as e:  # a TVM whose API differs
        raise SdparityError(f"this TVM ({tvm.__version__}) has no relax.frontend.torch."
                            f"from_exported_program: {e}") from None
    ep = _recall(_EXPORTED, memo)
    if ep is None:
        module = module.eval()
        with torch.no_grad():
            try:
                ep = torch.export.export(module, example_args, dynamic_shapes=dynamic_shapes)
            except Exception as e:
                raise SdparityError(f"torch.export of {function} failed: {str(e).splitlines()[0]}") from e
        try:  # what from_exported_program does first (its run_ep_decomposition), done here once
            ep = ep.run_decompositions()
        except Exception as e:
            raise SdparityError(f"TVM {tvm.__version__} could not import {function}: PyTorch's decomposition "
                                f"failed: {str(e).strip().splitlines()[-1]}") from e
        if memo is not None:
            _remember(_EXPORTED, memo, ep, sum(t.nbytes for t in ep.state_dict.values()))
    try:
        patch = dynamic_shapes is not None and (patch_upsample or "tvm_symbolic_upsample" in neutralize)
        convert = {"upsample_nearest2d.vec": _symbolic_upsample_nearest} if patch else {}
        convert.update(convert_map(neutralize))
        mod = from_exported_program(ep, keep_params_as_input=True, custom_convert_map=convert or None,
                                    run_ep_decomposition=False)
    except Exception as e:
        raise SdparityError(f"TVM {tvm.__version__} could not import {function}: "
                            f"{str(e).strip().splitlines()[-1]}") from e
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"].with_attr("global_symbol", function)
    new = tvm.IRModule({function: main})
    # views, not copies: TVM took torch's parameters through DLPack, so the arrays share the
    # model's memory (a full-size SDXL UNet is 10.3 GB: a copy here would be a second); read-only,
    # so nothing written into a build's weights can reach the reference's
    weights = [_read_only(np.from_dlpack(p)) for p in params.get("main", [])]
    return StageIR(new, {function: weights})


def export_many(items: list, names: list[str]) -> StageIR:
    """``export_to_relax(module, inputs, names[i])`` of every ``(module, inputs)`` in ``items``,
    merged: for modules without weights that each compute a tensor or a tuple of tensors from
    their own inputs (one-op modules of op replay, own-kernel modules).

    PyTorch's ``run_decompositions`` costs ~0.3 s a call whatever the program (it collects every
    CompositeImplicitAutograd op of every namespace each time): most of a small import. So the
    modules are exported as one that runs each on its own inputs (one export, one decomposition,
    one ``from_exported_program``), and each function is cut out of the result: its inputs, the
    bindings its outputs need, its outputs, emitted by a BlockBuilder as the importer emits
    them. Decomposition and import work node by node, so the cut is the function a separate
    import makes (tests/unit/test_opreplay.py compares them structurally). A program the cut
    could not reproduce exactly (weights torch lifted, function attributes such as torch's
    symbol ranges, several blocks) raises SdparityError: import each alone then."""
    import torch
    from tvm import relax

    tensors, spans, seen = [], [], set()
    for _, inputs in items:
        spans.append((len(tensors), len(inputs)))
        for t in inputs:  # a placeholder a tensor: one that two modules share is passed again, as a copy
            tensors.append(t.clone() if id(t) in seen else t)
            seen.add(id(t))
    widths = [0] * len(items)

    class Many(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = torch.nn.ModuleList([m for m, _ in items])

        def forward(self, *ts):
            outs = []
            for i, (part, (start, n)) in enumerate(zip(self.parts, spans)):
                out = part(*ts[start:start + n])
                out = list(out) if isinstance(out, (tuple, list)) else [out]
                widths[i] = len(out)
                outs += out
            return tuple(outs)

    whole = export_to_relax(Many(), tuple(tensors), "many")
    main = whole.mod["many"]
    extra = sorted(set(main.attrs.keys()) - {"global_symbol", "num_input"})
    if whole.params.get("many") or extra or len(main.body.blocks) != 1:
        why = ", ".join(extra) or ("lifted weights" if whole.params.get("many") else "several blocks")
        raise SdparityError(f"the modules imported together are not a plain program ({why}): import each alone")
    (block,) = main.body.blocks
    results = list(next(b.value for b in block.bindings if b.var.same_as(main.body.body)).fields)
    irs, first = [], 0
    for (module, _), name, (start, n), width in zip(items, names, spans, widths):
        outs, first = results[first:first + width], first + width
        need = {v for o in outs for v in relax.analysis.free_vars(o)}  # a Var's free vars: itself
        kept = []
        for b in reversed(block.bindings):
            if b.var in need:
                kept.append(b)
                need |= set(relax.analysis.free_vars(b.value))
        kept.reverse()
        params = list(zip(_input_names(module, n), main.params[start:start + n]))
        irs.append(StageIR(_emit_function(name, params, kept, outs), {name: []}))
    return merge(irs)


def _input_names(module, n: int) -> list[str]:
    """The parameter names torch.export gives ``module``'s ``n`` inputs (``*xs``: xs_0, xs_1, ...)."""
    import inspect

    names = []
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            names += [f"{p.name}_{j}" for j in range(n - len(names))]
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return names[:n]


def _emit_function(name: str, params: list, bindings: list, outs: list):
    """A Relax function ``name`` of ``bindings`` over fresh parameters (``params``: (name, the
    whole program's parameter) pairs), returning the tuple of ``outs``."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from sdparity.compile.compat import type_info

    @mutator
    class Substitute(PyExprMutator):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def visit_var_(self, op):
            return self.table.get(op, op)

        def visit_dataflow_var_(self, op):
            return self.table.get(op, op)

    fresh = [relax.Var(label, type_info(p)) for label, p in params]
    table = {p: v for (_, p), v in zip(params, fresh)}
    substitute = Substitute(table)  # reads the table as it grows
    bb = relax.BlockBuilder()
    with bb.function(name, fresh, attrs={"num_input": len(fresh)}):
        with bb.dataflow():
            for b in bindings:
                table[b.var] = bb.emit(substitute.visit_expr(b.value))
            gv = bb.emit_output(relax.Tuple([table[o] if isinstance(o, relax.Var) else o for o in outs]))
        bb.emit_func_output(gv)
    mod = bb.get()
    return tvm.IRModule({mod.get_global_var(name): mod[name].with_attr("global_symbol", name)})


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _symbolic_upsample_nearest(node, importer):
    """aten.upsample_nearest2d.vec with a symbolic size, converted by TVM's own
    ``_upsample_impl`` (so its nearest semantics stay TVM's: known issue
    tvm_nearest_resize_half_pixel shows in symbolic builds as in fixed ones); only the output
    size is computed here: input size * integral scale, or the size nodes' Relax values."""
    from sdparity.compile.neutralize import upsample_size

    size = upsample_size(node, importer)
    if size is None:
        return importer._upsample_nearest2d(node)
    return importer._upsample_impl(importer.env[node.args[0]], size=size, scale_factor=None,
                                   method="nearest_neighbor", align_corners=False)


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
