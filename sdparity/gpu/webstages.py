"""WebGPU on a real GPU, stage by stage: one stage's WebGPU build checked and timed alone in
Node on Dawn, against PyTorch on the same card (issue 25: SDXL's UNet and VAE at 1024x1024,
whose whole app this machine cannot build: ``sdparity.gpu.web`` builds the app from the model
folder, 13.9 GB of weights held twice).

Like the CUDA tier (``sdparity.gpu.cuda``), and with its shared parts (``sdparity.gpu.prepared``):

``prepare`` (here; no GPU needed) builds each stage for WebGPU as the webgpu backend builds it
(``WebGPUBackend.build``: the same schedules, tuned tiles and binding limit), from the built-in
model made with that stage's component only, and writes DIR:
    <stage>/art/         sdparity.json, model.wasm (xz), params/tensor-cache.json (the layout;
                         the shards, i.e. the weights, are not carried)
    <stage>/meta.json    functions, cases, and the state-dict name of every weight parameter in
                         call order with a fingerprint of their bytes
    <stage>/cases.npz    the cases' inputs (weightless stages: their exact references too)
    job.json             the stages, the model, the versions here (written last: DIR complete)
    node.xz, dawn/, tvmjs/, tokenizers/   as ``sdparity.gpu.web`` carries them

``device`` (there) recreates the stage's component from its seed, writes the shards from it
(fingerprint checked), runs ``web/node/stages.mjs`` (every case once, the first case of each
function ``--repeat`` more times for its time), times PyTorch on the card on the same case,
and judges every case through the one check driver (``sdparity.runner.run_checks``) with this
tier's hooks: ``PreparedDawn`` as the backend (the outputs Node wrote, by case), the carried
inputs with PyTorch on the card as the references. Writes ``gpu-report.json``
(``sdparity.report/1``, backend "webgpu", device class "gpu"; times as bench records under
``performance.gpu``), which ``sdparity html`` and ``sdparity gate`` read.

    python -m sdparity.gpu.webstages prepare --model sdxl-random --stages unet,vae --dir out/webgpu-sdxl
    python -m sdparity.gpu.webstages device --dir out/webgpu-sdxl --out $OUT   (docs/performance.md)

``device`` also runs here (``--swiftshader``: Dawn on Chromium's SwiftShader, PyTorch on the
CPU): that is how it is tested (tests/e2e/test_node_dawn.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sdparity.gpu.prepared import (PreparedModel, component_parts, fingerprint, module_state, module_weights,
                                   prepared_cases, seeded_for, stage_inputs, torch_times)
from sdparity.gpu.toolchain import WEB, node_binary, unpack_dawn, unxz
from sdparity.gpu.web import _xz, carry_js, vulkan_env, write_tensor_cache


# ============================================================================ prepare (here)

def prepare(model_name: str, dest: Path, stage_names: list[str], latent: tuple[int, int] | None = None,
            log=print, carry_node: bool = True, seeds: int = 1) -> None:
    """``seeds``: the model stages' inputs of seeds 1..N-1 too (``cases-seed<N>.npz``), for
    ``device --seeds``."""
    from reference.models import BUILTIN_MODELS

    from sdparity.backends.webgpu.backend import META, PARAMS_DIR, WASM, WebGPUBackend
    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic
    from sdparity.registry import all_stages
    from sdparity.reports.report import versions

    stages = all_stages()
    unknown = [n for n in stage_names if n not in stages]
    if unknown or not stage_names:
        raise SdparityError(f"--stages: name one or more of {', '.join(stages)}"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if model_name not in BUILTIN_MODELS:
        raise SdparityError(f"model {model_name}: the device recreates weights with the seeded factory "
                            f"(they do not travel); use one of {', '.join(BUILTIN_MODELS)}")
    backend = WebGPUBackend()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "job.json").unlink(missing_ok=True)  # written last: marks the folder complete
    scope = None
    for name in stage_names:
        st = stages[name]
        t0 = time.perf_counter()
        model = seeded_for(model_name, st, log)
        scope = model.scope
        variant = st.default_variant(model)
        if latent and "latent" in variant:
            variant = {**variant, "latent": list(latent)}
        folder = dest / name
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "art" / PARAMS_DIR).mkdir(parents=True)
        ir = st.build_ir(model, variant)
        carried = stage_inputs(st, model, variant, ir, folder, seeds)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            t1 = time.perf_counter()
            backend.build(ir, Path(tmp), log=log)  # with the weights: the shards' layout
            build_s = time.perf_counter() - t1
            del ir, model
            gc.collect()
            shutil.copyfile(Path(tmp) / META, folder / "art" / META)
            cache_json = Path(tmp) / PARAMS_DIR / "tensor-cache.json"
            if cache_json.is_file():
                shutil.copyfile(cache_json, folder / "art" / PARAMS_DIR / "tensor-cache.json")
            _xz(Path(tmp) / WASM, folder / "art" / (WASM + ".xz"))
        meta = {"stage": name, "functions": list(st.functions), "variant": variant, "model": model_name,
                "scope": scope, "build_s": round(build_s, 1), "prepare_s": round(time.perf_counter() - t0, 1),
                **carried}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        log(f"{name}: built for webgpu in {build_s:.1f}s, {size:.1f} MiB carried")
    carry_js(dest, carry_node)
    write_atomic(dest / "job.json", json.dumps({"mode": "stages", "stages": stage_names, "model": model_name,
                                                "scope": scope, "versions_prepare": versions()}, indent=1))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20
    log(f"prepared {dest} ({size:.1f} MiB)")


# ============================================================================ device (there)

def write_stage_weights(folder: Path, meta: dict, module) -> bool:
    """The stage's shards from the recreated component (the build names its weights
    ``<function>/<index>`` in call order; the tensor cache lays them out in its own order);
    True when their fingerprint in call order equals prepare's."""
    fn = meta["functions"][0]
    src = {f"{fn}/{i:05d}": {"component": "m", "key": k} for i, k in enumerate(meta["weights"])}
    params = folder / "art" / "params"
    layout = {r["name"] for shard in json.loads((params / "tensor-cache.json").read_text())["records"]
              for r in shard["records"]}
    if layout != set(src):
        raise RuntimeError(f"{meta['stage']}: the tensor cache's records are not the build's weights")
    state = module_state(module)
    write_tensor_cache(params, src, {"m": state})
    return fingerprint(module_weights(module, meta["weights"], state)) == meta["weights_sha256"]


def run_stages_node(folder: Path, cases, out: Path, repeat: int, log=print, software: bool = False) -> dict:
    """``web/node/stages.mjs`` on the stage's build: every case once, the first case of each
    function ``repeat`` more times. Returns result.json with ``outputs`` (per case: arrays)."""
    node = node_binary(folder.parent)
    dawn = unpack_dawn(folder.parent)
    art = folder / "art"
    for packed in art.glob("*.wasm.xz"):
        unxz(packed, packed.with_suffix(""))
    shutil.rmtree(out, ignore_errors=True)
    (out / "in").mkdir(parents=True)
    runs, seen = [], set()
    for ci, c in enumerate(cases):
        inputs = []
        for k, a in enumerate(c.inputs):
            a = np.asarray(a, order="C")  # ascontiguousarray would make a 0-d input 1-d
            (out / "in" / f"{ci}-{k}.bin").write_bytes(a.tobytes())
            inputs.append({"file": f"in/{ci}-{k}.bin", "shape": list(a.shape), "dtype": a.dtype.name})
        runs.append({"function": c.function, "inputs": inputs,
                     "repeat": 1 if c.function in seen else 1 + repeat})
        seen.add(c.function)
    (out / "job.json").write_text(json.dumps({"runs": runs}))
    cmd = [node, str(WEB / "node" / "stages.mjs"), "--art", str(art), "--job", str(out / "job.json"),
           "--out", str(out / "out"), "--dawn", str(dawn), "--tvmjs", str(folder.parent / "tvmjs")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=vulkan_env(software))
    (out / "node.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    log("\n".join("  node| " + ln for ln in (proc.stdout + proc.stderr).strip().splitlines()[-8:]))
    res_file = out / "out" / "result.json"
    res = json.loads(res_file.read_text()) if res_file.is_file() else {"errors": [f"node exited {proc.returncode}"]}
    res.update(returncode=proc.returncode, wall_s=round(time.perf_counter() - t0, 1))
    if not res.get("errors") and len(res.get("runs", [])) == len(cases):
        res["outputs"] = [[np.fromfile(out / "out" / o["file"], np.dtype(o["dtype"])).reshape(o["shape"])
                           for o in r["outputs"]] for r in res["runs"]]
    return res


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a, order="C")
        h.update(f"{a.dtype.name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class PreparedDawn:
    """This tier as a backend of the one check driver: its "build" is the prepared art folder,
    its runner hands back what Node on Dawn computed for a case (looked up by the digest of
    the function and the case's inputs: a case Node did not run cannot be answered)."""

    name = "webgpu"

    def __init__(self, folder: Path, meta: dict, cases, outputs, info: dict):
        self.folder, self.meta, self.info = folder, meta, info
        self.device_class = info["device_class"]
        self.outputs = {(c.function, _digest(c.inputs)): o for c, o in zip(cases, outputs)}

    def unavailable_reason(self):
        return None

    @contextlib.contextmanager
    def session(self):
        yield self

    def describe_session(self, _runner) -> dict:
        return self.info

    def build_cached(self, ir_factory, key, cache, log=print, label=""):
        return self.folder / "art", self.meta, True

    def run(self, _art, function: str, inputs) -> list[np.ndarray]:
        found = self.outputs.get((function, _digest(inputs)))
        if found is None:
            raise RuntimeError(f"{function}: no output from Node for these inputs (not a prepared case)")
        return found


def device(folder: Path, out: Path, repeat: int = 5, log=print, software: bool = False,
           seeds: tuple[int, ...] = (0,)) -> int:
    """Check (and, on the first seed, time) every prepared stage. ``seeds``: the inputs prepared
    for each (``prepare --seeds``; model stages only past seed 0); the first seed's report is
    ``gpu-report.json``, every seed's also ``calibrate-seed<N>.json`` when there are several
    (read by ``sdparity calibrate --from-reports``)."""
    import torch

    from reference.models import random_components

    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic
    from sdparity.registry import get_stage
    from sdparity.reports.report import Report

    torch.backends.cuda.matmul.allow_tf32 = False  # a float32 reference, not TF32
    torch.backends.cudnn.allow_tf32 = False
    folder, out = folder.resolve(), out.resolve()
    if not (folder / "job.json").is_file():
        raise SdparityError(f"{folder}: not a prepared folder (no job.json: `prepare` did not finish there)")
    job = json.loads((folder / "job.json").read_text())
    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)"
    dclass = "gpu" if cuda else "cpu"  # SwiftShader (tests here) is the CPU
    out.mkdir(parents=True, exist_ok=True)
    info = {"name": "webgpu", "device_class": dclass, "card": card, "device_name": card,
            "runtime": "Node + Dawn (npm webgpu), one process a stage", "torch": torch.__version__}
    reports = {}
    for seed in seeds:
        report = reports[seed] = Report(None)
        report.data.update(model={"name": job["model"], "digest": None, "path": None}, model_scope=job["scope"],
                           seed=seed, versions_prepare=job["versions_prepare"])
        report.data["versions"].update({k: v for k, v in job["versions_prepare"].items()
                                        if report.data["versions"].get(k) is None})
        report.data["backends"]["webgpu"] = info
        if seed == seeds[0]:
            report.data["performance"] = {dclass: {"card": card, "repeat": repeat, "results": []}}

    def write():
        for seed, report in reports.items():
            if seed == seeds[0]:
                write_atomic(out / "gpu-report.json", report.to_json())
            if len(seeds) > 1:
                write_atomic(out / f"calibrate-seed{seed}.json", report.to_json())

    for name in job["stages"]:
        meta = json.loads((folder / name / "meta.json").read_text())
        stage = get_stage(name)
        module = None
        for seed in [sd for sd in seeds if sd in meta.get("seeds", [0])]:
            report = reports[seed]
            try:
                if meta.get("component") and module is None:
                    t0 = time.perf_counter()
                    parts = random_components(job["model"], parts=set(component_parts(meta["component"])))
                    log(f"{name}: recreated the seeded {job['model']} {meta['component']} "
                        f"in {time.perf_counter() - t0:.1f}s")
                    module = stage.wrap(parts[meta["component"]], None).eval()
                    del parts
                    same = write_stage_weights(folder / name, meta, module)
                    info.setdefault("weights_same_as_prepare", {})[name] = same
                    if not same:
                        raise RuntimeError("the recreated weights differ from the ones built against (fingerprint)")
                perf = report.data.get("performance", {}).get(dclass, {}).get("results")
                _stage_seed(folder / name, meta, stage, module, seed, report, info, perf,
                            repeat if perf is not None else 0, log, software)
            except Exception as e:  # record and go on: a later stage may still work
                from sdparity.errors import one_line

                report.add(stage=name, backend="webgpu", device_class=dclass, case=None, function=None, output=None,
                           shapes=None, verdict="error", message=one_line(e)[:300], metrics=None, tolerance=None,
                           timings=None, card=card)
                log(f"{name} (seed {seed}): error: {one_line(e)}")
            write()  # after every stage and seed
        module = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    for seed, report in reports.items():
        log(f"webgpu (Dawn) on {card}, seed {seed}: {report.summary()}")
    return 0 if all(r.ok for r in reports.values()) else 1


def _stage_seed(folder: Path, meta: dict, stage, module, seed: int, report, info: dict, perf: list | None,
                repeat: int, log, software: bool) -> None:
    """One stage on one seed's inputs: Node on Dawn runs every case (``perf`` given: the first
    case of each function ``repeat`` more times, and PyTorch timed on it), then the one check
    driver judges every case with this tier's hooks."""
    import dataclasses

    from sdparity.errors import Progress
    from sdparity.runner import DEFAULT, run_checks

    name, card, dclass = meta["stage"], info["card"], info["device_class"]
    cases = prepared_cases(folder, meta, module, seed)
    res = run_stages_node(folder, cases, Path(f"/tmp/sdparity-stage-{name}"), repeat, log, software)
    info["adapter"] = res.get("adapter")
    info.setdefault("node", {})[f"{name}/seed{seed}"] = {k: res.get(k) for k in ("loadMs", "wall_s", "returncode")}
    if "outputs" not in res:
        raise RuntimeError("; ".join(res.get("errors") or ["failed"]))
    if perf is not None:
        firsts = {}
        for c, r in zip(cases, res["runs"]):
            firsts.setdefault(c.function, (c, r))
        ref = torch_times(stage, module, {fn: c for fn, (c, _) in firsts.items()}, repeat)
        for fn, (c, r) in firsts.items():
            run_all = [x / 1e3 for x in r["ms"][1:]]
            row = {"stage": name, "backend": "webgpu", "device_class": dclass, "card": card, "function": fn,
                   "case": c.label, "build_s": meta.get("build_s"), "run_s": round(float(np.median(run_all)), 6),
                   "run_s_all": [round(x, 6) for x in run_all], "first_call_s": r["ms"][0] / 1e3,
                   "load_ms": res.get("loadMs"), "ref_s": round(float(np.median(ref["times"][fn])), 6),
                   "ref_s_all": [round(x, 6) for x in ref["times"][fn]], "reference_kind": ref["kind"],
                   "ref_device": "cuda" if dclass == "gpu" else "cpu",
                   "ref_peak_allocated_mib": ref["peak_mib"] and round(ref["peak_mib"], 1)}
            row["ratio"] = round(row["run_s"] / row["ref_s"], 3) if row["ref_s"] > 0 else None
            perf.append(row)
            log(f"[webgpu] {name} {fn}: dawn {row['run_s'] * 1e3:.1f} ms, torch {row['ref_s'] * 1e3:.1f} ms "
                f"({row['ratio']}x) on {card}")
    backend = PreparedDawn(folder, meta, cases, res["outputs"], info)
    md = dataclasses.replace(DEFAULT, cases=lambda *_: cases, own_kernels=False, prove_known=False)
    run_checks([stage], [backend], PreparedModel(meta["model"], meta["scope"]), report, cache=None, seed=seed,
               log=Progress(stream=sys.stdout), variants={name: meta["variant"]}, mode=md)


def main(argv=None) -> int:
    from sdparity.args import latent_hw

    p = argparse.ArgumentParser(prog="python -m sdparity.gpu.webstages", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="build each stage for WebGPU and what the GPU machine needs (here)")
    a.add_argument("--model", default="sdxl-random")
    a.add_argument("--stages", default="unet,vae", help="comma-separated (default unet,vae)")
    a.add_argument("--dir", type=Path, required=True)
    a.add_argument("--latent", type=latent_hw, default=None, help="latent HxW (default: the model's)")
    a.add_argument("--seeds", type=int, default=1, help="also the model stages' inputs of seeds 1..N-1")
    b = sub.add_parser("device", help="run each stage in Node on Dawn and PyTorch there; compare and time")
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--repeat", type=int, default=5, help="timed calls of each function's first case (default 5)")
    b.add_argument("--swiftshader", action="store_true", help="Dawn on chromium's SwiftShader (no GPU: tests)")
    b.add_argument("--seeds", default="0", help="comma-separated seeds prepared (default 0); several: each also "
                   "written as calibrate-seed<N>.json for `sdparity calibrate --from-reports`")
    args = p.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.cmd == "prepare":
        prepare(args.model, args.dir, [s for s in args.stages.split(",") if s],
                tuple(args.latent) if args.latent else None, log, seeds=args.seeds)
        return 0
    return device(args.dir, args.out, args.repeat, log, software=args.swiftshader,
                  seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()))


if __name__ == "__main__":
    from sdparity.errors import one_line_main

    sys.exit(one_line_main("python -m sdparity.gpu.webstages", main))
