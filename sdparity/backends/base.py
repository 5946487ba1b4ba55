"""What every backend provides. A backend knows TVM targets and runtimes, never stages."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from sdparity.cache import BuildCache
from sdparity.ir import StageIR


_REGISTRY: dict[str, type] = {}


def register(*names: str):
    """Class decorator: make ``get_backend(name)`` return ``cls(name)`` for each name."""

    def deco(cls):
        for n in names:
            if n in _REGISTRY:
                raise ValueError(f"backend {n!r} registered twice")
            _REGISTRY[n] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    """Forget a backend registered under ``name`` (a backend a test defines: tests/unit/test_extending.py)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, type]:
    return dict(_REGISTRY)


class Backend:
    """A way to build and run stages. Besides its name (the key of tolerances and reports),
    a backend declares what its target has: the build code and the tiers read these
    capabilities, never the backend's or the target's name (docs/extending.md)."""

    name: str = ""
    # -- capabilities ---------------------------------------------------------------------
    #: kernels may compute in float64: GroupNorm statistics in float64 where True, shifted
    #: two-pass float32 where False (``compile/legalize.py``; the build passes it through
    #: ``compile/schedule.schedule_for``). False unless declared: the float32 variant is right on
    #: every target (WGSL has no f64, nor Metal), float64 only on those that have it.
    float64: bool = False
    #: float16 builds run here (the f16 mode, ``commands/f16.py``)
    float16: bool = False
    #: artifacts load into a relax.VirtualMachine in this process (kernel replay, check/localize.py)
    native_vm: bool = False
    #: the largest buffer one kernel may bind, in bytes (None: no limit the build must respect).
    #: A Winograd convolution whose buffers exceed it keeps the direct convolution
    #: (``compile/winograd.legalizer``); part of the build's key.
    max_buffer: int | None = None
    #: kept apart in reports: "cpu" results and "gpu" results are never mixed
    device_class: str = "cpu"

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def unavailable_reason(self) -> str | None:
        """None when this backend can build and run here, else why not (shown as a skip)."""
        return None

    def target_key(self) -> dict:
        """Everything about the target that changes a build (merged into the cache key)."""
        raise NotImplementedError

    def build(self, ir: StageIR, out_dir: Path, log=print) -> dict:
        """Compile ir into out_dir (an empty temp folder). Return extra metadata for the cache."""
        raise NotImplementedError

    def build_cached(self, ir_factory, key: dict, cache: BuildCache, log=print, label: str = ""):
        """Build through the cache. ir_factory() is only called on a miss (imports are slow)."""
        full_key = {**key, "backend": self.name, "target": self.target_key(),
                    "float64": self.float64,  # it shapes the build (compile/legalize.py)
                    **({"max_buffer": self.max_buffer} if self.max_buffer is not None else {}),
                    "env": self.env_key()}
        return cache.get_or_build(full_key, lambda tmp: self.build(ir_factory(), tmp, log=log),
                                  log=log, label=label)

    def env_key(self) -> dict:
        """The TVM installation by content, the packages that shape the exported graph (torch,
        diffusers, transformers: ``graph_packages``) and the sources of the build code
        (sdparity.identity): a different TVM build, another torch/diffusers/transformers install
        or an edited legalization/schedule/backend never reuses a build."""
        from sdparity.identity import source_digest, tvm_identity

        tvm = tvm_identity()
        return {"tvm": tvm["version"], "tvm_libs": tvm["libs_sha256"], "packages": graph_packages(),
                "sources": source_digest(self.source_modules())}

    def source_modules(self) -> list[str]:
        """Modules whose code shapes this backend's builds: the compile package, the IR hand-over
        and the module of its class and of each Backend class it derives from (all of a backend
        package, e.g. webgpu/; only the module of one defined elsewhere, e.g. in a test, whose
        neighbours have nothing to do with its builds)."""
        out = ["sdparity.compile", "sdparity.ir"]
        for cls in type(self).__mro__:
            if cls is Backend or not issubclass(cls, Backend):
                continue
            module = cls.__module__
            package = module.rpartition(".")[0]
            name = package if package.startswith("sdparity.backends.") else module
            if name not in out:
                out.append(name)
        return out

    @contextlib.contextmanager
    def session(self):
        """Yield a runner: runner.run(artifact_dir, function, inputs) -> list[np.ndarray]."""
        raise NotImplementedError
        yield

    def describe(self) -> dict:
        """Facts recorded in the report (device, adapter, ...)."""
        return {"name": self.name, "device_class": self.device_class}

    def describe_session(self, runner) -> dict:
        """Facts known once a session runs (e.g. the WebGPU adapter); default: describe()."""
        return self.describe()


#: installed distributions whose code decides the graph a stage exports (torch.export, the
#: diffusers/transformers modules): part of every build's key, with their RECORD's digest
GRAPH_PACKAGES = ("torch", "diffusers", "transformers")


def graph_packages() -> dict:
    """{name: {"version", "record_sha256"}} for GRAPH_PACKAGES (identity.package_digest,
    remembered per process)."""
    from sdparity.identity import package_digest

    return {name: package_digest(name) for name in GRAPH_PACKAGES}


class Runner:
    def run(self, artifact: Path, function: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError
