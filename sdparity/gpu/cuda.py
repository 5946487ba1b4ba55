"""The native CUDA tier on a lent GPU machine that has PyTorch but no TVM and no diffusers.

Two halves, one module (it travels with the repository):

``prepare`` (here, where TVM is installed; no GPU needed)
    builds every stage for CUDA with an explicit arch (sm_90: H100 and H200), through the
    same ``NativeBackend.build`` (schedules from ``sdparity.compile.schedule``), and writes into DIR:
      tvm.tgz                  the TVM Python package for runtime-only use (no 250 MB compiler
                               library, no sources): libtvm_runtime + libtvm_runtime_cuda, ~4 MB
      <stage>/lib.so           the built module (host code + CUDA fatbin)
      <stage>/meta.json        function names, cases (labels, outputs, shapes), and for model
                               stages the name of every weight parameter, in call order
      <stage>/cases.npz        case inputs; for stages without weights also the float32 and
                               float64 references (numpy / diffusers on the CPU, exact definitions)
    Weights are not carried (UNet alone is 3.4 GB): the device recreates the seeded random
    model with the carried diffusers wheel and looks the weights up by name. A built-in model is
    made here in memory, never saved (``reference.models.seeded_model``), each stage with only
    its own component's weights, released before its build: sdxl-random's UNet (10.3 GB) fits a
    24 GB machine that could not hold the whole model twice, as saving and loading it back would.

``device`` (there, with DIR and the wheels carried)
    imports TVM runtime-only, creates the model, and per stage: times the TVM module on CUDA
    and the same wrapper in PyTorch on CUDA (median of N, inputs and weights already on the
    GPU, synchronized), samples device memory, then checks every case through the one check
    driver (``sdparity.runner.run_checks``; the prepared library as the build, PyTorch on the
    card as the references: float32 with TF32 off, float64 for the noise floor) against the
    declared tolerances. Writes an "sdparity.report/1" report (backend "cuda", device_class "gpu",
    the card's name in backends.cuda.device_name) with the timings under performance.gpu.

Usage (docs/performance.md has the exact commands):
    python -m sdparity.gpu.cuda prepare --model sd15-random --dir out/gpu [--stages ...]
    python -m sdparity.gpu.cuda device --dir out/gpu --out $OUT [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from sdparity.gpu.prepared import (PreparedModel, component_parts, fingerprint, module_weights, prepared_cases,
                                   seeded_for, stage_inputs, timed, torch_times)
from sdparity.gpu.toolchain import ARCH, KERNEL_DIRS, cuda_backend, load_tvm_runtime, slim_tvm_package
from sdparity.ir import StageIR


# ============================================================================ prepare (here)

def prepare(model_name: str, dest: Path, stage_names: list[str] | None, log=print, precision: str = "f32",
            cuda_graphs: bool = False, seeds: int = 1) -> None:
    """``cuda_graphs``: build the f16 mode's model stages with CUDA graphs (float32 builds with
    graphs crash on the H200: docs/performance.md, "CUDA graphs")."""
    from reference.models import BUILTIN_MODELS, load_model

    from sdparity.errors import SdparityError
    from sdparity.registry import all_stages

    # refused before anything is loaded or written
    if cuda_graphs and precision != "f16":
        raise SdparityError("--cuda-graphs is for --precision f16 (the float32 UNet built with CUDA graphs "
                            "stops with cudaErrorIllegalAddress on the H200: docs/performance.md)")
    stages = all_stages()
    unknown = [n for n in stage_names or [] if n not in stages]
    if unknown:
        raise SdparityError(f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join(stages)}")
    if model_name not in BUILTIN_MODELS and any(stages[n].component for n in stage_names or stages):
        raise SdparityError(f"model {model_name}: the device recreates weights with the seeded factory "
                            f"(they do not travel); use one of {', '.join(BUILTIN_MODELS)}")
    dest.mkdir(parents=True, exist_ok=True)
    log(f"slim TVM package -> {slim_tvm_package(dest)}")
    from sdparity.reports.report import versions  # the TVM that builds the kernels: the device report's

    (dest / "versions.json").write_text(json.dumps(versions(), indent=1, default=str))
    folder_model = None if model_name in BUILTIN_MODELS else load_model(model_name, log=log)
    backend = cuda_backend()
    lifting = cuda_backend(lift=True, graphs=cuda_graphs or None)  # f16 mode's model stages
    for name in stage_names or list(stages):
        st = stages[name]
        t0 = time.perf_counter()
        model = folder_model or seeded_for(model_name, st, log)
        variant = st.default_variant(model)
        folder = dest / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        t1 = time.perf_counter()
        ir = st.build_ir(model, variant)
        import_s = time.perf_counter() - t1
        carried, scope = stage_inputs(st, model, variant, ir, folder, seeds), model.scope
        ir = StageIR(ir.mod, {})  # a build needs no weights (they are its parameters)
        if folder_model is None:
            del model
            gc.collect()
        lifted = precision == "f16" and st.component
        t2 = time.perf_counter()
        if lifted:
            from sdparity.commands.f16 import to_f16

            # weights travel as float32 (same names and order); <function>_transform_params
            # casts and transforms them once on the device (call_weights)
            lifting.build(to_f16(ir), folder, log=log)
        else:
            backend.build(ir, folder, log=log)
        build_s = import_s + time.perf_counter() - t2
        meta = {"stage": name, "functions": list(st.functions), "variant": variant, "arch": ARCH,
                "precision": precision if st.component else "f32", "lifted": bool(lifted),
                "cuda_graphs_built": bool(lifted and cuda_graphs),
                "model": model_name, "scope": scope, "build_s": round(build_s, 1),
                "prepare_s": round(time.perf_counter() - t0, 1), **carried}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        log(f"{name}: built for cuda/{ARCH} in {build_s:.1f}s, {size:.1f} MiB")


# ============================================================================ device (there)

def _timed_call(fn, args: list, sync, repeat: int, host: list | None = None) -> list[float]:
    return timed(lambda: fn(*args), sync, repeat, host)


#: denoising steps of the generation estimate (the web app's default)
STEPS = 20


def generation(perf: list[dict]) -> dict | None:
    """One 512x512 generation from the timed medians, the same sum on both sides: every
    function of the pipeline (``stages/pipeline.json``) times how often a generation calls it
    (``per_image``: once, or once per step of STEPS). None while a stage with weights is
    untimed; weightless stages not timed (the f16 mode builds only the model stages; they take
    microseconds) are listed under ``left_out``. With ``ref_graph_s`` on every term (f16 mode),
    also against PyTorch replaying each call as one CUDA graph."""
    from sdparity.registry import get_stage
    from sdparity.stages import PIPELINE

    rows = {(r["stage"], r["function"]): r for r in perf}
    terms, left_out = [], []
    for entry in PIPELINE:
        times = STEPS if entry.get("per_image") == "steps" else 1
        for fn in entry["functions"]:
            r = rows.get((entry["stage"], fn))
            if r is None:
                if get_stage(entry["stage"]).component:
                    return None
                left_out.append(fn)
            else:
                terms.append((times, r))

    def total(key):
        vals = [r.get(key) for _, r in terms]
        ok = all(isinstance(v, float) for v in vals)
        return sum(t * v for (t, _), v in zip(terms, vals)) if ok else None

    tvm, ref, graph = total("run_s"), total("ref_s"), total("ref_graph_s")
    out = {"steps": STEPS, "functions": {r["function"]: t for t, r in terms}, "left_out": left_out,
           "tvm_s": round(tvm, 4), "torch_s": round(ref, 4), "ratio": round(tvm / ref, 3)}
    if graph:
        out.update(torch_graph_s=round(graph, 4), ratio_graph=round(tvm / graph, 3))
    return out


def device(folder: Path, out: Path, repeat: int, stage_names: list[str] | None, log=print,
           profile: bool = False, graphs: bool = True, seeds: tuple[int, ...] = (0,)) -> int:
    """Run, compare and time every prepared stage on this GPU. ``seeds``: the inputs prepared
    for each seed (``prepare --seeds``; seeds other than 0 hold the model stages only); seed 0
    writes ``gpu-report.json``, seed N ``calibrate-seed<N>.json`` (read by ``sdparity calibrate
    --from-reports``). The seeded model is made once for all of them."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # a float32 reference, not TF32
    torch.backends.cudnn.allow_tf32 = False
    KERNEL_DIRS.extend(p for p in folder.iterdir() if p.is_dir())
    tvm = load_tvm_runtime()
    dev = tvm.cuda(0)
    card = torch.cuda.get_device_name(0)
    out.mkdir(parents=True, exist_ok=True)
    parts: dict = {}
    ok = True
    for seed in seeds:
        ok &= _device_seed(tvm, dev, card, folder, out, repeat, stage_names, log, profile, graphs, seed, parts)
    return 0 if ok else 1


def _device_seed(tvm, dev, card, folder, out, repeat, stage_names, log, profile, graphs, seed, parts) -> bool:
    import torch

    from sdparity.files import write_atomic
    from sdparity.reports.report import Report

    report = Report(None)
    report.data["seed"] = seed
    # The device has no apache-tvm distribution (only the carried runtime): the version that
    # built every kernel comes from prepare, at the top like a CPU report's.
    built = json.loads((folder / "versions.json").read_text()) if (folder / "versions.json").is_file() else {}
    report.data["versions"].update({k: v for k, v in built.items() if report.data["versions"].get(k) is None})
    report.data["versions_prepare"] = built
    report.data["backends"]["cuda"] = {"name": "cuda", "device_class": "gpu", "arch": ARCH,
                                       "device_name": str(dev.device_name), "torch_device": card,
                                       "torch": torch.__version__, "tvm_runtime": tvm.__version__,
                                       "cuda_graphs": graphs}
    perf: list[dict] = []
    report.data["performance"] = {"gpu": {"card": card, "repeat": repeat, "results": perf}}
    names = [n for n in (stage_names or json.loads((folder / "order.json").read_text()))
             if (folder / n / "meta.json").is_file()]
    if seed:
        names = [n for n in names if seed in json.loads((folder / n / "meta.json").read_text()).get("seeds", [0])]
    name_out = f"calibrate-seed{seed}.json" if seed else "gpu-report.json"
    gen = None
    for name in names:
        meta = json.loads((folder / name / "meta.json").read_text())
        report.data["model"] = {**(report.data.get("model") or {}), "name": meta["model"], "digest": None,
                                "path": None}  # keeps create_s
        report.data["model_scope"] = meta["scope"]  # records carry it: tolerances and calibration groups
        try:
            need = set(component_parts(meta.get("component")))
            if need - set(parts):  # only the components of the stages run (sdxl-random's: 13.9 GB)
                from reference.models import random_components

                log(f"creating the {meta['model']} {', '.join(sorted(need - set(parts)))} (seeded) ...")
                t0 = time.perf_counter()
                parts.update(random_components(meta["model"], parts=need - set(parts)))
                made = report.data["model"].get("create_s", 0.0) + time.perf_counter() - t0
                report.data["model"]["create_s"] = round(made, 1)
            _device_stage(tvm, dev, folder / name, meta, parts, repeat, report, perf, card, log,
                          profile=profile and bool(meta.get("component")), graphs=graphs, seed=seed)
        except Exception as e:  # record and go on: a later stage may still work
            import traceback

            traceback.print_exc()
            lines = str(e).strip().splitlines()  # TVM's launch errors end with the kernel's source
            msg = next((ln for ln in lines if "Error" in ln), lines[-1] if lines else "")[:300]
            report.add(stage=name, backend="cuda", device_class="gpu", case=None, function=None,
                       output=None, shapes=None, verdict="error", message=f"{type(e).__name__}: {msg}",
                       metrics=None, tolerance=None, timings=None)
        torch.cuda.empty_cache()
        gen = generation(perf)
        if gen:
            report.data["performance"]["gpu"]["generation"] = gen
        write_atomic(out / name_out, report.to_json())  # after every stage
    if gen:
        log(f"[cuda] generation ({STEPS} steps): tvm {gen['tvm_s']:.3f} s, torch {gen['torch_s']:.3f} s "
            f"({gen['ratio']:.2f}x); torch with CUDA graphs {gen.get('torch_graph_s')} s ({gen.get('ratio_graph')}x)")
    log(f"cuda on {card} (seed {seed}): {report.summary()} -> {out / name_out}")
    return report.ok


def load_vm(tvm, lib_path: Path, dev, graphs: bool = True):
    """The library's VM. ``graphs=False`` runs every CUDA-graph region kernel by kernel, for
    the per-kernel profile (a replayed graph reaches the instrument hook as one call): the
    graph builtin is swapped for one that invokes the region directly while the VM resolves
    its builtins (at creation), then restored."""
    import tvm_ffi
    from tvm.runtime.vm import VirtualMachine

    lib = tvm.runtime.load_module(str(lib_path))
    if graphs:
        return VirtualMachine(lib, dev)
    name = "vm.builtin.cuda_graph.run_or_capture"
    original = tvm_ffi.get_global_func(name, allow_missing=True)
    made = {}

    def direct(_ctx, region, args, *_):
        return made["vm"].invoke_closure(region, *args)

    tvm_ffi.register_global_func(name, direct, override=True)
    try:
        made["vm"] = VirtualMachine(lib, dev)
    finally:
        if original is not None:
            tvm_ffi.register_global_func(name, original, override=True)
    made["direct"] = direct  # the VM holds the function; keep the Python side alive with it
    return made["vm"]


def call_weights(vm, fn: str, meta: dict, weights: list) -> list:
    """The weights ``fn`` takes: as loaded, or for a build with lifted weights (f16 mode,
    ``meta["lifted"]``: schedule.fused_for_gpu) the outputs of ``<fn>_transform_params``, which
    casts and transforms them once."""
    if not meta.get("lifted") or not weights:
        return weights
    return list(vm[f"{fn}_transform_params"](weights))


def _kernel_profile(vm, dev, fn, args, weights, top: int = 12) -> list[dict]:
    """Time of every kernel call in one run (the device synchronized around each call)."""
    total: dict[str, list] = {}
    start: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *a):
        dev.sync()
        if before:
            start[symbol] = time.perf_counter()
        else:
            rec = total.setdefault(symbol, [0, 0.0])
            rec[0] += 1
            rec[1] += time.perf_counter() - start[symbol]
        return 0

    vm.set_instrument(instrument)
    vm[fn](*args, *weights)
    dev.sync()
    vm.set_instrument(lambda *a: 0)
    whole = sum(t for _, t in total.values()) or 1.0
    rows = sorted(total.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"kernel": k, "calls": n, "s": round(t, 5), "share": round(t / whole, 3)} for k, (n, t) in rows]


class PreparedCuda:
    """The CUDA device half as a backend of the one check driver (sdparity.runner): its "build"
    is the library ``prepare`` made (there is no compiler here), its runner the relax VM on the
    card with the weights looked up by name in the recreated model (``module``), loaded on the
    first run and kept until ``release``."""

    name, device_class = "cuda", "gpu"

    def __init__(self, tvm, dev, folder: Path, meta: dict, module, info: dict, graphs: bool = True):
        self.tvm, self.dev, self.folder, self.meta, self.module = tvm, dev, folder, meta, module
        self.info, self.graphs = info, graphs
        self.vm, self.weights = None, {}

    # -- the backend hooks run_checks calls
    def unavailable_reason(self):
        return None

    @contextlib.contextmanager
    def session(self):
        try:
            yield self
        finally:
            self.release()

    def describe_session(self, _runner) -> dict:
        return self.info  # made by the device run (card, arch, runtime); the checks keep it

    def build_cached(self, ir_factory, key, cache, log=print, label=""):
        """The prepared artifact: (library, its meta, cached) without building."""
        return self.folder / "lib.so", self.meta, True

    # -- the runner
    def load(self) -> None:
        if self.vm is not None:
            return
        self.vm = load_vm(self.tvm, self.folder / "lib.so", self.dev, graphs=self.graphs)
        weights = []
        if self.module is not None:
            host = module_weights(self.module, self.meta["weights"])
            self.info.setdefault("weights_same_as_prepare", {})[self.meta["stage"]] = \
                fingerprint(host) == self.meta.get("weights_sha256")
            weights = [self.tvm.runtime.tensor(a, self.dev) for a in host]
            del host
        self.weights = {fn: call_weights(self.vm, fn, self.meta, weights) for fn in self.meta["functions"]}
        self.dev.sync()

    def args(self, inputs) -> list:
        return [self.tvm.runtime.tensor(a if a.ndim == 0 else np.ascontiguousarray(a), self.dev) for a in inputs]

    def run(self, _art, function: str, inputs) -> list[np.ndarray]:
        from sdparity.backends.native import to_numpy_list

        self.load()
        return to_numpy_list(self.vm[function](*self.args(inputs), *self.weights[function]))

    def release(self) -> None:
        self.vm, self.weights = None, {}


def _device_stage(tvm, dev, folder: Path, meta: dict, parts, repeat: int, report, perf, card, log,
                  profile: bool = False, graphs: bool = True, seed: int = 0):
    """One stage: TVM timed first (its device memory measured alone), then PyTorch, then the
    checks through the one check driver (``runner.run_checks``) with this tier's hooks: the
    prepared library as the build and the VM as the runner (``PreparedCuda``), the carried
    inputs with PyTorch on this card as the references (``prepared_cases``), and the mode's
    rule (default, or the f16 mode's when the stage was prepared in f16)."""
    import dataclasses

    import torch

    from sdparity.commands.bench import PeakSampler, device_used_mib
    from sdparity.errors import Progress
    from sdparity.registry import get_stage
    from sdparity.runner import DEFAULT, run_checks

    name = meta["stage"]
    stage = get_stage(name)
    module = stage.wrap(parts[meta["component"]], None).eval() if meta.get("component") else None
    f16 = meta.get("precision") == "f16"
    cases = prepared_cases(folder, meta, module, seed)
    firsts = {}  # function -> its first case
    for c in cases:
        firsts.setdefault(c.function, c)
    backend = PreparedCuda(tvm, dev, folder, meta, module, report.data["backends"]["cuda"], graphs=graphs)

    # ---- TVM on CUDA: load and time, its device memory alone
    torch.cuda.synchronize()
    before = device_used_mib() or 0.0
    with PeakSampler(device=True) as mem:
        t0 = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - t0
        args = {fn: [*backend.args(c.inputs), *backend.weights[fn]] for fn, c in firsts.items()}
        tvm_issue = {fn: [] for fn in firsts}
        tvm_times = {fn: _timed_call(backend.vm[fn], args[fn], dev.sync, repeat, tvm_issue[fn]) for fn in firsts}
    if profile:  # kernel by kernel: a CUDA graph is one call to the instrument hook
        vm = load_vm(tvm, folder / "lib.so", dev, graphs=False)
        report.data["performance"]["gpu"].setdefault("kernels", {})[name] = {
            fn: _kernel_profile(vm, dev, fn, args[fn][:len(c.inputs)], backend.weights[fn])
            for fn, c in firsts.items()}
        del vm
    del args
    backend.release()

    # ---- PyTorch on CUDA, timed: float32 (TF32 off; f16 mode: float16)
    ref = torch_times(stage, module, firsts, repeat, "float16" if f16 else "float32", graphs=f16)
    ref_times, ref_peak, ref_issue, ref_graph, kind = (ref[k] for k in ("times", "peak_mib", "issue", "graph", "kind"))

    # ---- the checks: the one check driver, this tier's hooks
    if f16:  # the f16 rule: against float64, PyTorch float16's own error as the floor
        from sdparity.commands.f16 import mode as f16_mode

        md = f16_mode()
    else:
        md = DEFAULT
    md = dataclasses.replace(md, cases=lambda *_: cases, own_kernels=False, prove_known=False)
    run_checks([stage], [backend], PreparedModel(meta["model"], meta["scope"]), report, cache=None, seed=seed,
               log=Progress(stream=sys.stdout), variants={name: meta["variant"]}, mode=md)
    for fn, c in firsts.items():
        run_s, ref_s = float(np.median(tvm_times[fn])), float(np.median(ref_times[fn]))
        perf.append({"stage": name, "backend": "cuda", "device_class": "gpu", "card": card,
                     "function": fn, "case": c.label, "build_s": meta.get("build_s"),
                     "weights_upload_s": round(load_s, 3), "run_s": round(run_s, 6),
                     "run_s_all": [round(x, 6) for x in tvm_times[fn]], "ref_s": round(ref_s, 6),
                     "ref_s_all": [round(x, 6) for x in ref_times[fn]], "reference_kind": kind,
                     "run_issue_s": round(float(np.median(tvm_issue[fn])), 6),
                     "ref_issue_s": round(float(np.median(ref_issue[fn])), 6),
                     **({"ref_graph_s": ref_graph[fn]} if fn in ref_graph else {}),
                     "precision": "f16" if f16 else "f32",
                     "cuda_graphs": graphs and meta.get("cuda_graphs_built", False),
                     "ref_device": "cuda", "ratio": round(run_s / ref_s, 3) if ref_s > 0 else None,
                     "device_mem_peak_mib": None if mem.dev_peak is None else round(mem.dev_peak, 1),
                     "device_mem_delta_mib": None if mem.dev_peak is None else round(mem.dev_peak - before, 1),
                     "ref_peak_allocated_mib": None if ref_peak is None else round(ref_peak, 1)})
        log(f"[cuda] {name} {fn}: tvm {run_s * 1e3:.2f} ms (host issue {np.median(tvm_issue[fn]) * 1e3:.2f}), "
            f"torch {ref_s * 1e3:.2f} ms (host issue {np.median(ref_issue[fn]) * 1e3:.2f}) on {card}")


# ============================================================================ command line

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdparity.gpu.cuda", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="build every stage for CUDA here; write the folder to carry")
    a.add_argument("--model", default="sd15-random")
    a.add_argument("--dir", type=Path, default=Path("out/gpu"))
    a.add_argument("--stages", default=None)
    a.add_argument("--precision", choices=("f32", "f16"), default="f32",
                   help="f16: the model stages through TVM's mixed-precision pass, judged and timed against "
                   "PyTorch float16 (sdparity.commands.f16)")
    a.add_argument("--cuda-graphs", action="store_true",
                   help="f16: build the model stages to replay their static regions as CUDA graphs")
    a.add_argument("--seeds", type=int, default=1,
                   help="also write the model stages' inputs of seeds 1..N-1 (for `device --seed`)")
    b = sub.add_parser("device", help="on the GPU machine: run, compare, time; write gpu-report.json")
    b.add_argument("--dir", type=Path, default=Path("out/gpu"))
    b.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu-result")))
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--stages", default=None)
    b.add_argument("--profile", action="store_true", help="also time every kernel of the model stages")
    b.add_argument("--no-graphs", action="store_true",
                   help="run the CUDA-graph regions kernel by kernel (no capture, no replay)")
    b.add_argument("--seeds", default="0",
                   help="comma-separated prepared seeds (default 0); seed N > 0 writes calibrate-seed<N>.json "
                   "(model stages only)")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.cmd == "prepare":
        prepare(args.model, args.dir, stages, log, precision=args.precision, cuda_graphs=args.cuda_graphs,
                seeds=args.seeds)
        built = [d.name for d in args.dir.iterdir() if (d / "meta.json").is_file()]
        from sdparity.registry import all_stages

        (args.dir / "order.json").write_text(json.dumps([n for n in all_stages() if n in built]))
        return 0
    return device(args.dir, args.out, args.repeat, stages, log, profile=args.profile, graphs=not args.no_graphs,
                  seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()))


if __name__ == "__main__":
    from sdparity.errors import one_line_main

    sys.exit(one_line_main("python -m sdparity.gpu.cuda", main))
