"""Native TVM backends: LLVM on the CPU, and CUDA / Vulkan where TVM and the machine have them.

All three share one code path: relax.build for a target, export_library to a shared
object, weights stored beside it, run through relax.VirtualMachine. They differ only in the
target, the device, and (for GPUs) that every kernel must be given a thread binding.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from sdparity.errors import SdparityError
from sdparity.ir import StageIR
from sdparity.backends.base import Backend, Runner, register

LIB = "lib.so"
PARAMS = "params.npz"


def save_params(params: dict[str, list[np.ndarray]], path: Path) -> None:
    arrays = {f"{fn}/{i:05d}": np.ascontiguousarray(a) for fn, ps in params.items() for i, a in enumerate(ps)}
    np.savez(path, **arrays)


def load_params(path: Path) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as z:
        for k in sorted(z.files):
            fn, _ = k.rsplit("/", 1)
            out.setdefault(fn, []).append(z[k])
    return out


def to_numpy_list(result) -> list[np.ndarray]:
    """Flatten a VM result (Tensor, or nested tuple/Array of Tensors) into numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out.extend(to_numpy_list(item))
    return out


def tvm_tensor(a: np.ndarray, dev):
    from sdparity.compile.compat import tensor

    a = np.asarray(a)
    if a.ndim == 0:  # np.ascontiguousarray would make it 1-d (docs/numerics.md)
        return tensor(a, dev)
    return tensor(np.ascontiguousarray(a), dev)


@register("llvm", "cuda", "vulkan")
class NativeBackend(Backend):
    kind = "llvm"
    native_vm = True
    float64 = True  # C/LLVM, CUDA and SPIR-V all have double
    float16 = True  # the f16 mode builds for these targets (commands/f16.py)

    def __init__(self, kind: str = "llvm"):
        self.kind = kind
        self.name = kind
        self.device_class = "cpu" if kind == "llvm" else "gpu"

    # -- availability -----------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        import tvm

        info = tvm.support.libinfo()
        flag = {"llvm": "USE_LLVM", "cuda": "USE_CUDA", "vulkan": "USE_VULKAN"}[self.kind]
        val = str(info.get(flag, "OFF"))
        if val.upper() in ("OFF", "0", "FALSE", "NOTFOUND", ""):
            return f"the installed TVM {tvm.__version__} was built with {flag}={val}"
        if self.kind != "llvm" and not self.device().exist:
            return f"TVM has {self.kind} but this machine has no {self.kind} device"
        return None

    def device(self):
        import tvm

        return {"llvm": tvm.cpu, "cuda": tvm.cuda, "vulkan": tvm.vulkan}[self.kind](0)

    def target(self):
        import tvm

        if self.kind == "llvm":
            from sdparity.compile.schedule_cpu import host_target  # this CPU's mcpu and core count (issue 6)

            return host_target()
        return tvm.target.Target({"kind": self.kind}, host={"kind": "llvm"})

    def target_key(self) -> dict:
        key = {"target": str(self.target())}
        if self.kind == "llvm":  # the schedules' settings (some come from the environment)
            from sdparity.compile import schedule_cpu

            key["cpu_schedule"] = {k: v for k, v in vars(schedule_cpu).items()
                                   if k.lstrip("_").isupper() and isinstance(v, (int, float, str))}
        return key

    # -- build ------------------------------------------------------------------------
    def build(self, ir: StageIR, out_dir: Path, log=print) -> dict:
        from sdparity.compile.schedule import build_module, schedule_for

        mod = schedule_for(ir.mod, self.target(), float64=self.float64, max_buffer=self.max_buffer)
        target = self.target()
        if self.kind == "llvm":  # mcpu only where it pays (issue 6: sdparity.compile.schedule_cpu)
            from sdparity.compile.schedule_cpu import build_target

            target = build_target(mod, target)
        try:
            ex = build_module(mod, target)
        except Exception as e:
            raise SdparityError(f"relax.build for {self.kind} failed: {str(e).strip().splitlines()[-1]}") from e
        ex.export_library(str(out_dir / LIB))
        save_params(ir.params, out_dir / PARAMS)
        (out_dir / "functions.json").write_text(json.dumps(sorted(ir.params.keys())))
        from sdparity.compile.own_kernels import found

        return {"compiled_for": str(target), "own_kernels": found(mod, self.kind)}

    # -- run --------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        if self.kind == "llvm":
            from sdparity.compile.schedule_cpu import configure_threads

            configure_threads()
        yield NativeRunner(self)

    def describe(self) -> dict:
        import platform

        d = {"name": self.name, "device_class": self.device_class, "target": str(self.target())}
        if self.kind == "llvm":
            d["cpu"] = platform.processor() or platform.machine()
        else:
            dev = self.device()
            if dev.exist:
                d["device_name"] = str(dev.device_name)
        return d


class NativeRunner(Runner):
    def __init__(self, backend: NativeBackend):
        self.backend = backend
        self.dev = backend.device()
        self._loaded: dict[Path, tuple] = {}

    def _load(self, artifact: Path):
        if artifact not in self._loaded:
            import tvm
            from tvm import relax

            lib = tvm.runtime.load_module(str(artifact / LIB))
            vm = relax.VirtualMachine(lib, self.dev)
            params = {fn: [tvm_tensor(p, self.dev) for p in ps]
                      for fn, ps in load_params(artifact / PARAMS).items()}
            self._loaded = {artifact: (vm, params)}  # keep one loaded module: weights are large
        return self._loaded[artifact]

    def run(self, artifact: Path, function: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        vm, params = self._load(artifact)
        args = [tvm_tensor(a, self.dev) for a in inputs] + params.get(function, [])
        result = vm[function](*args)
        self.dev.sync()
        return to_numpy_list(result)
