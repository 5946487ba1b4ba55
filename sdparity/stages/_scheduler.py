"""What the PNDM, Euler and LCM scheduler stages share (a base class, so its source is part of
their build key: ``Stage.source_modules``).

A scheduler stage declares its Relax functions as ``formulas``: name -> (formula, number of
leading tensor arguments). A formula is a plain Python function written with ``+ - * /`` only,
so one definition is the Relax build (relax expressions overload the operators), the PyTorch
eager code the bench times (``torch_eager``) and the numpy float32 emulation of the tests. The
operators are applied exactly as written (parenthesized in diffusers' evaluation order); the
tensors get symbolic int64 (n, c, h, w) dims.

Each function is one TE compute (one kernel) whose scalars travel as **one** 1-D float32 tensor
``scalars`` (in the formula's argument order): built from Relax ops with 0-d scalars, TVM fuses
the elementwise chain into one kernel with a storage buffer per scalar, and PNDM's step then
needs 17, over WebGPU's per-shader-stage limit (8 by the spec's default, 10 on this adapter:
"The number of storage buffers (17) in the Compute stage exceeds the maximum per-stage limit
(10)"); unpacking a vector with Relax ``take`` left one kernel per scalar and the same 17
buffers. As one compute, PNDM's kernel has 7. ``call(formula, inputs)`` applies a formula to
such inputs (numpy or torch).
"""

from __future__ import annotations

import inspect

from sdparity.registry import Case, Output, Stage, StageIR

LATENT = (1, 4, 8, 8)  # the main chains
LATENT_OTHER = (2, 4, 8, 16)  # other step counts: a second shape through the same build


class SchedulerStage(Stage):
    uses_model = False
    time_eager = True  # the case reference replays a cached diffusers chain: time the formula
    reference_kind = "torch eager, same formula (the stage's diffusers reference is cached)"
    formulas: dict = {}  # Relax function name -> (formula, number of leading tensor arguments)

    def torch_eager(self, function):
        formula = self.formulas[function][0]
        return lambda *inputs: call(formula, inputs)

    def build_ir(self, model, variant: dict) -> StageIR:
        return StageIR(build_module(self.formulas), params={})

    @staticmethod
    def case(label: str, function: str, inputs, chain, k: int, output: str, shapes: dict) -> Case:
        """A check of ``function`` on ``inputs`` against record ``output`` of step k of the
        diffusers chain (float32, or its float64 twin for the noise floor)."""
        return Case(label, function, list(inputs), lambda dtype: [chain.records(dtype)[k][output]],
                    (Output(output),), shapes)


def call(formula, inputs):
    """formula(tensors..., scalars...) on a function's inputs (tensors..., scalars vector)."""
    return formula(*inputs[:-1], *inputs[-1])


def build_module(formulas: dict):
    """One Relax function per formula, each a single TE compute: out[i] = formula(t0[i], ...,
    scalars[0], ...). One kernel per function, reading every input buffer once."""
    from tvm import relax, te

    from sdparity.compile.compat import sym_var, tensor_type

    dims = [sym_var(d) for d in "nchw"]
    bb = relax.BlockBuilder()
    for name, (formula, n_tensors) in formulas.items():
        names = list(inspect.signature(formula).parameters)
        n_scalars = len(names) - n_tensors
        tensors = [relax.Var(a, tensor_type(dims, "float32")) for a in names[:n_tensors]]
        scalars = relax.Var("scalars", tensor_type([n_scalars], "float32"))

        def compute(*args, formula=formula, name=name, n_scalars=n_scalars):
            *ts, s = args
            return te.compute(ts[0].shape, lambda *i: formula(*[t[i] for t in ts], *[s[j] for j in range(n_scalars)]),
                              name=name)

        with bb.function(name, [*tensors, scalars]):
            with bb.dataflow():
                out = bb.emit_output(bb.call_te(compute, *tensors, scalars, primfunc_name_hint=name))
            bb.emit_func_output(out)
    return bb.get()
