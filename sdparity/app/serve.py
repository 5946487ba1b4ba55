"""The browser app: build its artifacts for a model and serve it on 127.0.0.1.

`sdparity serve [--model tiny[,tiny-sd2,...]] [--port 8000]` builds (or reuses from the cache)
one WebGPU wasm per model holding every stage function, its weights as a float32 tvmjs tensor
cache, the tokenizer (SDXL: both), and each scheduler's constants for 1..100 steps, then serves
web/app (with a model picker when several are given). The browser_e2e tests use the same build_app() and
LocalServer.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sdparity.app.pipeline import APP_STAGES, SCHEDULER_STEPS, build_neutralize
from sdparity.errors import SdparityError
from sdparity.ir import digest
from sdparity.registry import get_stage
from sdparity.files import write_atomic
from sdparity.backends.webgpu.server import LocalServer

WEB = Path(__file__).resolve().parents[2] / "web"
#: the page's names of reference.pipeline.SCHEDULERS
SCHEDULER_LABELS = {"dpm": "DPM-Solver++ 2M", "euler": "Euler, trailing spacing (SD-Turbo's)", "pndm": "PNDM (PLMS)",
                    "lcm": "LCM (LCM-LoRA's 4 steps)"}
NODE = WEB / "node_modules" / "@mlc-ai"
MAX_STEPS = 100


def build_app(model, latent_hw, cache, log=print, backend=None, faults: dict | None = None,
              prefix: str = "/data/", neutralize: list[str] | None = None) -> Path:
    """Build everything the app needs into a folder (cached); return it (served at ``prefix``:
    /data/ for one model, /m/NAME/ for each of several: ``app_mounts``). ``neutralize``: known
    issues neutralized in the stages with weights (a generation's proof: app.pipeline.prove_generation)."""
    from reference.pipeline import SCHEDULERS, scheduler_constants, sdxl_time_ids

    from sdparity.backends import get_backend
    from sdparity.stages import PIPELINE_FUNCTIONS, PIPELINE_STAGES
    from sdparity.stages.scheduler_dpm import convert_function

    backend = backend or get_backend("webgpu")
    reason = backend.unavailable_reason()
    if reason:
        raise SdparityError(f"cannot build the web app: {reason}")
    neutralize = build_neutralize(model, backend, neutralize, log)
    stages = {n: get_stage(n) for n in APP_STAGES}  # the pipeline's, then the other schedulers'

    for name, fault in (faults or {}).items():
        stages[name] = stages[name].with_fault(fault)

    def variant(s):
        v = s.default_variant(model)
        v = {**v, "latent": list(latent_hw)} if "latent" in v else v
        return {**v, "neutralize": sorted(neutralize)} if (neutralize and s.component) else v

    keys = [s.build_key(model, variant(s)) for s in stages.values()]

    def ir():
        from sdparity.compile.frontend import merge

        return merge([s.build_ir(model, variant(s)) for s in stages.values()])

    t0 = time.perf_counter()
    art, meta, cached = backend.build_cached(ir, {"app": keys}, cache, log=log, label="web app")
    log(f"web app wasm: {'cached build reused' if cached else 'built'} in {time.perf_counter() - t0:.1f}s")

    # keyed by what fills it, this file's code included (the config's layout is written here)
    data = cache.root.parent / "app" / digest({"art": art.name, "model": model.digest, "latent": latent_hw,
                                               "prefix": prefix, "code": digest(Path(__file__).read_text())})
    if (data / "config.json").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    tokenizers = {"tokenizer": model.tokenizer}  # SDXL: and tokenizer_2, its second text encoder's
    if model.architecture == "sdxl":
        tokenizers["tokenizer_2"] = model.tokenizer_2
    for sub in tokenizers:
        tok_json = model.path / sub / "tokenizer.json"
        if not tok_json.is_file():
            raise SdparityError(f"{model.path}/{sub} has no tokenizer.json: the browser tokenizer needs it")
        shutil.copyfile(tok_json, data / f"{sub}.json")
    cfg = dict(model.pipe.scheduler.config)
    schedulers = {}
    for kind in SCHEDULERS:  # each scheduler's constants for 1..MAX_STEPS steps, and why not where not
        tables, refused = {}, {}
        for n in range(1, MAX_STEPS + 1):
            try:
                tables[str(n)] = scheduler_constants(cfg, kind, n)
            except ValueError as e:  # e.g. trailing spacing's n+1 timesteps (docs/schedulers.md)
                refused[str(n)] = str(e)
        write_atomic(data / f"{kind}_consts.json", json.dumps({"tables": tables, "refused": refused}, allow_nan=False))
        schedulers[kind] = {"url": f"{prefix}{kind}_consts.json", "label": SCHEDULER_LABELS[kind],
                            "steps": SCHEDULER_STEPS[kind]}
    c = int(model.unet.config.in_channels)
    h, w = latent_hw
    convert = convert_function(cfg)  # SD 2.x's v-prediction: another x0 conversion, the same step
    config = {
        "model": {"name": model.name, "digest": model.digest, "architecture": model.architecture},
        "artifact": f"/art/{art.name}/",
        # sdparity/stages/pipeline.json, with the model's conversion, then the other schedulers'
        "functions": [convert if f == "dpm_convert_model_output" else f for f in PIPELINE_FUNCTIONS]
        + [f for n in APP_STAGES if n not in PIPELINE_STAGES for f in stages[n].functions],
        "convert_function": convert,
        **{sub: {"url": f"{prefix}{sub}.json", "max_length": int(tok.model_max_length),
                 "pad_token_id": int(tok.pad_token_id), "bos_token_id": int(tok.bos_token_id),
                 "eos_token_id": int(tok.eos_token_id)} for sub, tok in tokenizers.items()},
        "neutralized": list(neutralize or ()),  # known issues neutralized in this build
        "schedulers": schedulers,  # the page's picker; the first is the default
        "max_steps": MAX_STEPS,
        "latent_shape": [c, h, w],
        "image_size": [h * model.vae_scale_factor, w * model.vae_scale_factor],
        "vae_scaling_factor": float(model.vae.config.scaling_factor),
    }
    if model.architecture == "sdxl":  # the UNet's added condition besides the pooled embeddings
        config["time_ids"] = sdxl_time_ids(model.pipe, latent_hw)
    write_atomic(data / "config.json", json.dumps(config, indent=1))  # last: marks the folder complete
    return data


def check_web_runtime() -> None:
    for pkg in ("web-runtime", "web-tokenizers"):
        if not (NODE / pkg / "lib" / "index.js").is_file():
            raise SdparityError(f"web/node_modules/@mlc-ai/{pkg} is missing: run scripts/setup_webgpu.sh")


def app_mounts(data: Path | dict[str, Path], cache) -> dict[str, Path]:
    """What the app loads, and nothing more: its pages and modules, the data folder of each
    model (one: at /data/; several, ``{name: folder}`` as built with prefix /m/NAME/: at
    /m/NAME/), the model list of the app's picker (/models/models.json), the two tvmjs
    libraries and each model's one wasm build (``config.json``'s ``artifact``), never the rest
    of the build cache."""
    check_web_runtime()
    folders = {"data": data} if isinstance(data, Path) else {f"m/{name}": d for name, d in data.items()}
    mounts = {"app": WEB / "app", "common": WEB / "common", "tvmjs": NODE / "web-runtime" / "lib",
              "tokenizers": NODE / "web-tokenizers" / "lib"}
    models = []
    for where, folder in folders.items():
        cfg = json.loads((folder / "config.json").read_text())
        art = cfg["artifact"].strip("/").split("/")[-1]
        mounts.update({where: folder, f"art/{art}": cache.root / art})
        about = cfg.get("model") or {}
        models.append({"name": about.get("name", where), "architecture": about.get("architecture"),
                       "config": f"/{where}/config.json"})
    listing = cache.root.parent / "app" / f"models-{digest(models)}"
    if not (listing / "models.json").is_file():
        listing.mkdir(parents=True, exist_ok=True)
        write_atomic(listing / "models.json", json.dumps(models, indent=1))
    mounts["models"] = listing
    return mounts


def app_server(data: Path | dict[str, Path], cache, port: int = 0) -> LocalServer:
    return LocalServer(app_mounts(data, cache), port=port)


def build_apps(models: list, latent_hw, cache, log=print) -> Path | dict[str, Path]:
    """One model: its data folder (served at /data/); several: {name: folder} (at /m/NAME/)."""
    if len(models) == 1:
        m = models[0]
        return build_app(m, latent_hw or m.default_latent_hw, cache, log=log)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SdparityError(f"--model names a model twice: {','.join(names)}")
    return {m.name: build_app(m, latent_hw or m.default_latent_hw, cache, log=log, prefix=f"/m/{m.name}/")
            for m in models}


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="build the browser app for a model and serve it on 127.0.0.1",
                       description="Build (or reuse) the WebGPU wasm of every stage, the weights, the "
                       "tokenizer and the scheduler constants, then serve the Stable Diffusion web app. "
                       "--model takes a comma-separated list (SD 1.x, SD 2.x and SDXL models): the app "
                       "then has a model picker.")
    from sdparity.args import latent_hw, add_model_args, port_arg

    add_model_args(p)
    p.add_argument("--latent", type=latent_hw, default=None, help="latent HxW (default: the model's sample_size)")
    p.add_argument("--port", type=port_arg, default=8000, help="port on 127.0.0.1 (default 8000)")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from reference.models import ModelError, load_model

    from sdparity.cache import BuildCache
    from sdparity.args import check_model_arg

    specs = [m.strip() for m in args.model.split(",") if m.strip()]  # several: the app's model picker
    if not specs:
        raise SdparityError("--model names no model")
    for spec in specs:
        check_model_arg(spec, args.allow_pickle)
    check_web_runtime()
    try:  # the port first: one in use is one line now, not after building the whole app
        server = LocalServer({}, port=args.port)
    except OSError as e:
        raise SdparityError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None
    try:
        try:
            models = [load_model(spec, allow_pickle=args.allow_pickle) for spec in specs]
        except ModelError as e:
            raise SdparityError(str(e)) from None
        cache = BuildCache()
        data = build_apps(models, tuple(args.latent) if args.latent else None, cache)
        server.mounts.update(app_mounts(data, cache))
        print(f"serving the app at {server.url}/app/  (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    finally:
        server.server_close()
    return 0
