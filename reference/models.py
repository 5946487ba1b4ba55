"""Model factories and the one loader every model goes through.

Three kinds of model, one code path:

* ``tiny``        a seeded random SD-architecture model made here (seconds on a CPU).
* ``sd15-random`` the full-size SD 1.5 architecture with seeded random weights.
* a folder        a local diffusers-layout SD 1.x checkpoint.

The two built-in models are created with real diffusers/transformers classes, written
with ``save_pretrained`` into the cache, and then loaded back with ``from_pretrained``
exactly like a user's checkpoint folder. Nothing here touches a model hub.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

BUILTIN_MODELS = ("tiny", "sd15-random")
# Bump when a factory below changes what it writes: it is part of the cache folder name.
FACTORY_VERSION = 1

# The scheduler configuration the whole project pins (docs/numerics.md, pitfall 1).
PINNED_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "thresholding": False,
    "use_karras_sigmas": False,
    "steps_offset": 1,
}

REQUIRED_PARTS = {
    "model_index.json": "file",
    "text_encoder/config.json": "file",
    "unet/config.json": "file",
    "vae/config.json": "file",
    "scheduler/scheduler_config.json": "file",
}


#: weight files in Python's pickle format: loading one can run arbitrary code
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class ModelError(Exception):
    """A model folder is missing, incomplete or unreadable."""


@dataclass
class LoadedModel:
    name: str  # "tiny", "sd15-random" or the folder path
    path: Path
    digest: str  # content hash of the folder: part of every cache key
    pipe: object  # diffusers.StableDiffusionPipeline (float32, CPU, eval)

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scope(self) -> str:
        """Tolerance scope ("tiny" | "full") of this architecture: see ``architecture_scope``."""
        return architecture_scope(self.text_encoder.config.to_dict(), dict(self.unet.config),
                                  dict(self.vae.config))

    @property
    def default_latent_hw(self) -> tuple[int, int]:
        """Latent size used by default checks: the model's native size, capped for tiny."""
        size = int(self.unet.config.sample_size)
        return (size, size)


# --------------------------------------------------------------------------------------
# Tokenizer: the original CLIP BPE, shipped inside the open_clip_torch wheel.
# --------------------------------------------------------------------------------------

def _bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the CLIP BPE vocabulary comes from the open_clip_torch wheel; install it with "
            "'pip install --no-deps open_clip_torch==3.3.0'"
        )
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelError(f"{path} is missing from the open_clip_torch install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, others to 256+n."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def write_clip_tokenizer(folder: Path) -> None:
    """Write vocab.json + merges.txt of the SD 1.x CLIP tokenizer (vocab 49408) into folder."""
    with gzip.open(_bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != 49408:
        raise ModelError(f"CLIP vocabulary has {len(vocab)} entries, expected 49408")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def make_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "pad_token": "<|endoftext|>"})
    )
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------

def _configs(kind: str) -> dict:
    if kind == "tiny":
        return {
            "text_encoder": dict(
                vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
            ),
            "unet": dict(
                sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
            ),
            # Four blocks like SD, so the VAE upsamples 8x as SD's does.
            "vae": dict(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=128, scaling_factor=0.18215,
            ),
        }
    if kind == "sd15-random":
        return {
            # CLIP ViT-L/14 text tower as used by SD 1.x.
            "text_encoder": dict(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
            ),
            # SD 1.5 UNet: the diffusers defaults except cross_attention_dim (default 1280 is not SD1).
            "unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
            "vae": dict(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=512, scaling_factor=0.18215,
            ),
        }
    raise ModelError(f"unknown built-in model {kind!r}; choose one of {', '.join(BUILTIN_MODELS)}")


def _largest(v) -> int:
    return max(v) if isinstance(v, (list, tuple)) else int(v)


def architecture_dims(text_encoder: dict, unet: dict, vae: dict) -> dict[str, int]:
    """The sizes that set how much float32 rounding error a stage accumulates: width (the length
    of every dot product and normalization), depth (how many layers the error passes through)
    and the UNet's native latent size (attention and GroupNorm reduce over it)."""
    return {
        "clip_width": text_encoder["hidden_size"], "clip_mlp": text_encoder["intermediate_size"],
        "clip_layers": text_encoder["num_hidden_layers"],
        "unet_width": _largest(unet["block_out_channels"]), "unet_blocks": len(unet["block_out_channels"]),
        "unet_layers": _largest(unet["layers_per_block"]), "unet_cross": _largest(unet["cross_attention_dim"]),
        "unet_sample": _largest(unet["sample_size"]),
        "vae_width": _largest(vae["block_out_channels"]), "vae_blocks": len(vae["block_out_channels"]),
        "vae_layers": _largest(vae["layers_per_block"]),
    }


def architecture_scope(text_encoder: dict, unet: dict, vae: dict) -> str:
    """"tiny" when no size exceeds the built-in tiny model's, else "full".

    The "tiny" tolerances were measured on the built-in tiny model; error grows with width and
    depth, so anything larger in any of these sizes is judged with the "full" tolerances
    (measured on SD 1.5's sizes, and never tighter). The name of the model plays no part: a
    copy of tiny in a folder is tiny, a folder holding SD 1.5 is full."""
    tiny = _configs("tiny")
    limit = architecture_dims(tiny["text_encoder"], tiny["unet"], tiny["vae"])
    dims = architecture_dims(text_encoder, unet, vae)
    return "tiny" if all(dims[k] <= limit[k] for k in limit) else "full"


def random_components(kind: str, seed: int = 0) -> dict:
    """The seeded random text encoder, UNet and VAE of a built-in model (eval mode).

    The GPU machine recreates the weights with this (sdparity.gpu.cuda, sdparity.gpu.web)
    instead of carrying gigabytes; a fingerprint of the bytes tells whether they came out the
    same there."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = _configs(kind)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**cfg["unet"])
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**cfg["vae"])
    parts = {"text_encoder": text_encoder, "unet": unet, "vae": vae}
    for m in parts.values():
        m.eval()
    return parts


def create_random_model(kind: str, folder: Path, seed: int = 0) -> None:
    """Create a seeded random SD-architecture pipeline and save_pretrained it into folder."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    parts = random_components(kind, seed)
    text_encoder, unet, vae = parts["text_encoder"], parts["unet"], parts["vae"]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
    scheduler = DPMSolverMultistepScheduler(**PINNED_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # transformers 5 writes tokenizer.json; SD 1.x checkpoints also carry the slow files.
    write_clip_tokenizer(folder / "tokenizer")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def cache_root() -> Path:
    """The cache folder: decided in one place, sdparity.files.cache_root."""
    from sdparity.files import cache_root as root

    return root()


def builtin_model_path(kind: str) -> Path:
    return cache_root() / "models" / f"{kind}-v{FACTORY_VERSION}"


def ensure_builtin(kind: str, log=print) -> Path:
    """Create the built-in model once (atomically: temp folder, then rename)."""
    _configs(kind)  # validates the name
    final = builtin_model_path(kind)
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log(f"creating the {kind} model in {final} (seeded random weights)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent))
    try:
        create_random_model(kind, tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process made it first
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def validate_folder(path: Path, allow_pickle: bool = False) -> None:
    """A readable diffusers SD folder with safetensors weights (pickle only when allowed):
    checked from the file names alone, before anything is imported or loaded."""
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"model path {path} is not a folder")
    missing = [p for p in REQUIRED_PARTS if not (path / p).is_file()]
    tok = path / "tokenizer"
    if not (tok / "tokenizer.json").is_file() and not (
        (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
    ):
        missing.append("tokenizer/tokenizer.json (or tokenizer/vocab.json + merges.txt)")
    if missing:
        raise ModelError(f"model folder {path} is not a diffusers SD checkpoint: missing {', '.join(missing)}")
    for sub in ("text_encoder", "unet", "vae"):
        if any((path / sub).glob("*.safetensors")):
            continue
        pickles = sorted(p.name for p in (path / sub).iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise ModelError(f"model folder {path}: {sub}/ has no weights (*.safetensors)")
        if not allow_pickle:
            raise ModelError(f"model folder {path}: {sub}/ has only pickle weights ({', '.join(pickles)}); "
                             "loading pickle can run code from the file: convert it to safetensors, "
                             "or pass --allow-pickle if you trust this folder")
    configs = [p for p in REQUIRED_PARTS if p.endswith(".json")]
    configs += sorted({str(p.relative_to(path)) for p in path.glob("*/config.json")} - set(configs))
    for cfg in configs:
        try:
            data = json.loads((path / cfg).read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"model folder {path}: {cfg} is not valid JSON ({e})") from None
        if not isinstance(data, dict):  # diffusers would fail after loading, blaming the hub
            raise ModelError(f"model folder {path}: {cfg} is not a JSON object (it holds a "
                             f"{type(data).__name__})")
        if cfg == "unet/config.json":
            _check_sample_size(path, data.get("sample_size"))


#: the largest latent side sdparity accepts, from --latent or a UNet's sample_size: 512 latent
#: = 4096 pixels, 8x SD 1.x's native 64. Memory grows with the 4th power of the side in the
#: attention stages and the square in the VAE; beyond this nothing fits a machine sdparity
#: runs on (SD 1.5 at 64 already needs ~2 GB of float64 reference activations per case).
MAX_LATENT_SIDE = 512


def _check_sample_size(path: Path, size) -> None:
    sides = list(size) if isinstance(size, (list, tuple)) else [size]
    for side in sides:
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
            raise ModelError(f"model folder {path}: unet/config.json sample_size {size!r} is not a "
                             f"positive integer")
        if side > MAX_LATENT_SIDE:
            raise ModelError(f"model folder {path}: unet/config.json sample_size {side} is over "
                             f"{MAX_LATENT_SIDE} (latent side; {MAX_LATENT_SIDE * 8} pixels), the largest "
                             f"sdparity accepts")


def folder_digest(path: Path) -> str:
    """sha256 over relative names and contents of every file (weights included)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_model(spec: str | os.PathLike, log=print, allow_pickle: bool = False) -> LoadedModel:
    """Load 'tiny', 'sd15-random' or a local folder through StableDiffusionPipeline.from_pretrained.
    Weights are read from safetensors only, unless ``allow_pickle`` (a folder is untrusted input)."""
    spec_s = str(spec)
    if spec_s in BUILTIN_MODELS:
        path = ensure_builtin(spec_s, log=log)
        name = spec_s
    else:
        path = Path(spec_s).expanduser().resolve()
        name = str(path)
    validate_folder(path, allow_pickle)
    import torch
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,  # None: safetensors first, else pickle
        )
    except Exception as e:  # diffusers raises many kinds; the user needs one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not load model folder {path}: {msg}") from None
    for m in (pipe.text_encoder, pipe.unet, pipe.vae):
        m.eval()
    return LoadedModel(name=name, path=path, digest=folder_digest(path), pipe=pipe)
