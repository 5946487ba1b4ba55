"""WebGPU on a real GPU: the web app's own generation loop in Node on Dawn (issue 6).

The lent GPU machine has an NVIDIA Vulkan driver but no browser, no Node, no TVM and no
diffusers, and nothing can be downloaded there. What runs there is exactly the browser app's
code path: the same merged WebGPU wasm, tvmjs runtime, tokenizer and ``web/common/
pipeline.js``, driven by ``web/node/generate.mjs`` on Dawn (npm ``webgpu``, the WebGPU
implementation inside Chromium) instead of a page.

``prepare`` (here; no GPU needed) builds the app for a model (``sdparity.app.serve.build_app``)
and writes DIR:
    data/            config.json, tokenizer.json, <scheduler>_consts.json (as served to the browser)
    art/<name>/      sdparity.json, the wasm (xz), params/tensor-cache.json (the shards, i.e. the
                     weights, are not carried: UNet alone is 3.4 GB)
    weights.json     for every weight record: which component's state-dict entry holds its
                     bytes (matched by content here), and a sha256 of all weight bytes
    latents.f32      the injected initial latents (torch.randn, seeded: reference.pipeline)
    job.json         prompt, steps, guidance, model, versions here
    tokenizer/, scheduler/   the model folder's, for diffusers there
    node.xz, dawn/, tvmjs/, tokenizers/   Node and Dawn for Node (linux-x64 only; both xz), the
                     two JavaScript libraries from web/node_modules

``device`` (there) recreates the seeded model (reference.models.random_components), writes
the weight shards from it and checks their sha256 against prepare's, runs the Node runner
(first run cold, then warm), then the real diffusers StableDiffusionPipeline on the same card
with the same latents, and the float64 loop (reference.pipeline.float64_generate: each step's
noise floor), and writes ``gpu-report.json``, a ``sdparity.report/1`` report (the generation's
records; per-step and total times of both sides as bench records under ``performance.gpu``)
and PNGs (webgpu, diffusers, difference). Reports of the older schema ``sdparity.webgpu_gpu/1``
(``webgpu-gpu.json``, committed under docs/results) are read by docs/performance.md's generator
only.

    python -m sdparity.gpu.web prepare --model sd15-random --dir out/webgpu-gpu
    python -m sdparity.gpu.web device --dir out/webgpu-gpu --out $OUT     (docs/performance.md)

``device`` also runs here (SwiftShader through VK_ICD_FILENAMES, torch on the CPU): that is
how it is tested (tests/e2e/test_node_dawn.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sdparity.gpu.toolchain import WEB, node_binary, unpack_art, unpack_dawn


def components() -> tuple[str, ...]:
    """The pipeline parts whose weights the stages carry (text_encoder, unet, vae)."""
    from sdparity.registry import all_stages

    return tuple(dict.fromkeys(s.component for s in all_stages().values() if s.component))



def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ============================================================================ prepare (here)

def _state_bytes(parts: dict) -> dict[str, tuple[str, str]]:
    """sha256 of every tensor's bytes -> (component, state-dict key); equal bytes are
    interchangeable, so any holder will do."""
    found = {}
    for comp in components():
        for key, t in parts[comp].state_dict().items():
            a = np.ascontiguousarray(t.detach().float().numpy() if t.is_floating_point() else t.numpy())
            found.setdefault(_digest(a.tobytes()), (comp, key))
    return found


def _records(cache_json: dict):
    for shard in cache_json["records"]:
        for rec in shard["records"]:
            yield shard, rec


def _weight_sources(params_dir: Path, parts: dict) -> tuple[list[dict], str]:
    """Where each weight record's bytes come from, and a sha256 over all of them."""
    cache_json = json.loads((params_dir / "tensor-cache.json").read_text())
    by_bytes = _state_bytes(parts)
    out, whole = [], hashlib.sha256()
    for shard, rec in _records(cache_json):
        if rec["format"] != "raw":
            raise RuntimeError(f"{rec['name']}: only raw (exact float32) weights can be recreated there")
        with open(params_dir / shard["dataPath"], "rb") as f:
            f.seek(rec["byteOffset"])
            data = f.read(rec["nbytes"])
        whole.update(data)
        src = by_bytes.get(_digest(data))
        entry = {"name": rec["name"], "nbytes": rec["nbytes"]}
        if src is not None:
            entry.update(component=src[0], key=src[1])
        elif len(data) <= 1 << 20:  # a constant the exporter lifted (not a weight): carry it
            entry["inline"] = data.hex()
        else:
            raise RuntimeError(f"{rec['name']}: no state-dict tensor of the model has these bytes")
        out.append(entry)
    return out, whole.hexdigest()


def _xz(src: Path, dest: Path) -> None:
    if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
        return
    tmp = dest.with_suffix(".part")
    with open(src, "rb") as fi, lzma.open(tmp, "wb", preset=6) as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
    tmp.replace(dest)


def prepare(model_name: str, dest: Path, latent: tuple[int, int] | None, job: dict, log=print,
            carry_node: bool = True) -> None:
    """carry_node=False leaves Node itself out (runs here use the installed one)."""
    from reference.models import load_model
    from reference.pipeline import initial_latents

    from sdparity.cache import BuildCache
    from sdparity.files import write_atomic
    from sdparity.reports.report import versions
    from sdparity.app.serve import build_app

    model = load_model(model_name, log=log)
    latent = latent or model.default_latent_hw
    cache = BuildCache()
    data = build_app(model, latent, cache, log=log)
    config = json.loads((data / "config.json").read_text())
    art_name = config["artifact"].strip("/").split("/")[-1]
    art = cache.root / art_name
    meta = json.loads((art / "sdparity.json").read_text())

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "job.json").unlink(missing_ok=True)  # written last: marks the folder complete
    for sub in ("data", "art", "tokenizer", "scheduler"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    shutil.copytree(data, dest / "data")
    (dest / "art" / art_name / meta["params_dir"]).mkdir(parents=True)
    for f in ("sdparity.json", f"{meta['params_dir']}/tensor-cache.json"):
        shutil.copyfile(art / f, dest / "art" / art_name / f)
    # xz: the tuned tiles made the full-size wasm 16 MB (3 MB as xz), and a device call carries 64 MiB
    _xz(art / meta["wasm"], dest / "art" / art_name / (meta["wasm"] + ".xz"))
    for sub in ("tokenizer", "scheduler"):  # tokenizer.json is in data/ already: vocab + merges do
        shutil.copytree(model.path / sub, dest / sub, ignore=shutil.ignore_patterns("tokenizer.json"))

    parts = {c: getattr(model, c) for c in components()}
    t0 = time.perf_counter()
    sources, sha = _weight_sources(art / meta["params_dir"], parts)
    log(f"weights: {len(sources)} records matched to the model's state dicts in {time.perf_counter() - t0:.1f}s")
    (dest / "weights.json").write_text(json.dumps({"sha256": sha, "params_dir": meta["params_dir"],
                                                   "art": art_name, "records": sources}))
    lat = initial_latents(model, latent, seed=job["seed"])
    (dest / "latents.f32").write_bytes(lat.astype(np.float32).tobytes())

    carry_js(dest, carry_node)
    job = {**job, "model": {"name": model.name, "digest": model.digest, "scope": model.scope}, "latent": list(latent),
           "latent_shape": list(lat.shape), "versions_prepare": versions()}
    write_atomic(dest / "job.json", json.dumps(job, indent=1))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20
    log(f"prepared {dest} ({size:.1f} MiB)")


def carry_js(dest: Path, carry_node: bool = True) -> None:
    """The JavaScript side into ``dest``: Node itself (xz; ``carry_node=False`` leaves it out),
    Dawn for Node (this platform's native module, xz), tvmjs and the tokenizers' library."""
    node = shutil.which("node")
    if not node:
        raise RuntimeError("node is not installed here (scripts/setup_webgpu.sh installs it)")
    if carry_node:
        _xz(Path(node).resolve(), dest / "node.xz")
    dawn = WEB / "node_modules" / "webgpu"
    shutil.rmtree(dest / "dawn", ignore_errors=True)
    (dest / "dawn" / "dist" / "linux-x64").mkdir(parents=True)
    for f in ("index.js", "package.json"):
        shutil.copyfile(dawn / f, dest / "dawn" / f)
    _xz(dawn / "dist/linux-x64/dawn.node", dest / "dawn" / "dist/linux-x64/dawn.node.xz")  # 21 -> 5 MB
    for name, pkg in (("tvmjs", "web-runtime"), ("tokenizers", "web-tokenizers")):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(WEB / "node_modules" / "@mlc-ai" / pkg / "lib", dest / name,
                        ignore=shutil.ignore_patterns("*.map", "*.d.ts"))
        shutil.copyfile(WEB / "node_modules" / "@mlc-ai" / pkg / "package.json", dest / name / "package.json")


# ============================================================================ device (there)

def write_weights(folder: Path, parts: dict, log=print) -> bool:
    """Write the tensor-cache shards from the recreated components; True when their sha256
    equals prepare's (the same weights as built and checked against here)."""
    spec = json.loads((folder / "weights.json").read_text())
    params = folder / "art" / spec["art"] / spec["params_dir"]
    src = {r["name"]: r for r in spec["records"]}
    states = {c: parts[c].state_dict() for c in {s["component"] for s in src.values() if "component" in s}}
    same = write_tensor_cache(params, src, states) == spec["sha256"]
    log(f"weights written: {len(src)} tensors, {'same bytes as prepared' if same else 'DIFFERENT bytes'}")
    return same


def write_tensor_cache(params: Path, src: dict, states: dict) -> str:
    """Fill the shards that ``params/tensor-cache.json`` lays out; ``src``: record name ->
    {component, key} (the tensor ``states[component][key]``) or {inline: hex bytes}.
    Returns the sha256 of every record's bytes in the layout's order."""
    cache_json = json.loads((params / "tensor-cache.json").read_text())
    whole = hashlib.sha256()
    for shard in cache_json["records"]:
        buf = bytearray(shard["nbytes"])
        for rec in shard["records"]:
            s = src[rec["name"]]
            if "inline" in s:
                data = bytes.fromhex(s["inline"])
            else:
                t = states[s["component"]][s["key"]].detach().float().cpu()
                data = np.ascontiguousarray(t.numpy()).tobytes()
            if len(data) != rec["nbytes"]:
                raise RuntimeError(f"{rec['name']}: {len(data)} bytes, expected {rec['nbytes']}")
            buf[rec["byteOffset"]:rec["byteOffset"] + len(data)] = data
            whole.update(data)
        (params / shard["dataPath"]).write_bytes(bytes(buf))
    return whole.hexdigest()


SWIFTSHADER = Path("/usr/lib/chromium")  # Debian's chromium ships SwiftShader Vulkan and a loader
NVIDIA_ICD = Path("/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json")  # the lent GPU machine


def vulkan_env(software: bool = False) -> dict:
    """Environment for Dawn's Vulkan: SwiftShader from chromium (software=True: tests here),
    else the NVIDIA driver where the GPU machine keeps it, else the system's default."""
    env = dict(os.environ)
    if software:
        env["VK_ICD_FILENAMES"] = str(SWIFTSHADER / "vk_swiftshader_icd.json")
        env["LD_LIBRARY_PATH"] = f"{SWIFTSHADER}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    elif NVIDIA_ICD.is_file() and not (env.get("VK_ICD_FILENAMES") or env.get("VK_DRIVER_FILES")):
        env["VK_DRIVER_FILES"] = str(NVIDIA_ICD)
    return env


def run_node(folder: Path, out: Path, job: dict, runs: int, log=print, software: bool = False,
             profile: bool = False, submit_every: int | None = None, latents: Path | None = None) -> dict:
    node = node_binary(folder)
    dawn = unpack_dawn(folder)
    art_root = unpack_art(folder)
    cmd = [node, str(WEB / "node" / "generate.mjs"), "--data", str(folder / "data"), "--art", str(art_root),
           "--out", str(out), "--latents", str(latents or folder / "latents.f32"), "--prompt", job["prompt"],
           "--negative", job["negative"], "--steps", str(job["steps"]), "--guidance", str(job["guidance"]),
           "--runs", str(runs), "--trace", "--dawn", str(dawn), "--tvmjs", str(folder / "tvmjs"),
           "--tokenizers", str(folder / "tokenizers")] + (["--profile"] if profile else []) \
        + ([] if submit_every is None else ["--submitEvery", str(submit_every)])
    log("node: " + " ".join(cmd[1:3]) + " ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=job.get("timeout_s", 1800),
                          env=vulkan_env(software))
    wall = time.perf_counter() - t0
    (out / "node.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    log("\n".join("  node| " + line for line in tail))
    res_file = out / "result.json"
    res = json.loads(res_file.read_text()) if res_file.is_file() else {"errors": [f"node exited {proc.returncode}"]}
    res.update(returncode=proc.returncode, wall_s=wall, node_version=subprocess.run(
        [node, "--version"], capture_output=True, text=True).stdout.strip())
    return res


def _diffusers_pipe(folder: Path, parts: dict, device: str):
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pipe = StableDiffusionPipeline(
        **parts, tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(str(folder / "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device)


def webgpu_profile(res: dict) -> dict | None:
    """generate.mjs's per-pass GPU times (``--profile``) for the report's performance.gpu:
    per VM function, its kernels by time and summed by kind (sdparity.reports.kernels, the
    grouping of the CUDA profile), and the step's wall time split into recording the work
    (JavaScript, tvmjs, Dawn) and waiting for the GPU."""
    prof = res.get("profile")
    if not prof:
        return None
    from sdparity.reports.kernels import by_kind

    fns = {}
    for fn, f in prof["functions"].items():
        kernels = [{"kernel": k["kernel"], "calls": k["calls"], "s": k["ms_per_call"] / 1e3} for k in f["kernels"]]
        fns[fn] = {"calls": f["calls"], "passes_per_call": f["passes_per_call"],
                   "gpu_busy_ms_per_call": round(f["gpu_busy_ms_per_call"], 3),
                   "by_kind": by_kind(kernels), "kernels": f["kernels"][:40]}
    t = prof["timings"]
    step = {"wall_ms_median": float(np.median(t["stepMs"])), "record_ms_median": float(np.median(t["encodeMs"]))}
    steps = len(t["stepMs"])  # the functions of a denoising step are those called once a step
    step["gpu_busy_ms"] = sum(f["gpu_busy_ms_per_call"] for f in fns.values() if f["calls"] == steps)
    return {"method": prof["note"], "dawn_flags": prof["flags"], "timed_passes": prof["timed_passes"],
            "untimed_passes": prof["untimed_passes"], "step": step, "functions": fns}


def device(folder: Path, out: Path, runs: int = 2, log=print, software: bool = False,
           profile: bool = False, seeds: tuple[int, ...] = ()) -> int:
    """Run the prepared app in Node on Dawn and diffusers on the same card; write
    ``gpu-report.json``, a ``sdparity.report/1`` report (read by ``sdparity html``/``gate``):
    the generation judged by ``sdparity.app.pipeline.judge_generation`` (embeddings, latents
    after every step against the float64 loop's floor, pixels), and under
    ``performance.gpu`` the per-step and whole-generation times of both sides (bench records,
    so the speed gate compares them), the WebGPU run's details and its profile. ``seeds``: more
    generations from other seeded latents (one run each, parity only), each written as
    ``calibrate-seed<N>.json`` beside a copy of the main one (``sdparity calibrate --from-reports
    OUT`` turns them into the calibration group of this card's generation)."""
    import torch

    folder, out = folder.resolve(), out.resolve()
    from reference.models import random_components
    from reference.pipeline import diffusers_generate, float64_generate

    from sdparity.app.pipeline import first_failing_step, judge_generation
    from sdparity.reports.images import diff_heatmap, write_png
    from sdparity.reports.report import Report, versions

    out.mkdir(parents=True, exist_ok=True)
    job = json.loads((folder / "job.json").read_text())
    cuda = torch.cuda.is_available()
    tdev = "cuda" if cuda else "cpu"
    card = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)"
    dclass = "gpu" if cuda else "cpu"
    scope = job["model"]["scope"]  # the architecture's (reference.models.architecture_scope)
    report = Report(None)
    report.data.update(model={"name": job["model"]["name"], "digest": None, "path": None}, model_scope=scope,
                       seed=job.get("seed"), job=job, versions_device=versions(), errors=[])
    # the TVM that built the WGSL (prepare) and what ran here
    report.data["versions"] = {**job.get("versions_prepare", {}),
                               **{k: v for k, v in report.data["versions_device"].items() if v is not None}}
    report.data["backends"]["webgpu"] = {"name": "webgpu", "device_class": dclass, "card": card,
                                         "device_name": card, "runtime": "Node + Dawn (npm webgpu)"}
    perf = report.data.setdefault("performance", {}).setdefault(dclass, {"card": card, "results": []})
    path = out / "gpu-report.json"

    def fail(why: str) -> int:
        report.data["errors"].append(why)
        report.add(stage="pipeline", backend="webgpu", device_class=dclass, case=None, function="generate",
                   output=None, shapes=None, verdict="error", message=why, metrics=None, tolerance=None,
                   timings=None, card=card)
        report.write(path)
        log(f"error: {why}")
        return 1

    t0 = time.perf_counter()
    parts = random_components(job["model"]["name"])
    report.data["model"]["create_s"] = round(time.perf_counter() - t0, 1)
    same = write_weights(folder, parts, log)
    report.data["backends"]["webgpu"]["weights_same_as_prepare"] = same
    if not same:
        return fail("recreated weights differ from the ones built against (sha256)")

    node_out = Path("/tmp/sdparity-node-out")
    shutil.rmtree(node_out, ignore_errors=True)
    res = run_node(folder, node_out, job, runs, log, software, profile)
    perf["webgpu"] = {k: res.get(k) for k in ("adapter", "submitEvery", "loadMs", "runs", "timings", "errors",
                                              "returncode", "wall_s", "node_version", "width", "height")}
    report.data["backends"]["webgpu"]["adapter"] = res.get("adapter")
    prof = webgpu_profile(res)
    if prof:
        perf["webgpu_kernels"] = prof
        st = prof["step"]
        log(f"profile: step {st['wall_ms_median']:.1f} ms wall, {st['record_ms_median']:.1f} ms recording the work, "
            f"{st['gpu_busy_ms']:.1f} ms GPU busy (timestamp queries)")
        top = max(prof["functions"], key=lambda f: prof["functions"][f]["gpu_busy_ms_per_call"])
        for row in prof["functions"][top]["by_kind"]:
            log(f"  {top} {row['kind']:<55} {row['calls']:6.0f} passes {row['ms']:8.2f} ms {row['share']:6.1%}")
    if (node_out / "node.log").is_file():
        shutil.copyfile(node_out / "node.log", out / "node.log")
    if res.get("errors") or res.get("returncode"):
        return fail("; ".join(f"webgpu (node/dawn): {e}" for e in res.get("errors") or ["failed"]))
    shutil.copyfile(node_out / "result.json", out / "node-result.json")

    latents = np.fromfile(folder / "latents.f32", np.float32).reshape(job["latent_shape"])
    pipe = _diffusers_pipe(folder, parts, tdev)
    ref_runs = []
    for _ in range(runs):  # same count as the WebGPU side: first cold, then warm
        timings: dict = {}
        ref = diffusers_generate(pipe, job["prompt"], job["negative"], job["steps"], job["guidance"], latents,
                                 device=tdev, timings=timings)
        ref_runs.append(timings)
    perf["torch"] = {"device": tdev, "torch": torch.__version__, "tf32": False, "runs": ref_runs}
    t0 = time.perf_counter()
    ref64 = float64_generate(pipe, job["prompt"], job["negative"], job["steps"], job["guidance"], latents,
                             device=tdev)
    log(f"float64 loop (the per-step floor) on {tdev}: {time.perf_counter() - t0:.1f}s")

    # ---- parity: embeddings, latents after every step (floor-relative), final pixels
    shape = ref["latents"][0].shape
    gen = _node_generation(node_out, ref)
    for rec in judge_generation(gen, ref, ref64, "webgpu", scope, dclass, card=card):
        report.add(**rec)
    if res.get("timesteps") != ref["timesteps"]:
        report.add(**dict(report.results[-1], case="timesteps", output=None, verdict="fail", metrics=None,
                          failed_bound="shape", message=f"timesteps {res.get('timesteps')} != diffusers' "
                          f"{ref['timesteps']}"))
    write_png(out / "webgpu.png", gen["pixels"])
    write_png(out / "diffusers.png", ref["image_u8"])
    write_png(out / "difference.png", diff_heatmap(gen["pixels"], ref["image_u8"]))

    # ---- speed: bench records (the speed gate's input). A round is one generation of each side
    # (the first cold), so the gate's noise is the spread between runs, not between the steps of
    # one run (a step that waits on an early submit or a collection took 1.6x its neighbours).
    wt, tt = perf["webgpu"]["timings"], ref_runs[-1]
    step_w = [float(np.median(r["stepMs"])) / 1e3 for r in perf["webgpu"]["runs"]]
    step_t = [float(np.median(r["step_s"])) for r in ref_runs]
    base = dict(stage="pipeline", backend="webgpu", device_class=dclass, card=card,
                shapes={"latents": list(shape)}, reference_kind=f"diffusers StableDiffusionPipeline, torch {tdev}")
    perf["results"] = [
        dict(base, function="step", case=f"median of {job['steps']} steps (UNet with CFG + DPM update), a round "
             "per generation", run_s=step_w[-1], run_s_all=step_w, ref_s=step_t[-1], ref_s_all=step_t,
             ratio=step_w[-1] / step_t[-1]),
        dict(base, function="generate", case=f"{job['steps']} steps + text encoding + VAE decode, warm",
             run_s=wt["totalMs"] / 1e3, run_s_all=[r["totalMs"] / 1e3 for r in perf["webgpu"]["runs"]],
             ref_s=tt["total_s"], ref_s_all=[r["total_s"] for r in ref_runs],
             ratio=(wt["totalMs"] / 1e3) / tt["total_s"]),
    ]
    perf["generation"] = {
        "steps": job["steps"], "card": card,
        "webgpu_step_ms_median": float(np.median(wt["stepMs"])),
        "torch_step_ms_median": 1e3 * float(np.median(tt["step_s"])),
        "webgpu_total_s": wt["totalMs"] / 1e3, "torch_total_s": tt["total_s"],
        "webgpu_load_s": perf["webgpu"]["loadMs"] / 1e3,
    }
    s = perf["generation"]
    s["step_ratio"] = s["webgpu_step_ms_median"] / s["torch_step_ms_median"]
    s["total_ratio"] = s["webgpu_total_s"] / s["torch_total_s"]
    report.write(path)
    first = first_failing_step(report.results)
    ok = report.ok
    if seeds:
        ok = _more_seeds(folder, out, report, job, pipe, tdev, dclass, card, seeds, log, software) and ok
    log(f"{card}: WebGPU (Dawn) {s['webgpu_step_ms_median']:.1f} ms/step, {s['webgpu_total_s']:.2f} s total; "
        f"PyTorch {tdev} {s['torch_step_ms_median']:.1f} ms/step, {s['torch_total_s']:.2f} s total; "
        f"ratio {s['step_ratio']:.2f}x/step; parity {'pass' if ok else 'FAIL'} {report.summary()}"
        + (f" (first failing: {first['case']}: {first['message']})" if first else ""))
    return 0 if ok else 1


def _node_generation(node_out: Path, ref: dict) -> dict:
    """What generate.mjs wrote (embeddings, latents after every step, RGBA) in the shapes of
    diffusers' run ``ref``, as ``app.pipeline.judge_generation`` takes it."""
    h, w = ref["image_u8"].shape[:2]
    emb = np.fromfile(node_out / "embeddings.f32", np.float32).reshape(2, *ref["positive"].shape)
    lat = np.fromfile(node_out / "latents.f32", np.float32).reshape(-1, *ref["latents"][0].shape)
    rgba = np.fromfile(node_out / "rgba.bin", np.uint8).reshape(h, w, 4)
    return {"positive": emb[0], "negative": emb[1], "latents": list(lat), "pixels": rgba[..., :3]}


def _more_seeds(folder: Path, out: Path, report, job: dict, pipe, tdev: str, dclass: str, card: str,
                seeds, log, software: bool) -> bool:
    """One more generation per seed (Node once, diffusers once, the float64 loop), judged like
    the main one; each seed's records in ``calibrate-seed<N>.json`` (the main seed's too)."""
    import copy

    from reference.pipeline import diffusers_generate, float64_generate, initial_latents

    from sdparity.app.pipeline import judge_generation

    report.write(out / f"calibrate-seed{job.get('seed', 0)}.json")
    ok = True
    hw = tuple(job["latent_shape"][2:])
    for seed in [s for s in seeds if s != job.get("seed", 0)]:
        lat = initial_latents(pipe, hw, seed)
        lat_file = Path(f"/tmp/sdparity-latents-seed{seed}.f32")
        lat_file.write_bytes(lat.astype(np.float32).tobytes())
        node_out = Path(f"/tmp/sdparity-node-out-seed{seed}")
        shutil.rmtree(node_out, ignore_errors=True)
        res = run_node(folder, node_out, job, 1, log, software, latents=lat_file)
        rep = copy.deepcopy(report)
        rep.data.update(seed=seed, results=[], errors=[])
        rep.data.pop("performance", None)
        if res.get("errors") or res.get("returncode"):
            rep.data["errors"] = [f"webgpu (node/dawn): {e}" for e in res.get("errors") or ["failed"]]
            ok = False
        else:
            ref = diffusers_generate(pipe, job["prompt"], job["negative"], job["steps"], job["guidance"], lat,
                                     device=tdev)
            ref64 = float64_generate(pipe, job["prompt"], job["negative"], job["steps"], job["guidance"], lat,
                                     device=tdev)
            for rec in judge_generation(_node_generation(node_out, ref), ref, ref64, "webgpu",
                                        report.data["model_scope"], dclass, card=card, seed=seed):
                rep.add(**rec)
            ok = ok and rep.ok
        rep.write(out / f"calibrate-seed{seed}.json")
        worst = max(((r.get("metrics") or {}).get("floor_ratio") or 0.0 for r in rep.results
                     if r["output"] == "latents"), default=None)
        log(f"seed {seed}: {rep.summary()}, worst step err/floor {worst}")
    return ok


def main(argv=None) -> int:
    from sdparity.args import latent_hw

    p = argparse.ArgumentParser(prog="python -m sdparity.gpu.web", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="build the app and everything the GPU machine needs (here)")
    a.add_argument("--model", default="sd15-random")
    a.add_argument("--dir", type=Path, required=True)
    a.add_argument("--latent", type=latent_hw, default=None, help="latent HxW (default: the model's)")
    a.add_argument("--prompt", default="a photo of an astronaut riding a horse")
    a.add_argument("--negative", default="blurry")
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--guidance", type=float, default=7.5)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("device", help="run WebGPU (Node + Dawn) and diffusers there, compare and time")
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--runs", type=int, default=2, help="generations per side (first cold; default 2)")
    b.add_argument("--swiftshader", action="store_true", help="Dawn on chromium's SwiftShader (no GPU: tests)")
    b.add_argument("--seeds", default="", help="comma-separated: one more generation per seed (parity only), "
                   "each written as calibrate-seed<N>.json for `sdparity calibrate --from-reports`")
    b.add_argument("--profile", action="store_true",
                   help="one more generation with a timestamp query around every GPU pass: per-kernel times "
                        "under performance.gpu.webgpu_kernels (needs the adapter's timestamp-query)")
    args = p.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.cmd == "prepare":
        latent = tuple(args.latent) if args.latent else None
        job = {"prompt": args.prompt, "negative": args.negative, "steps": args.steps,
               "guidance": args.guidance, "seed": args.seed}
        prepare(args.model, args.dir, latent, job, log)
        return 0
    return device(args.dir, args.out, args.runs, log, software=args.swiftshader, profile=args.profile,
                  seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()))


if __name__ == "__main__":
    from sdparity.errors import one_line_main

    sys.exit(one_line_main("python -m sdparity.gpu.web", main))
