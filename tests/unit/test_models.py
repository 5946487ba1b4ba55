"""Models load through the real from_pretrained path; bad folders give one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reference.models import ModelError, builtin_model_path, load_model


def test_tokenizer_matches_known_sd1_ids(tiny):
    # External test vectors of the SD 1.x CLIP tokenizer (docs/numerics.md, pitfall 8).
    tok = tiny.tokenizer
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tok("an astronaut riding a horse on mars", padding="max_length", max_length=77).input_ids
    assert ids[:9] == [49406, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
    assert ids[9:] == [49407] * 68  # SD1.x pads with EOS


def test_truncation_keeps_eos(tiny):
    ids = tiny.tokenizer("word " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_tiny_is_sd_architecture(tiny):
    assert tiny.vae_scale_factor == 8
    assert tiny.vae.config.scaling_factor == pytest.approx(0.18215)
    assert tiny.unet.config.cross_attention_dim == tiny.hidden_size
    sc = tiny.pipe.scheduler.config
    assert (sc.algorithm_type, sc.solver_order, sc.final_sigmas_type) == ("dpmsolver++", 2, "zero")


def test_local_folder_loads_like_builtin(tiny, tmp_path):
    folder = tmp_path / "my-sd"
    shutil.copytree(builtin_model_path("tiny"), folder)
    m = load_model(folder, log=lambda *a: None)
    assert m.digest == tiny.digest and m.name == str(folder.resolve())


@pytest.mark.parametrize("breakage,needle", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("no_unet_config", "unet/config.json"),
    ("bad_json", "not valid JSON"),
    ("no_weights", "has no weights"),
    ("no_tokenizer", "tokenizer"),
])
def test_malformed_folder_errors(tiny, tmp_path, breakage, needle):
    folder = tmp_path / "m"
    if breakage == "file":
        folder.write_text("x")
    elif breakage != "missing":
        shutil.copytree(builtin_model_path("tiny"), folder)
        if breakage == "no_unet_config":
            (folder / "unet" / "config.json").unlink()
        elif breakage == "bad_json":
            (folder / "vae" / "config.json").write_text("{not json")
        elif breakage == "no_weights":
            for f in (folder / "unet").glob("*.safetensors"):
                f.unlink()
        elif breakage == "no_tokenizer":
            shutil.rmtree(folder / "tokenizer")
    with pytest.raises(ModelError, match=needle) as e:
        load_model(folder, log=lambda *a: None)
    assert "\n" not in str(e.value)


def test_corrupt_weights_give_one_line_error(tiny, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(builtin_model_path("tiny"), folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelError, match="could not load") as e:
        load_model(folder, log=lambda *a: None)
    assert "\n" not in str(e.value)
    json.loads((folder / "model_index.json").read_text())  # untouched


# ---- tolerance scope from the architecture (issue 10 item 5) -----------------------------------

def test_tiny_copy_loaded_by_path_has_tiny_scope(tiny, tmp_path):
    folder = tmp_path / "not-called-tiny"
    shutil.copytree(builtin_model_path("tiny"), folder)
    m = load_model(folder, log=lambda *a: None)
    assert m.name != "tiny" and m.scope == "tiny" and tiny.scope == "tiny"


def _configs_of(te, unet, vae) -> tuple[dict, dict, dict]:
    return te.config.to_dict(), dict(unet.config), dict(vae.config)


def test_sd15_architecture_has_full_scope():
    """SD 1.5's real, complete configs (modules made on the meta device: no weights allocated)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from reference.models import _configs, architecture_scope

    cfg = _configs("sd15-random")
    with torch.device("meta"):
        parts = (CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])), UNet2DConditionModel(**cfg["unet"]),
                 AutoencoderKL(**cfg["vae"]))
    assert architecture_scope(*_configs_of(*parts)) == "full"


@pytest.mark.parametrize("part,key,value", [
    ("te", "hidden_size", 64), ("te", "num_hidden_layers", 3), ("te", "intermediate_size", 128),
    ("unet", "block_out_channels", [32, 128]), ("unet", "block_out_channels", [32, 64, 64]),
    ("unet", "layers_per_block", 2), ("unet", "cross_attention_dim", 64), ("unet", "sample_size", 32),
    ("vae", "block_out_channels", [16, 16, 32, 64]), ("vae", "layers_per_block", 2),
])
def test_any_size_beyond_tiny_is_full(tiny, part, key, value):
    from reference.models import architecture_scope

    te, unet, vae = _configs_of(tiny.text_encoder, tiny.unet, tiny.vae)
    assert architecture_scope(te, unet, vae) == "tiny"
    {"te": te, "unet": unet, "vae": vae}[part][key] = value
    assert architecture_scope(te, unet, vae) == "full"


# ---- a model folder is untrusted input: safetensors only, pickle on request (issue 10 item 7) ----

def _pickle_unet(folder):
    """The unet's weights as a pickle (.bin) instead of safetensors, same tensors."""
    import torch
    from safetensors.torch import load_file

    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(st), folder / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()


def test_pickle_weights_are_refused_before_loading(tiny, tmp_path):
    import time

    folder = tmp_path / "m"
    shutil.copytree(builtin_model_path("tiny"), folder)
    _pickle_unet(folder)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"unet/ has only pickle weights \(diffusion_pytorch_model.bin\).*"
                       "--allow-pickle") as e:
        load_model(folder, log=lambda *a: None)
    assert time.perf_counter() - t0 < 1.0 and "\n" not in str(e.value)


def test_allow_pickle_loads_the_same_weights(tiny, tmp_path):
    import torch

    folder = tmp_path / "m"
    shutil.copytree(builtin_model_path("tiny"), folder)
    _pickle_unet(folder)
    m = load_model(folder, log=lambda *a: None, allow_pickle=True)
    ref = tiny.unet.state_dict()
    got = m.unet.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


class _Trap:
    """Unpickling this creates a file: the proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_beside_safetensors_is_never_opened(tiny, tmp_path):
    import pickle

    folder = tmp_path / "m"
    shutil.copytree(builtin_model_path("tiny"), folder)
    marker = tmp_path / "pickle-was-executed"
    for sub, name in (("unet", "diffusion_pytorch_model.bin"), ("text_encoder", "pytorch_model.bin"),
                      ("vae", "diffusion_pytorch_model.bin")):
        (folder / sub / name).write_bytes(pickle.dumps(_Trap(marker)))
    pickle.loads((folder / "unet" / "diffusion_pytorch_model.bin").read_bytes())  # the trap works
    assert marker.exists()
    marker.unlink()
    m = load_model(folder, log=lambda *a: None)
    assert not marker.exists() and m.scope == "tiny"
