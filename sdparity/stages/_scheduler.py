"""What the PNDM, Euler and LCM scheduler stages share (a base class, so its source is part of
their build key: ``Stage.source_modules``).

A scheduler stage declares its Relax functions as ``formulas``: name -> (formula, number of
leading tensor arguments). A formula is a plain Python function written with ``+ - * /`` only,
so one definition is the Relax build (relax expressions overload the operators), the PyTorch
eager code the bench times (``torch_eager``) and the numpy float32 emulation of the tests. The
operators are applied exactly as written (parenthesized in diffusers' evaluation order); the
tensors get symbolic int64 (n, c, h, w) dims, the scalars are 0-d float32 tensors.
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
        return self.formulas[function][0]

    def build_ir(self, model, variant: dict) -> StageIR:
        return StageIR(build_module(self.formulas), params={})

    @staticmethod
    def case(label: str, function: str, inputs, chain, k: int, output: str, shapes: dict) -> Case:
        """A check of ``function`` on ``inputs`` against record ``output`` of step k of the
        diffusers chain (float32, or its float64 twin for the noise floor)."""
        return Case(label, function, list(inputs), lambda dtype: [chain.records(dtype)[k][output]],
                    (Output(output),), shapes)


def build_module(formulas: dict):
    from tvm import relax

    from sdparity.compile.compat import sym_var, tensor_type

    dims = [sym_var(d) for d in "nchw"]
    bb = relax.BlockBuilder()
    for name, (formula, n_tensors) in formulas.items():
        names = list(inspect.signature(formula).parameters)
        args = [relax.Var(a, tensor_type(dims if i < n_tensors else [], "float32")) for i, a in enumerate(names)]
        with bb.function(name, args):
            with bb.dataflow():
                out = bb.emit_output(formula(*args))
            bb.emit_func_output(out)
    return bb.get()
