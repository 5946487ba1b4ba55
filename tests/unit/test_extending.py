"""docs/extending.md, executed: a stage defined outside sdparity/stages/ is checked on every
registered backend through the registry alone (no other file knows it), and its fault fails.

The stage is a real one in miniature: classifier-free guidance on its own,
``uncond + g * (cond - uncond)`` over a (2B,4,h,w) noise prediction, written as a torch
module and imported through the project's one torch.export -> Relax path."""

from __future__ import annotations

import numpy as np
import pytest

from sdparity.registry import Case, Output, get_stage, register, unregister
from sdparity.stages._torch import TorchStage, run, torch_module
from sdparity.tolerances import TABLE, Tolerance

NAME = "example_guidance"


@torch_module
def Guidance(torch):
    """noise (2B,4,h,w) [uncond; cond], guidance () -> uncond + g * (cond - uncond)."""

    class Guidance(torch.nn.Module):
        def __init__(self, fault=None):
            super().__init__()
            self.fault = fault

        def forward(self, noise, guidance):
            uncond, cond = noise.chunk(2)
            if self.fault == "halves_swapped":
                uncond, cond = cond, uncond
            return uncond + guidance * (cond - uncond)

    return Guidance


class ExampleGuidance(TorchStage):
    name = NAME
    description = "classifier-free guidance alone (the docs/extending.md example)"
    function = NAME
    uses_model = False
    outputs = (Output("guided"),)
    functions = (NAME,)
    faults = {"halves_swapped": "cond and uncond swapped"}

    def wrapper(self, model, fault):  # no model component: the module stands alone
        return Guidance(fault)

    def example_inputs(self, model, variant):
        return [np.zeros((2, 4, 8, 8), np.float32), np.array(7.5, np.float32)]

    def cases(self, model, variant, seed):
        rng = np.random.default_rng(seed)
        out = []
        for g in (1.0, 7.5):
            inputs = [rng.standard_normal((2, 4, 8, 8)).astype(np.float32), np.array(g, np.float32)]
            out.append(Case(f"g{g}", NAME, inputs,
                            lambda dtype, i=inputs: run(Guidance(), i, dtype),
                            self.outputs, {"noise": [2, 4, 8, 8]}))
        return out


@pytest.fixture(scope="module")
def example_stage():
    register(ExampleGuidance)
    TABLE[(NAME, "guided", "*", "*")] = Tolerance(
        1e-6, 1e-6, reason="one subtract, one multiply-add per element: a few float32 ulp")
    yield get_stage(NAME)
    unregister(NAME)
    TABLE.pop((NAME, "guided", "*", "*"), None)


def _backends():
    from sdparity.backends import names

    return [pytest.param(n, marks=pytest.mark.webgpu) if n == "webgpu" else n for n in names()]


@pytest.mark.parametrize("backend", _backends())
def test_stage_defined_outside_the_package_runs_on_every_backend(example_stage, backend, run_check):
    from sdparity.backends import get_backend

    b = get_backend(backend)
    results = run_check(example_stage, b)
    assert results, "no result records"
    reason = b.unavailable_reason()
    if reason:  # e.g. cuda/vulkan here: a skip that says why, never a pass
        assert all(r["verdict"] == "skip" and r["message"] == reason for r in results)
        return
    assert {r["verdict"] for r in results} == {"pass"}, [r["message"] for r in results]
    assert {r["case"] for r in results} == {"g1.0", "g7.5"}
    assert all(r["metrics"]["shape"] == [1, 4, 8, 8] for r in results)


def test_its_fault_is_caught_on_llvm(example_stage, llvm, run_check):
    results = run_check(example_stage.with_fault("halves_swapped"), llvm)
    by_case = {r["case"]: r["verdict"] for r in results}
    # swapped, guidance g gives cond + g*(uncond - cond): at g=1 that is uncond, not cond
    assert by_case == {"g1.0": "fail", "g7.5": "fail"}, [r["message"] for r in results]
