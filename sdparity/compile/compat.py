"""Every TVM API difference sdparity knows about, in one place (0.25 .. 0.27).

Code elsewhere calls these helpers instead of touching renamed APIs directly, so a TVM
version whose API differs fails here with one clear message (SdparityError), not deep inside
a stage.
"""

from __future__ import annotations

from sdparity.errors import SdparityError


def tir():
    """tvm.tirx (0.27+) or tvm.tir (before)."""
    import tvm

    mod = getattr(tvm, "tirx", None) or getattr(tvm, "tir", None)
    if mod is None:
        raise SdparityError(f"TVM {tvm.__version__} has neither tvm.tirx nor tvm.tir")
    return mod


def tensor_type(shape, dtype: str):
    """The Relax annotation of a tensor parameter.

    relax.TensorStructInfo where it exists (0.25 and before). In 0.25 relax.TensorType is
    still the old DynTensorType(ndim, dtype) and rejects a shape ("Expected `int` but got
    `ffi.Array`"); from 0.26 TensorStructInfo is gone and TensorType takes the shape."""
    from tvm import relax

    cls = getattr(relax, "TensorStructInfo", None) or getattr(relax, "TensorType", None)
    if cls is None:
        raise SdparityError("this TVM has neither relax.TensorStructInfo nor relax.TensorType")
    return cls(shape, dtype)


def type_info(expr):
    """The type annotation of a Relax expression: ``.ty`` (0.27+) or ``.struct_info`` (before)."""
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def const_value(const):
    """A Relax constant's value as numpy, or None: ``.value`` on 0.27's GenericConst, ``.data``
    on the Constant of earlier versions."""
    data = const.value if hasattr(const, "value") else getattr(const, "data", None)
    return data.numpy() if hasattr(data, "numpy") else None


def sym_var(name: str):
    """A symbolic int64 dimension."""
    return tir().Var(name, "int64")


def name_frozen_import_frames() -> None:
    """Make TVMScript's parsing during an import cheap again (measured, NOTES.md eighteenth
    session): TVM's ``@T.prim_func`` parser calls ``inspect.stack()``, which looks up the module
    of every frame's file; the import machinery's frames ('<frozen importlib._bootstrap>') are
    no file on disk, so CPython's ``inspect.getmodule`` scans all of ``sys.modules`` for each,
    on every call. Importing ``tvm.s_tir.tensor_intrin.cuda`` (CUDA's tensor-core intrinsics,
    248 TVMScript functions) took 40 s with TVM loaded (1961 modules), 5 s with those two file
    names entered in inspect's own file -> module table, which it fills for files on disk
    itself. A performance fault of TVM's parser with CPython's inspect, not of the numbers:
    nothing is parsed differently."""
    import inspect

    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        inspect.modulesbyfile.setdefault(f"<frozen {name}>", name)


def dlight():
    """tvm.s_tir.dlight (0.27+) or tvm.dlight (before)."""
    name_frozen_import_frames()  # its CUDA rules import TVM's tensor intrinsics
    try:
        from tvm.s_tir import dlight as dl
    except ImportError:
        try:
            from tvm import dlight as dl
        except ImportError as e:
            raise SdparityError(f"this TVM has no dlight scheduling module: {e}") from None
    return dl


def default_gpu_schedule():
    try:
        from tvm.s_tir.transform import DefaultGPUSchedule
    except ImportError:
        try:
            from tvm.tir.transform import DefaultGPUSchedule
        except ImportError as e:
            raise SdparityError(f"this TVM has no DefaultGPUSchedule: {e}") from None
    return DefaultGPUSchedule()


def tensor(array, device):
    """tvm.runtime.tensor (0.27+) or tvm.nd.array (before)."""
    import tvm

    fn = getattr(tvm.runtime, "tensor", None)
    if fn is None:
        fn = tvm.nd.array
    return fn(array, device)


def structural_hash(obj) -> int:
    """tvm_ffi.structural_hash (0.27+) or tvm.ir.structural_hash (before)."""
    try:
        from tvm_ffi import structural_hash as fn
    except ImportError:
        import tvm

        fn = tvm.ir.structural_hash
    return int(fn(obj))
