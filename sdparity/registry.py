"""The one registry of stages.

A stage is one piece of the Web Stable Diffusion pipeline. It says
  * how to build its Relax IRModule (``build_ir``), for a *variant* (fixed shapes, options),
  * which checks to run (``cases``): inputs, the Relax function to call, and the PyTorch
    reference at float32 and float64 (for the noise floor),
  * its outputs, whose tolerances live in ``sdparity.tolerances``.

Backends never know stages; stages never know backends. Adding a stage = one module in
``sdparity/stages/`` that subclasses ``Stage`` and decorates it with ``@register``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sdparity.ir import StageIR, digest  # noqa: F401  (re-exported for stage modules)

_STAGES: dict[str, "Stage"] = {}


@dataclass(frozen=True)
class Output:
    name: str
    integer: bool = False  # compared as integers (mismatch budget) rather than allclose
    image: bool = False  # an image (NHWC 0..255 floats or packed RGBA u32): reports keep PNGs of it


@dataclass
class Case:
    """One check: call ``function`` on ``inputs``; compare with ``reference(dtype)``."""

    label: str
    function: str
    inputs: list[np.ndarray]
    reference: Callable[[str], list[np.ndarray]]  # "float32" | "float64" -> outputs
    outputs: tuple[Output, ...]
    shapes: dict = field(default_factory=dict)  # what to show in the report


class Stage:
    name: str = ""
    description: str = ""
    uses_model: bool = True  # False: the build does not depend on model weights
    outputs: tuple[Output, ...] = ()
    functions: tuple[str, ...] = ()  # Relax functions the built module exports
    faults: dict[str, str] = {}  # fault name -> what it breaks (for negative tests)
    accepts_nonfinite: bool = False  # NaN/Inf inputs are part of the stage's defined domain
    #: the pipeline component (text_encoder, unet, vae) whose weights the stage carries; "" for
    #: weight-free stages. Tiers that recreate or move weights (the GPU tiers) ask this.
    component: str = ""
    #: what ``Case.reference`` runs, for timing reports (bench)
    reference_kind: str = "torch (stage reference)"
    #: time ``torch_eager`` instead of the case reference (when the reference replays a cache)
    time_eager: bool = False

    def __init__(self, fault: str | None = None):
        if fault is not None and fault not in self.faults:
            raise ValueError(f"stage {self.name} has no fault {fault!r}; it has {sorted(self.faults)}")
        self.fault = fault

    def with_fault(self, fault: str) -> "Stage":
        """A copy of this stage whose *built* module is deliberately wrong; the reference is not."""
        s = copy.copy(self)
        Stage.__init__(s, fault)
        return s

    # -- to implement ---------------------------------------------------------------
    def default_variant(self, model) -> dict:
        return {}

    def build_ir(self, model, variant: dict) -> StageIR:
        raise NotImplementedError

    def cases(self, model, variant: dict, seed: int) -> list[Case]:
        raise NotImplementedError

    def torch_eager(self, function: str):
        """PyTorch eager code computing ``function`` of a weight-free stage (torch tensors in,
        tensor out), for timing on any device (bench, the CUDA tier); None if there is none."""
        return None

    # -- shared ----------------------------------------------------------------------
    def source_modules(self) -> list[str]:
        """The modules that define this stage's build_ir: its class and its base classes below
        ``Stage`` (e.g. stages/_torch.py), wherever they are defined (a stage may live outside
        sdparity/stages/, docs/extending.md). Their source is part of the cache key."""
        return [c.__module__ for c in type(self).__mro__ if c not in (Stage, object)]

    def build_key(self, model, variant: dict) -> dict:
        """Everything that changes the built module (the backend adds target, TVM and its own
        sources: Backend.env_key)."""
        from sdparity.identity import source_digest

        return {
            "stage": self.name,
            "sources": source_digest(self.source_modules()),
            "fault": self.fault,
            "model": model.digest if (self.uses_model and model is not None) else None,
            "variant": variant,
        }


def register(cls):
    inst = cls()
    if not inst.name or inst.name in _STAGES:
        raise ValueError(f"stage name {inst.name!r} is empty or registered twice")
    _STAGES[inst.name] = inst
    return cls


def unregister(name: str) -> None:
    """Remove a stage (for stages defined outside sdparity/stages/, e.g. in a test)."""
    _STAGES.pop(name, None)


def all_stages() -> dict[str, Stage]:
    from sdparity import stages  # noqa: F401  (importing the package registers every stage)

    return dict(_STAGES)


def get_stage(name: str) -> Stage:
    stages = all_stages()
    if name not in stages:
        from sdparity.errors import SdparityError

        raise SdparityError(f"unknown stage {name!r}; stages are: {', '.join(stages)}")
    return stages[name]
