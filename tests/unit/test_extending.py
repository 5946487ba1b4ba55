"""docs/extending.md, executed, for both recipes.

A new stage: one defined outside sdparity/stages/ is checked on every registered backend through
the registry alone (no other file knows it), and its fault fails. It is a real one in miniature:
classifier-free guidance on its own, ``uncond + g * (cond - uncond)`` over a (2B,4,h,w) noise
prediction, written as a torch module and imported through the project's one torch.export ->
Relax path.

A new backend: one defined here and registered under its own name (its own cache key, so its
builds never collide with llvm's) passes every stage on the tiny model, the weight-free ones and
those with weights, and the example stage. It is llvm as a device without float64 would build it
(a Metal-like target on the CPU): it declares ``float64 = False`` (and a target_key of its own),
and its GroupNorms get float32 statistics because the build reads the capability, not a name. The test
discovery (tests/backends.py) finds a backend registered at run time without a test file naming it.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdparity.backends import get_backend
from sdparity.backends.base import register as register_backend
from sdparity.backends.base import unregister as unregister_backend
from sdparity.backends.native import NativeBackend
from sdparity.registry import Case, Output, all_stages, get_stage, register, unregister
from sdparity.stages._torch import TorchStage, run, torch_module
from sdparity.tolerances import TABLE, Tolerance
from tests import backends

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


@pytest.mark.parametrize("backend", backends.params())
def test_stage_defined_outside_the_package_runs_on_every_backend(example_stage, backend, run_check):
    results = run_check(example_stage, backends.get(backend))
    assert {r["verdict"] for r in results} == {"pass"}, [r["message"] for r in results]
    assert {r["case"] for r in results} == {"g1.0", "g7.5"}
    assert all(r["metrics"]["shape"] == [1, 4, 8, 8] for r in results)


def test_its_fault_is_caught_on_llvm(example_stage, llvm, run_check):
    results = run_check(example_stage.with_fault("halves_swapped"), llvm)
    by_case = {r["case"]: r["verdict"] for r in results}
    # swapped, guidance g gives cond + g*(uncond - cond): at g=1 that is uncond, not cond
    assert by_case == {"g1.0": "fail", "g7.5": "fail"}, [r["message"] for r in results]


# ---- a new backend ------------------------------------------------------------------------
BACKEND = "example_llvm_no_float64"


class NoFloat64LLVM(NativeBackend):
    """The llvm backend with one capability changed: no float64 (docs/extending.md)."""

    float64 = False

    def __init__(self, name: str = BACKEND):
        super().__init__("llvm")  # target, CPU schedules, runner: llvm's
        self.name = name

    def target_key(self) -> dict:
        return {**super().target_key(), "example": "llvm without float64"}


@pytest.fixture(scope="module")
def example_backend():
    register_backend(BACKEND)(NoFloat64LLVM)
    try:
        yield get_backend(BACKEND)
    finally:
        unregister_backend(BACKEND)


MODEL_STAGES = [n for n, st in all_stages().items() if st.uses_model]
WEIGHT_FREE = [n for n, st in all_stages().items() if not st.uses_model]


@pytest.mark.parametrize("stage", WEIGHT_FREE + MODEL_STAGES + [NAME])
def test_backend_defined_outside_the_package_passes_every_stage(stage, example_backend, example_stage,
                                                                 tiny, cache, run_check):
    st = example_stage if stage == NAME else get_stage(stage)
    results = run_check(st, example_backend)
    assert results and {r["verdict"] for r in results} == {"pass"}, \
        [(r["case"], r["output"], r["message"]) for r in results if r["verdict"] != "pass"]
    assert {r["backend"] for r in results} == {BACKEND}
    assert {r["output"] for r in results if not r.get("own_kernel")} == {o.name for o in st.outputs}
    # its builds are its own (the cache key holds its name, target_key and float64), and where
    # the stage has GroupNorms they compute their statistics in float32
    art, _, cached = example_backend.build_cached(lambda: pytest.fail("not built by the check"),
                                                  st.build_key(tiny, st.default_variant(tiny)), cache,
                                                  log=lambda *a: None)
    assert cached
    lib = (art / "lib.so").read_bytes()
    assert b"group_norm_float64" not in lib
    if stage in ("unet", "vae"):
        assert b"group_norm_float32" in lib


def test_its_build_key_holds_its_own_code(example_backend, llvm):
    """Its key holds the llvm backend's module it inherits the build from and its own module,
    not every test file beside it; and its name, target_key and float64 set it apart from llvm's."""
    assert example_backend.source_modules() == ["sdparity.compile", "sdparity.ir", __name__,
                                                "sdparity.backends.native"]
    assert example_backend.target_key() != llvm.target_key() and example_backend.float64 != llvm.float64


def test_a_registered_backend_is_discovered(example_backend):
    """tests/backends.py lists every registered backend: one runnable here is a plain parameter,
    one unavailable here a skip with its own reason (no test file names either)."""

    class Absent(NoFloat64LLVM):
        def unavailable_reason(self):
            return "no such device on this machine"

    register_backend("example_absent")(Absent)
    try:
        found = {p.values[0]: p for p in backends.params()}
    finally:
        unregister_backend("example_absent")
    assert not found[BACKEND].marks
    (mark,) = found["example_absent"].marks
    assert mark.name == "skip" and "no such device on this machine" in mark.kwargs["reason"]
    # selected by capability rather than by name
    no_f64 = {p.values[0] for p in backends.params(where=lambda b: not b.float64)}
    assert BACKEND in no_f64 and "llvm" not in no_f64


def test_an_unavailable_backend_gives_skips_with_its_reason(example_stage, run_check):
    """A check on a backend that cannot run here records skips carrying its reason, never a pass."""

    class Absent(NoFloat64LLVM):
        def unavailable_reason(self):
            return "no such device on this machine"

    results = run_check(example_stage, Absent("example_absent"))
    assert results and all(r["verdict"] == "skip" and r["message"] == "no such device on this machine"
                           for r in results)


def test_a_tier_gives_the_driver_its_own_cases(llvm, cache, tiny):
    """``Mode.cases``: what a tier that runs prepared builds elsewhere hands the one driver (the
    CUDA device half: carried inputs, references computed there; sdparity.gpu.cuda). The records
    are those cases' and their references' alone: a case whose reference is off by one float32
    ulp of the output's scale fails, its sibling passes, and a case the stage does not have runs."""
    import dataclasses

    from sdparity.reports.report import Report
    from sdparity.runner import DEFAULT, run_checks

    st = get_stage("concat_embeddings")
    own = st.cases(tiny, st.default_variant(tiny), 0)[:2]

    def off(case):
        def reference(dtype):
            return [r + np.spacing(np.abs(r).max()).astype(r.dtype) for r in case.reference(dtype)]
        return dataclasses.replace(case, label=case.label + "_off", reference=reference)

    mode = dataclasses.replace(DEFAULT, cases=lambda *_: [own[0], off(own[1])], prove_known=False)
    report = run_checks([st], [llvm], tiny, Report(tiny), cache, mode=mode)
    got = {r["case"]: r["verdict"] for r in report.results}
    assert got == {own[0].label: "pass", own[1].label + "_off": "fail"}, got
