"""Model factories and the one loader every model goes through.

Three kinds of model, one code path:

* ``tiny``        a seeded random SD-architecture model made here (seconds on a CPU).
* ``sd15-random`` the full-size SD 1.5 architecture with seeded random weights.
* ``tiny-sd2``    a seeded random SD 2.x-architecture model (OpenCLIP-style text tower, linear
                  projections, per-block heads, v-prediction scheduler config), tiny.
* ``tiny-sdxl``   a seeded random SDXL-architecture model (two text encoders, text_time added
                  conditions, VAE factor 0.13025), tiny; loaded by StableDiffusionXLPipeline.
* ``sd21-random`` the full-size SD 2.1 architecture (OpenCLIP ViT-H text tower, 768x768), seeded
                  random weights (5.2 GB in float32).
* ``sdxl-random`` the full-size SDXL 1.0 base architecture (CLIP ViT-L + OpenCLIP bigG, 1024x1024),
                  seeded random weights (13.9 GB in float32: more than a 24 GB machine can hold
                  twice; the CUDA tier builds it from ``seeded_model`` instead, docs/models.md).
* a folder        a local diffusers-layout SD 1.x, 2.x or XL checkpoint, recognized by its configs
                  (``architecture_of``), never by its name.

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

BUILTIN_MODELS = ("tiny", "sd15-random", "tiny-sd2", "tiny-sdxl", "sd21-random", "sdxl-random")
#: the full-size built-in models: never created by the tests (tests/conftest.py)
FULL_SIZE_MODELS = ("sd15-random", "sd21-random", "sdxl-random")
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
    name: str  # a built-in model's name (BUILTIN_MODELS) or the folder path
    path: Path | None  # None: made in memory, never saved (``seeded_model``)
    digest: str  # content hash of the folder: part of every cache key
    pipe: object  # diffusers StableDiffusionPipeline or StableDiffusionXLPipeline (float32, CPU, eval); seeded_model: its parts

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def text_encoder_2(self):
        """SDXL's second text encoder (CLIPTextModelWithProjection); None for SD 1.x/2.x."""
        return getattr(self.pipe, "text_encoder_2", None)

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
    def tokenizer_2(self):
        return getattr(self.pipe, "tokenizer_2", None)

    @property
    def architecture(self) -> str:
        """"sd1", "sd2" or "sdxl", from the loaded configs (``architecture_of``), not the name."""
        te2 = self.text_encoder_2
        return architecture_of(self.text_encoder.config.to_dict(), dict(self.unet.config),
                               None if te2 is None else te2.config.to_dict())

    @property
    def hidden_size(self) -> int:
        """Width of the prompt embeddings the UNet attends to: the text encoder's hidden size
        (SDXL: its two encoders' penultimate states side by side, so their sum)."""
        te2 = self.text_encoder_2
        return int(self.text_encoder.config.hidden_size) + (0 if te2 is None else int(te2.config.hidden_size))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scope(self) -> str:
        """Tolerance scope of this architecture: "tiny" | "full" for SD 1.x, "<arch>-tiny" |
        "<arch>-full" for the others (see ``architecture_scope``)."""
        te2 = self.text_encoder_2
        return architecture_scope(self.text_encoder.config.to_dict(), dict(self.unet.config),
                                  dict(self.vae.config), None if te2 is None else te2.config.to_dict())

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


#: the pad token of each tokenizer family (numerics notes, pitfall 8): SD 1.x and SDXL's first
#: tokenizer pad with EOS (49407), SD 2.x and SDXL's second (OpenCLIP) with "!" (id 0)
PAD_EOS, PAD_ZERO = "<|endoftext|>", "!"


def make_tokenizer(folder: Path, pad_token: str = PAD_EOS):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "pad_token": pad_token})
    )
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------

def _tiny_vae(scaling_factor: float, force_upcast: bool) -> dict:
    """The tiny VAE: four blocks like SD's, so it upsamples 8x as SD's does."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


def _sd_vae(sample_size: int, scaling_factor: float) -> dict:
    """SD's VAE at full size (SD 1.x, 2.x and SDXL share the architecture)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=sample_size, scaling_factor=scaling_factor, force_upcast=True,
    )


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
    if kind == "tiny-sd2":
        # SD 2.x at tiny size. The text tower is configured like OpenCLIP ViT-H's as SD 2 ships
        # it (hidden_act "gelu", not CLIP's quick_gelu; bos/eos/pad ids 0/2/1 as in SD 2's
        # text_encoder/config.json: eos 2 selects transformers' legacy argmax pooling, unused by
        # SD 2, which takes the last hidden state). The UNet as SD 2's: linear proj_in/proj_out,
        # attention upcast to float32, a head count per block (SD 2: 5, 10, 20, 20 heads of 64;
        # here 2 and 4 heads of 16), cross-attention width = the text encoder's hidden size.
        return {
            "text_encoder": dict(
                vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "unet": dict(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=16,
                use_linear_projection=True, upcast_attention=True,
            ),
            "vae": _tiny_vae(0.18215, force_upcast=True),  # SD 2's VAE is SD 1's
            "tokenizer_pad": PAD_ZERO,
            "scheduler": {**PINNED_SCHEDULER, "prediction_type": "v_prediction"},
        }
    if kind == "tiny-sdxl":
        # SDXL at tiny size: text encoder 1 like CLIP ViT-L (quick_gelu), text encoder 2 like
        # OpenCLIP bigG (gelu, with a projection: its pooled text_embeds), both with SDXL's
        # bos/eos/pad ids 0/2/1; the prompt embeddings are both encoders' penultimate hidden
        # states side by side (32 + 64). The UNet as SDXL's: no attention in the first block,
        # more transformer layers deeper (SDXL 1, 2, 10; here 1, 2), linear projections, heads
        # per block, added conditions "text_time" (pooled text_embeds and 6 size ids, each
        # embedded with addition_time_embed_dim sinusoids: 32 + 6 * 8 = 80 inputs).
        return {
            "text_encoder": dict(
                vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "text_encoder_2": dict(
                vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "unet": dict(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=96, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                norm_num_groups=16, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80,
            ),
            "vae": _tiny_vae(0.13025, force_upcast=True),
            "tokenizer_pad": PAD_EOS,
            "tokenizer_2_pad": PAD_ZERO,
            "scheduler": dict(PINNED_SCHEDULER),
        }
    if kind == "sd21-random":
        # SD 2.1 (768x768) as its published configs: the text encoder is OpenCLIP ViT-H's text tower
        # as SD 2 ships it (24 layers, the last dropped: SD 2 takes the penultimate state, so the
        # diffusers config has 23; width 1024, 16 heads, erf gelu, bos/eos/pad 0/2/1); the UNet has
        # SD 1.5's blocks with linear projections, 5/10/20/20 heads of 64, cross-attention over
        # 1024, attention upcast, native latent 96; the VAE is SD 1's; v-prediction.
        return {
            "text_encoder": dict(
                vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=512, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "unet": dict(
                sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True, upcast_attention=True,
            ),
            "vae": _sd_vae(768, 0.18215),
            "tokenizer_pad": PAD_ZERO,
            "scheduler": {**PINNED_SCHEDULER, "prediction_type": "v_prediction"},
        }
    if kind == "sdxl-random":
        # SDXL 1.0 base as its published configs: text encoder 1 CLIP ViT-L (768, 12 layers,
        # quick_gelu), text encoder 2 OpenCLIP bigG (1280, 32 layers, 20 heads, gelu, projection
        # 1280: the pooled text_embeds), both with bos/eos/pad 0/2/1; the UNet with three blocks
        # (320, 640, 1280), none in the first, 2 and 10 transformer layers in the others, 5/10/20
        # heads of 64, cross-attention over 768 + 1280 = 2048, added conditions text_time (1280
        # pooled + 6 size ids x 256 sinusoids = 2816 inputs), native latent 128; the VAE is SD's
        # with factor 0.13025.
        return {
            "text_encoder": dict(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "text_encoder_2": dict(
                vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            ),
            "unet": dict(
                sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=2048, attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            ),
            "vae": _sd_vae(1024, 0.13025),
            "tokenizer_pad": PAD_EOS,
            "tokenizer_2_pad": PAD_ZERO,
            "scheduler": dict(PINNED_SCHEDULER),
        }
    raise ModelError(f"unknown built-in model {kind!r}; choose one of {', '.join(BUILTIN_MODELS)}")


def _largest(v) -> int:
    return max(v) if isinstance(v, (list, tuple)) else int(v)


#: the architectures sdparity knows, each with the built-in tiny model that bounds its "tiny" scope
ARCHITECTURES = {"sd1": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}


def architecture_of(text_encoder: dict, unet: dict, text_encoder_2: dict | None = None) -> str:
    """"sd1", "sd2" or "sdxl" from a model's configs (never its name or folder name):

    * sdxl: the UNet takes SDXL's added conditions (``addition_embed_type == "text_time"``:
      pooled text embeddings and size ids), or there is a second text encoder;
    * sd2:  the UNet's transformers use linear proj_in/proj_out (``use_linear_projection``,
      every SD 2.x UNet) or the text tower is OpenCLIP's (``hidden_act == "gelu"``);
    * sd1:  otherwise (1x1-conv projections, CLIP ViT-L's quick_gelu)."""
    if unet.get("addition_embed_type") == "text_time" or text_encoder_2 is not None:
        return "sdxl"
    if unet.get("use_linear_projection") or text_encoder.get("hidden_act") == "gelu":
        return "sd2"
    return "sd1"


def architecture_dims(text_encoder: dict, unet: dict, vae: dict,
                      text_encoder_2: dict | None = None) -> dict[str, int]:
    """The sizes that set how much float32 rounding error a stage accumulates: width (the length
    of every dot product and normalization), depth (how many layers the error passes through)
    and the UNet's native latent size (attention and GroupNorm reduce over it)."""
    te2 = text_encoder_2 or {"hidden_size": 0, "intermediate_size": 0, "num_hidden_layers": 0}
    return {
        "clip_width": text_encoder["hidden_size"], "clip_mlp": text_encoder["intermediate_size"],
        "clip_layers": text_encoder["num_hidden_layers"],
        "clip2_width": te2["hidden_size"], "clip2_mlp": te2["intermediate_size"],
        "clip2_layers": te2["num_hidden_layers"],
        "unet_width": _largest(unet["block_out_channels"]), "unet_blocks": len(unet["block_out_channels"]),
        "unet_layers": _largest(unet["layers_per_block"]), "unet_cross": _largest(unet["cross_attention_dim"]),
        "unet_transformer_layers": _largest(unet.get("transformer_layers_per_block") or 1),
        "unet_sample": _largest(unet["sample_size"]),
        "vae_width": _largest(vae["block_out_channels"]), "vae_blocks": len(vae["block_out_channels"]),
        "vae_layers": _largest(vae["layers_per_block"]),
    }


def architecture_scope(text_encoder: dict, unet: dict, vae: dict, text_encoder_2: dict | None = None) -> str:
    """"tiny" when no size exceeds the built-in tiny model's, else "full"; for SD 2.x and SDXL
    the architecture is part of the scope ("sd2-tiny", "sdxl-full", ...), measured against that
    architecture's own tiny model.

    The "tiny" tolerances were measured on the built-in tiny model; error grows with width and
    depth, so anything larger in any of these sizes is judged with the "full" tolerances
    (measured on SD 1.5's sizes, and never tighter). The name of the model plays no part: a
    copy of tiny in a folder is tiny, a folder holding SD 1.5 is full. The architecture is in
    the scope because its budgets were calibrated on it: the calibration file's groups are keyed
    (stage, output, backend, scope), and SD 1.x keeps its "tiny"/"full" keys unchanged."""
    arch = architecture_of(text_encoder, unet, text_encoder_2)
    ref = _configs(ARCHITECTURES[arch])
    limit = architecture_dims(ref["text_encoder"], ref["unet"], ref["vae"], ref.get("text_encoder_2"))
    dims = architecture_dims(text_encoder, unet, vae, text_encoder_2)
    size = "tiny" if all(dims[k] <= limit[k] for k in limit) else "full"
    return size if arch == "sd1" else f"{arch}-{size}"


#: each component's seed offset: a component made alone gets the weights it gets beside the others
COMPONENT_SEEDS = {"text_encoder": 0, "unet": 1, "vae": 2, "text_encoder_2": 3}


def _component(cfg: dict, name: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name == "unet":
        return UNet2DConditionModel(**cfg["unet"])
    if name == "vae":
        return AutoencoderKL(**cfg["vae"])
    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    return cls(CLIPTextConfig(**cfg[name]))


def random_components(kind: str, seed: int = 0, parts=None) -> dict:
    """The seeded random text encoder(s), UNet and VAE of a built-in model (eval mode); ``parts``:
    only these (each component has its own seed, ``COMPONENT_SEEDS``: the same weights alone).

    The GPU machine recreates the weights with this (sdparity.gpu.cuda, sdparity.gpu.web)
    instead of carrying gigabytes; a fingerprint of the bytes tells whether they came out the
    same there."""
    import torch

    cfg = _configs(kind)
    out = {}
    for name, offset in COMPONENT_SEEDS.items():
        if name in cfg and (parts is None or name in parts):
            torch.manual_seed(seed + offset)
            out[name] = _component(cfg, name).eval()
    return out


def seeded_model(kind: str, parts=(), seed: int = 0) -> LoadedModel:
    """A built-in model made in memory and never saved: the components named in ``parts`` with
    their seeded weights (exactly ``random_components``'), the others built on torch's meta device
    (configs and shapes, no memory), with the model's tokenizer(s) and scheduler.

    For the GPU tiers' prepare step: a build depends on shapes only and the device recreates the
    weights itself (a fingerprint compares them), so a model need not be saved and loaded back
    here. sdxl-random through ``load_model`` would hold its 13.9 GB of float32 weights (10.3 GB of
    them the UNet) at once on a 24 GB machine; made this way a stage holds only its component's."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    cfg = _configs(kind)
    comps = random_components(kind, seed, parts)
    with torch.device("meta"):
        for name in COMPONENT_SEEDS:
            if name in cfg and name not in comps:
                comps[name] = _component(cfg, name).eval()
    with tempfile.TemporaryDirectory() as tmp:
        comps["tokenizer"] = make_tokenizer(Path(tmp) / "1", cfg.get("tokenizer_pad", PAD_EOS))
        if "tokenizer_2_pad" in cfg:
            comps["tokenizer_2"] = make_tokenizer(Path(tmp) / "2", cfg["tokenizer_2_pad"])
    comps["scheduler"] = DPMSolverMultistepScheduler(**cfg.get("scheduler", PINNED_SCHEDULER))
    key = json.dumps([kind, FACTORY_VERSION, seed, {k: v for k, v in cfg.items()}], sort_keys=True, default=str)
    digest = "seeded-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    from types import SimpleNamespace

    return LoadedModel(name=kind, path=None, digest=digest, pipe=SimpleNamespace(**comps))


def create_random_model(kind: str, folder: Path, seed: int = 0) -> None:
    """Create a seeded random pipeline of the kind's architecture and save_pretrained it."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cfg = _configs(kind)
    parts = random_components(kind, seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp) / "1", cfg.get("tokenizer_pad", PAD_EOS))
        tokenizer_2 = (make_tokenizer(Path(tmp) / "2", cfg["tokenizer_2_pad"])
                       if "tokenizer_2_pad" in cfg else None)
    scheduler = DPMSolverMultistepScheduler(**cfg.get("scheduler", PINNED_SCHEDULER))
    if "text_encoder_2" in parts:
        pipe = StableDiffusionXLPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=parts["unet"], scheduler=scheduler,
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer, unet=parts["unet"],
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # transformers 5 writes tokenizer.json; SD checkpoints also carry the slow files.
    write_clip_tokenizer(folder / "tokenizer")
    if tokenizer_2 is not None:
        write_clip_tokenizer(folder / "tokenizer_2")


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
    subs = ["text_encoder", "unet", "vae"]
    if (path / "text_encoder_2").is_dir() or (path / "tokenizer_2").is_dir():  # SDXL's second encoder
        subs.append("text_encoder_2")
        missing = [p for p in ("text_encoder_2/config.json",) if not (path / p).is_file()]
        tok2 = path / "tokenizer_2"
        if not (tok2 / "tokenizer.json").is_file() and not (
            (tok2 / "vocab.json").is_file() and (tok2 / "merges.txt").is_file()
        ):
            missing.append("tokenizer_2/tokenizer.json (or tokenizer_2/vocab.json + merges.txt)")
        if missing:
            raise ModelError(f"model folder {path} has a second text encoder but is missing {', '.join(missing)}")
    for sub in subs:
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


def folder_architecture(path: Path) -> str:
    """The architecture of a (validated) model folder, read from its config files."""
    def cfg(sub):
        f = path / sub / "config.json"
        return json.loads(f.read_text()) if f.is_file() else None

    return architecture_of(cfg("text_encoder"), cfg("unet"), cfg("text_encoder_2"))


def load_model(spec: str | os.PathLike, log=print, allow_pickle: bool = False) -> LoadedModel:
    """Load a built-in model or a local folder through the real diffusers pipeline of its
    architecture (read from its configs): StableDiffusionPipeline.from_pretrained for SD 1.x and
    2.x, StableDiffusionXLPipeline.from_pretrained for SDXL. Weights are read from safetensors
    only, unless ``allow_pickle`` (a folder is untrusted input)."""
    spec_s = str(spec)
    if spec_s in BUILTIN_MODELS:
        path = ensure_builtin(spec_s, log=log)
        name = spec_s
    else:
        path = Path(spec_s).expanduser().resolve()
        name = str(path)
    validate_folder(path, allow_pickle)
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    common = dict(local_files_only=True, dtype=torch.float32,
                  use_safetensors=None if allow_pickle else True)  # None: safetensors first, else pickle
    try:
        if folder_architecture(path) == "sdxl":
            pipe = StableDiffusionXLPipeline.from_pretrained(str(path), add_watermarker=False, **common)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path), safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common)
    except Exception as e:  # diffusers raises many kinds; the user needs one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not load model folder {path}: {msg}") from None
    for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet, pipe.vae):
        if m is not None:
            m.eval()
    return LoadedModel(name=name, path=path, digest=folder_digest(path), pipe=pipe)
