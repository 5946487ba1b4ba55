"""A stage prepared here and run on the lent GPU machine: what both device tiers share
(``sdparity.gpu.cuda``: the native CUDA build; ``sdparity.gpu.web`` in stage mode: the WebGPU
build in Node on Dawn). Here: the built-in model made with only the stage's component (the
device recreates the same weights from the seed), the names of the build's weight parameters
in call order with a fingerprint of their bytes, the cases' inputs written to ``cases.npz``.
There: the cases read back with PyTorch on the card as their references, and timing."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np


# ============================================================================ prepare (here)

def weight_names(stage, model, variant, params: list[np.ndarray]) -> list[str]:
    """Names of the Relax function's weight parameters, in call order.

    from_exported_program keeps the exported program's parameter order and drops unused
    ones (CLIP's position_ids buffer); walk the signature and keep a name only where its
    tensor equals the next parameter, so a wrong mapping cannot pass silently."""
    import torch

    wrapper = stage.wrapper(model, None).eval()
    args = tuple(torch.from_numpy(np.array(a)) for a in stage.example_inputs(model, variant))
    with torch.no_grad():
        ep = torch.export.export(wrapper, args)
    tensors = dict(ep.state_dict)
    tensors.update(getattr(ep, "constants", {}) or {})
    names, i = [], 0
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT" or i >= len(params):
            continue
        t = tensors.get(spec.target)
        if t is not None and tuple(t.shape) == params[i].shape and np.array_equal(t.detach().numpy(), params[i]):
            names.append(spec.target)
            i += 1
    if i != len(params):
        raise RuntimeError(f"{stage.name}: matched {i} of {len(params)} weight parameters to names")
    return names


def fingerprint(arrays) -> str:
    """sha256 over the weights' bytes in call order: tells whether the device's seeded model
    (its own transformers version) has exactly the weights of the one built against here."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def component_parts(component: str | None) -> tuple[str, ...]:
    """The model parts a stage's component needs (CLIP's: both text encoders, SDXL's second too;
    a weightless stage: none)."""
    return {"": (), None: (), "text_encoder": ("text_encoder", "text_encoder_2")}.get(component, (component,))


def seeded_for(model_name: str, st, log):
    """A built-in model made in memory with the seeded weights of the stage's component only
    (the device recreates the same, ``random_components``); the others shapes on the meta device."""
    from reference.models import seeded_model

    parts = component_parts(st.component)
    if parts:
        log(f"{st.name}: creating the seeded {model_name} {st.component} in memory")
    return seeded_model(model_name, parts)


def stage_inputs(st, model, variant, ir, folder: Path, seeds: int = 1) -> dict:
    """What a prepared stage carries besides its build, as ``meta.json`` fields: the cases
    (``write_cases``; model stages also seeds 1..N-1) and, for a model stage, its component and
    the weights' names in call order with their fingerprint (taken before they are released)."""
    out = {}
    if st.component:
        params = ir.params[st.functions[0]]
        out = {"component": st.component, "weights": weight_names(st, model, variant, params),
               "weights_sha256": fingerprint(params)}
    more = [st.cases(model, variant, seed=sd) for sd in range(1, seeds)] if st.component else []
    out["cases"] = write_cases(st, st.cases(model, variant, seed=0), more, folder)
    out["seeds"] = list(range(seeds if st.component else 1))
    return out


def module_state(module) -> dict:
    """The module's parameters and buffers by name."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def module_weights(module, names: list[str], state: dict | None = None) -> list[np.ndarray]:
    """The recreated module's weights (parameters and buffers) named ``names``, in that order:
    what a build takes, and what ``fingerprint`` compares with prepare's (``state``: its
    ``module_state``, when the caller has it)."""
    state = module_state(module) if state is None else state
    return [state[n].detach().cpu().numpy() for n in names]


def write_cases(st, cases, more, folder: Path) -> list[dict]:
    """cases.npz (inputs; for stages without weights also the float32/float64 references) and
    cases-seed<N>.npz (model stages: inputs of further seeds, for `device --seeds`)."""
    arrays, meta_cases = {}, []
    for ci, c in enumerate(cases):
        for k, a in enumerate(c.inputs):
            arrays[f"{ci}/in/{k}"] = np.asarray(a)
        if not st.component:  # exact CPU definitions: computed here, once
            for dtype in ("float32", "float64"):
                for k, a in enumerate(c.reference(dtype)):
                    arrays[f"{ci}/{dtype}/{k}"] = np.asarray(a)
        meta_cases.append({"label": c.label, "function": c.function, "shapes": c.shapes,
                           "n_inputs": len(c.inputs),
                           "outputs": [{"name": o.name, "integer": o.integer} for o in c.outputs]})
    np.savez(folder / "cases.npz", **arrays)
    for sd, extra in enumerate(more, start=1):
        np.savez(folder / f"cases-seed{sd}.npz",
                 **{f"{ci}/in/{k}": np.asarray(a) for ci, c in enumerate(extra) for k, a in enumerate(c.inputs)})
    return meta_cases


# ============================================================================ device (there)

def timed(fn, sync, repeat: int, host: list | None = None) -> list[float]:
    """Wall seconds of each call, synchronized. ``host`` (a list) also gets the seconds until
    each call returned, before the sync: the host's time to issue the work. A call whose issue
    time is close to its wall time is bound by the host (launch overhead), not by the GPU."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        issued = time.perf_counter()
        sync()
        out.append(time.perf_counter() - t)
        if host is not None:
            host.append(issued - t)
    return out


def torch_device() -> str:
    """Where PyTorch's references run: the card, else (tests without a GPU) the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_run(module, inputs, dtype):
    import torch

    tdt = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}[dtype]
    args = []
    for a in inputs:
        t = torch.from_numpy(np.array(a)).to(torch_device())
        args.append(t.to(tdt) if t.is_floating_point() else t)
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs], args


class PreparedModel:
    """What the one check driver asks of a model, for a prepared stage: its scope (tolerances,
    calibration groups) and no digest (the build was made at prepare, its key is not asked)."""

    digest = None

    def __init__(self, name: str, scope: str):
        self.name, self.scope = name, scope


@contextlib.contextmanager
def on_device(module, dtype: str):
    """``module`` on the card in ``dtype``; given back on the host in float32 with its weights
    exactly as they were. A trip through float16 rounds them, so their float32 values are kept
    and restored (the recreated model serves the next stages and seeds: its weights are
    fingerprinted against prepare's)."""
    import torch

    keep = {k: v.clone() for k, v in module.state_dict().items()} if dtype == "float16" else None
    module.to(getattr(torch, dtype)).to(torch_device())
    try:
        yield module
    finally:
        module.to(torch.float32).cpu()
        if keep is not None:
            module.load_state_dict(keep)


def prepared_cases(folder: Path, meta: dict, module, seed: int) -> list:
    """The stage's cases as prepared (``cases.npz``; seed N: ``cases-seed<N>.npz``), each
    with its references: for a model stage PyTorch on this card (the same wrapper: float32
    with TF32 off, float64 for the floor; f16 mode float16), all cases of a precision computed
    together on first asking; for the others the exact CPU definitions computed at prepare."""
    from sdparity.registry import Case, Output

    z = dict(np.load(folder / "cases.npz"))
    if seed:
        z.update(np.load(folder / f"cases-seed{seed}.npz"))
    cases = meta["cases"]
    inputs = [[z[f"{ci}/in/{k}"] for k in range(c["n_inputs"])] for ci, c in enumerate(cases)]
    memo: dict[str, list] = {}

    def reference(ci: int, dtype: str) -> list:
        if module is None:
            return [z[f"{ci}/{dtype}/{k}"] for k in range(len(cases[ci]["outputs"]))]
        if dtype not in memo:
            with on_device(module, dtype):
                memo[dtype] = [torch_run(module, ins, dtype)[0] for ins in inputs]
        return memo[dtype][ci]

    return [Case(c["label"], c["function"], inputs[ci], (lambda dtype, ci=ci: reference(ci, dtype)),
                 tuple(Output(o["name"], bool(o["integer"])) for o in c["outputs"]), c["shapes"])
            for ci, c in enumerate(cases)]


def graph_times(module, targs, repeat: int):
    """Median seconds of the PyTorch call replayed as one CUDA graph (torch.cuda.CUDAGraph):
    PyTorch's GPU time without its host's per-operator overhead, to tell a host-bound eager
    time from a slow GPU one (f16 mode, docs/performance.md). A string where capture fails."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(2):
                module(*targs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            module(*targs)
        times = timed(graph.replay, torch.cuda.synchronize, repeat)
        del graph
        return round(float(np.median(times)), 6)
    except Exception as e:  # noqa: BLE001 - a measurement, not a check
        from sdparity.errors import one_line

        return f"capture failed: {one_line(e)}"


def torch_times(stage, module, firsts: dict, repeat: int, dtype: str = "float32", graphs: bool = False) -> dict:
    """PyTorch timed on the first case of each function (``firsts``: function -> case), the
    stage's module on the card in ``dtype`` (float32: TF32 off, as the caller set it), or a
    weightless stage's eager formula. ``graphs``: also replayed as one CUDA graph. Returns
    ``times``/``issue`` (seconds per call, per function), ``graph``, ``peak_mib`` and ``kind``."""
    import torch

    out = {"times": {}, "issue": {fn: [] for fn in firsts}, "graph": {}, "peak_mib": None}
    cuda = torch.cuda.is_available()
    where = "cuda" if cuda else "cpu"
    if module is not None:
        with on_device(module, dtype):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for fn, c in firsts.items():
                targs = torch_run(module, c.inputs, dtype)[1]
                with torch.no_grad():
                    out["times"][fn] = timed(lambda: module(*targs), torch_sync, repeat, out["issue"][fn])
                if graphs and cuda:
                    out["graph"][fn] = graph_times(module, targs, repeat)
            if cuda:
                out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["kind"] = f"torch {where}, same wrapper, " + (
            "float32 with TF32 off" if dtype == "float32" else dtype)
    else:
        for fn, c in firsts.items():
            f = stage.torch_eager(fn)
            targs = [torch.from_numpy(np.array(a)).to(torch_device()) for a in c.inputs]
            out["times"][fn] = timed(lambda: f(*targs), torch_sync, repeat, out["issue"][fn])
        out["kind"] = f"torch {where} eager, same formula (references: exact CPU definitions, computed at prepare)"
    return out
