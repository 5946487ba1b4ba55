"""The full-size built-in models of the SD family (issue 25): sd21-random (SD 2.1's architecture) and
sdxl-random (SDXL 1.0 base's), checked from their configs alone. Nothing here allocates their
weights (5.2 GB and 13.9 GB in float32): the modules are made on torch's meta device, and
tests/conftest.py fails a session that creates a full-size model folder."""

from __future__ import annotations

import numpy as np
import pytest

from reference.models import (
    BUILTIN_MODELS, FULL_SIZE_MODELS, _configs, architecture_of, architecture_scope, random_components,
    seeded_model,
)

#: published parameter counts of the real checkpoints' modules (stabilityai/stable-diffusion-2-1,
#: stabilityai/stable-diffusion-xl-base-1.0, runwayml/stable-diffusion-v1-5)
PUBLISHED = {
    "sd15-random": {"text_encoder": 123_060_480, "unet": 859_520_964, "vae": 83_653_863},
    "sd21-random": {"text_encoder": 340_387_840, "unet": 865_910_724, "vae": 83_653_863},
    "sdxl-random": {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "unet": 2_567_463_684,
                    "vae": 83_653_863},
}


def _meta_parts(kind):
    import torch

    from reference.models import COMPONENT_SEEDS, _component

    cfg = _configs(kind)
    with torch.device("meta"):
        return {name: _component(cfg, name) for name in COMPONENT_SEEDS if name in cfg}


def _scope_and_arch(parts):
    te2 = parts.get("text_encoder_2")
    c2 = None if te2 is None else te2.config.to_dict()
    te, unet, vae = parts["text_encoder"].config.to_dict(), dict(parts["unet"].config), dict(parts["vae"].config)
    return architecture_scope(te, unet, vae, c2), architecture_of(te, unet, c2)


def test_full_size_models_are_built_in_and_guarded():
    assert set(FULL_SIZE_MODELS) == {"sd15-random", "sd21-random", "sdxl-random"} <= set(BUILTIN_MODELS)


@pytest.mark.parametrize("kind", sorted(PUBLISHED))
def test_parameter_counts_are_the_published_ones(kind):
    parts = _meta_parts(kind)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
    assert counts == PUBLISHED[kind]
    assert all(p.is_meta for m in parts.values() for p in m.parameters())


@pytest.mark.parametrize("kind,scope,arch", [("sd15-random", "full", "sd1"), ("sd21-random", "sd2-full", "sd2"),
                                             ("sdxl-random", "sdxl-full", "sdxl")])
def test_architecture_and_scope_from_the_configs(kind, scope, arch):
    assert _scope_and_arch(_meta_parts(kind)) == (scope, arch)


def test_sd21_is_sd21s_architecture():
    p = _meta_parts("sd21-random")
    u, te, vae = p["unet"].config, p["text_encoder"].config, p["vae"].config
    assert (te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.hidden_act) == (1024, 23, 16, "gelu")
    assert (te.bos_token_id, te.eos_token_id, te.pad_token_id) == (0, 2, 1)
    assert u.use_linear_projection and u.upcast_attention and tuple(u.attention_head_dim) == (5, 10, 20, 20)
    assert u.cross_attention_dim == te.hidden_size == 1024 and u.sample_size == 96
    assert tuple(u.block_out_channels) == (320, 640, 1280, 1280)
    assert type(p["unet"].down_blocks[0].attentions[0].proj_in).__name__ == "Linear"
    assert vae.scaling_factor == pytest.approx(0.18215) and vae.sample_size == 768
    cfg = _configs("sd21-random")
    assert cfg["scheduler"]["prediction_type"] == "v_prediction" and cfg["tokenizer_pad"] == "!"


def test_sdxl_is_sdxl_bases_architecture():
    p = _meta_parts("sdxl-random")
    u, te, te2, vae = p["unet"].config, p["text_encoder"].config, p["text_encoder_2"].config, p["vae"].config
    assert (te.hidden_size, te.num_hidden_layers, te.hidden_act) == (768, 12, "quick_gelu")
    assert (te2.hidden_size, te2.num_hidden_layers, te2.num_attention_heads, te2.hidden_act,
            te2.projection_dim) == (1280, 32, 20, "gelu", 1280)
    assert type(p["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert tuple(u.block_out_channels) == (320, 640, 1280) and tuple(u.transformer_layers_per_block) == (1, 2, 10)
    assert tuple(u.attention_head_dim) == (5, 10, 20) and u.use_linear_projection and not u.upcast_attention
    assert u.cross_attention_dim == te.hidden_size + te2.hidden_size == 2048
    assert u.addition_embed_type == "text_time" and u.addition_time_embed_dim == 256
    assert u.projection_class_embeddings_input_dim == te2.projection_dim + 6 * u.addition_time_embed_dim == 2816
    assert u.sample_size == 128 and not hasattr(p["unet"].down_blocks[0], "attentions")  # no attention in block 1
    assert [len(b.attentions[0].transformer_blocks) for b in p["unet"].down_blocks[1:]] == [2, 10]
    assert vae.scaling_factor == pytest.approx(0.13025) and vae.force_upcast and vae.sample_size == 1024
    cfg = _configs("sdxl-random")
    assert (cfg["tokenizer_pad"], cfg["tokenizer_2_pad"]) == ("<|endoftext|>", "!")


def test_seeded_model_of_sdxl_random_holds_no_weights_it_was_not_asked_for():
    """What the CUDA tier's prepare builds from (reference.models.seeded_model): a full-size model
    whose components are all on the meta device costs no memory and knows its scope."""
    m = seeded_model("sdxl-random")
    assert m.path is None and m.architecture == "sdxl" and m.scope == "sdxl-full"
    assert m.hidden_size == 2048 and m.default_latent_hw == (128, 128) and m.vae_scale_factor == 8
    assert all(p.is_meta for part in (m.text_encoder, m.text_encoder_2, m.unet, m.vae) for p in part.parameters())
    assert m.tokenizer("a cat", padding="max_length", max_length=77).input_ids[-1] == 49407
    assert m.tokenizer_2("a cat", padding="max_length", max_length=77).input_ids[-1] == 0
    assert m.digest == seeded_model("sdxl-random").digest != seeded_model("sdxl-random", seed=1).digest


def test_seeded_model_has_random_components_weights_and_the_import_shares_them():
    """A component made alone has the weights it has beside the others (the device makes them
    with random_components), and the Relax import keeps views of them, read-only, not copies."""
    import torch

    from sdparity.registry import get_stage

    full = random_components("tiny-sdxl")
    m = seeded_model("tiny-sdxl", parts=("unet",))
    want = full["unet"].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in m.unet.state_dict().items())
    assert all(p.is_meta for p in m.vae.parameters()) and m.scope == "sdxl-tiny"
    st = get_stage("unet")
    ir = st.build_ir(m, st.default_variant(m))
    params = [p.detach().numpy() for p in m.unet.parameters()]
    ws = ir.params["unet"]
    assert ws and all(any(np.shares_memory(w, p) for p in params) for w in ws)
    assert not any(w.flags.writeable for w in ws)


def test_unet_stage_wraps_a_bare_sdxl_unet_with_its_added_conditions():
    """The GPU device half has the seeded parts, not a pipeline: wrap() picks the wrapper by the
    UNet's own config, as wrapper() does by the model's architecture."""
    from sdparity.registry import get_stage

    st = get_stage("unet")
    xl, sd2 = _meta_parts("sdxl-random")["unet"], _meta_parts("sd21-random")["unet"]
    assert type(st.wrap(xl, None)).__name__ == "UNetXLWithCFG"
    assert type(st.wrap(sd2, None)).__name__ == "UNetWithCFG"
