"""Hypothesis fuzzing of shapes, values and prompts on the native backend.

image_to_rgba and concat_embeddings are built once with symbolic dimensions and called on
every generated shape. The UNet and VAE are fuzzed over latent sizes 1..24 per side (odd,
even, non-square) and batch 1..2 through the checks' own runner, on symbolic-shape builds
(variant "symbolic": one VAE build, one UNet build per batch and side parity; sides 1-2 of the
UNet get fixed-shape builds). A failure shrinks to the smallest failing shape; the message names
it and every failing check's metrics. CLIP is fuzzed over prompts against diffusers' own prompt
encoding. Examples: tests/strategies.py (profiles "ci" and "dev")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests import strategies as S
from sdparity.compare import compare
from sdparity.registry import get_stage
from sdparity.stages.clip import tokenize
from sdparity.stages.image_to_rgba import pack_reference
from sdparity.tolerances import lookup

BOS, EOS = 49406, 49407  # SD 1.x CLIP tokenizer: start, end (also the padding)


@pytest.fixture(scope="module")
def built(llvm, cache, tiny):
    """stage name -> (runner, artifact) for the symbolic-shape stages and CLIP."""
    out = {}
    with llvm.session() as runner:
        for name in ("image_to_rgba", "concat_embeddings", "clip"):
            stage = get_stage(name)
            art, _, _ = llvm.build_cached(lambda s=stage: s.build_ir(tiny, {}), stage.build_key(tiny, {}), cache,
                                          log=lambda *a: None)
            out[name] = (runner, art)
        yield out


@given(hw=S.image_hw, data=st.data())
def test_image_to_rgba_any_shape_and_value(built, hw, data):
    img = data.draw(S.pixel_images((1, *hw, 3)))
    runner, art = built["image_to_rgba"]
    (out,) = runner.run(art, "image_to_rgba", [img])
    assert out.dtype == np.uint32 and out.shape == hw
    np.testing.assert_array_equal(out, pack_reference(img))


def test_image_to_rgba_defined_edge_semantics(built):
    """The packer's definition, written out: ties to even, clamp, NaN -> 0, +-Inf clamp."""
    vals = np.array([0.5, 1.5, 2.5, 254.5, 255.5, -0.5, -7.0, 300.0, np.nan, np.inf, -np.inf, 1e30],
                    np.float32)
    expect = np.array([0, 2, 2, 254, 255, 0, 0, 255, 0, 255, 0, 255], np.uint32)
    img = np.stack([vals, np.zeros_like(vals), np.full_like(vals, 255.0)], -1)[None, None]
    runner, art = built["image_to_rgba"]
    (out,) = runner.run(art, "image_to_rgba", [img])
    assert (out[0] & 0xFF).tolist() == expect.tolist()
    assert ((out[0] >> 8) & 0xFF).tolist() == [0] * len(vals)
    assert ((out[0] >> 16) & 0xFF).tolist() == [255] * len(vals)
    assert (out[0] >> 24).tolist() == [255] * len(vals)


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 77), st.integers(1, 64)), seed=st.integers(0, 2**31))
def test_concat_any_shape(built, shape, seed):
    rng = np.random.default_rng(seed)
    neg, pos = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    runner, art = built["concat_embeddings"]
    (out,) = runner.run(art, "concat_embeddings", [neg, pos])
    np.testing.assert_array_equal(out, np.concatenate([neg, pos], 0))


def _problems(stage_name, shape, results, kind) -> str:
    """The checks whose failure is of this ``kind`` ("error"; "abs": outside atol/rtol or
    non-finite; "floor": only err/floor over its budget), with their metrics; '' if none."""
    def kind_of(r):
        if r["verdict"] == "error":
            return "error"
        if r["verdict"] == "fail":
            return "floor" if r["metrics"]["failed_bound"] == "floor" else "abs"
        return None  # pass, or known (an upstream issue in sdparity.known_issues)

    bad = [r for r in results if kind_of(r) == kind]
    if not bad:
        return ""
    b, h, w = shape
    lines = [f"{stage_name} at latents batch={b} h={h} w={w}: {len(bad)} of {len(results)} checks fail ({kind})"]
    for r in bad:
        m, tol = r["metrics"] or {}, r["tolerance"] or {}
        lines.append(f"  {r['case']} {r['output']}: {r['verdict']} max_abs={m.get('max_abs')} "
                     f"err/floor={m.get('floor_ratio')} (budget {m.get('floor_budget')}) floor={m.get('noise_floor')} "
                     f"n={m.get('n')} atol={tol.get('atol')} rtol={tol.get('rtol')}: {r['message']}")
    return "\n".join(lines)


def _outputs(results):
    """The stage's own output records (not its own-kernel checks: sdparity.check.own_kernels)."""
    return [r for r in results if not r.get("own_kernel")]


def _check_shape(stage_name, shape, results) -> None:
    """One assert per kind of failure: Hypothesis shrinks each (a distinct error) on its own, so
    one bug's minimal shape is not reported with another's message."""
    assert results, f"{stage_name} at {shape}: no results"
    assert not _problems(stage_name, shape, results, "error"), _problems(stage_name, shape, results, "error")
    assert not _problems(stage_name, shape, results, "abs"), _problems(stage_name, shape, results, "abs")
    assert not _problems(stage_name, shape, results, "floor"), _problems(stage_name, shape, results, "floor")


@settings(max_examples=S.VAE_EXAMPLES)
@given(shape=S.model_latents)
def test_vae_any_latent_shape(shape, llvm, run_check):
    b, h, w = shape
    results = run_check(get_stage("vae"), llvm, variant={"latent": [h, w], "batch": b, "symbolic": True})
    _check_shape("vae", shape, results)  # own-kernel records (fixed-shape builds) included
    assert all(r["metrics"]["shape"] == [b, 8 * h, 8 * w, 3] for r in _outputs(results))


def _latent_variant(shape) -> dict:
    b, h, w = shape
    return {"latent": [h, w], "batch": b, "symbolic": True}


@settings(max_examples=S.UNET_EXAMPLES)
@given(shape=S.model_latents, data=st.data())
def test_unet_any_latent_shape(shape, data, tiny, llvm, run_check):
    """Each example is one UNet build (its shape class, sdparity/stages/unet.py) and, when that
    build is symbolic, up to S.UNET_MORE_SHAPES more shapes of the class: a build costs ~50 s of
    CPU, a shape ~2 s, so the examples spend their time on shapes (ci, derandomized: the
    side-1 fixed build, and batch 2 with odd heights and even widths at three shapes, two of
    them with the known odd-side resize issue)."""
    stage = get_stage("unet")
    build = stage.build_variant(tiny, _latent_variant(shape))
    event(f"build {build}")  # --hypothesis-show-statistics
    shapes = [shape]
    if build.get("symbolic"):
        b, h, w = shape
        hs = [n for n in range(1, 25) if stage.build_variant(tiny, _latent_variant((b, n, w))) == build]
        ws = [n for n in range(1, 25) if stage.build_variant(tiny, _latent_variant((b, h, n))) == build]
        more = data.draw(st.lists(st.tuples(st.sampled_from(hs), st.sampled_from(ws)), max_size=S.UNET_MORE_SHAPES,
                                  unique=True), label="more (h, w) of this build")
        shapes += [(b, mh, mw) for mh, mw in more if (mh, mw) != (h, w)]
    for b, h, w in shapes:
        results = run_check(stage, llvm, variant=_latent_variant((b, h, w)))
        _check_shape("unet", (b, h, w), results)  # own-kernel records (fixed-shape builds) included
        assert all(r["metrics"]["shape"] == [b, 4, h, w] for r in _outputs(results))
        # the only known issue at these shapes, only at odd sides >= 5 (ceil(h/2) -> h resizes differ)
        assert all(r["known_issue"] == "tvm_nearest_resize_half_pixel" and any(n % 2 and n >= 5 for n in (h, w))
                   for r in results if r["verdict"] == "known")
    assert all(stage.build_variant(tiny, _latent_variant(s)) == build for s in shapes)  # one build served them


def test_unet_odd_latent_side_is_the_known_nearest_issue(llvm, run_check):
    """The plain fixed-shape build (what `sdparity check --latent 7x9` runs) at odd sides: TVM's
    nearest resize to sizes 7 and 9 reads other rows than torch's. Fails once TVM fixes it. (The
    shape of test_known_issues.py's CLI check: the two share the build and its proof's.)"""
    results = run_check(get_stage("unet"), llvm, variant={"latent": S.ODD_LATENT, "batch": 1})
    own = [r for r in results if r.get("own_kernel")]
    assert own and {r["verdict"] for r in own} == {"pass"}  # its attention kernels are fine
    assert len(_outputs(results)) == 4
    for r in _outputs(results):
        assert (r["verdict"], r["known_was"], r["known_issue"]) == ("known", "fail", "tvm_nearest_resize_half_pixel")
        assert r["metrics"]["max_abs"] > 0.1, r["metrics"]  # whole rows wrong, not rounding noise


def test_symbolic_build_without_the_upsample_patch_is_the_known_import_issue(llvm, run_check):
    """The unpatched symbolic build (TVM's own upsample conversion) is still reported."""
    results = run_check(get_stage("vae"), llvm,
                        variant={"latent": [3, 5], "batch": 1, "symbolic": True, "patch_upsample": False})
    assert [(r["verdict"], r["known_was"], r["known_issue"]) for r in results] == \
        [("known", "error", "tvm_symbolic_upsample")]
    assert "has no attribute 'value'" in results[0]["message"]


@given(prompt=S.prompts)
def test_clip_any_prompt(built, tiny, prompt):
    """The CLIP stage's tokenize and its TVM build against diffusers' own prompt encoding
    (StableDiffusionPipeline.encode_prompt) for any text: empty, unicode, over-long."""
    import torch

    ids = tokenize(tiny.tokenizer, prompt)
    row = ids[0].tolist()
    assert ids.shape == (1, 77) and ids.dtype == np.int32 and row[0] == BOS and EOS in row
    end = row.index(EOS)
    assert all(t == EOS for t in row[end:]), f"{prompt!r}: SD1 pads with EOS after the text: {row}"
    runner, art = built["clip"]
    (out,) = runner.run(art, "clip", [ids])
    with torch.no_grad():
        ref = tiny.pipe.encode_prompt(prompt, "cpu", 1, False)[0][0].numpy()
    ref64 = get_stage("clip").reference(tiny)([ids], "float64")[0][0]
    m = compare(out[0], ref, lookup("clip", "hidden", "llvm", tiny.scope), ref64)
    assert m.passed, f"prompt {prompt!r} ({end - 1} text tokens): max_abs={m.max_abs:.3g} " \
                     f"err/floor={m.floor_ratio}: {m.why}"


@given(x=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64))
def test_compare_is_symmetric_in_max_abs(x):
    a = np.array(x, np.float32)
    b = a[::-1].copy()
    tol = lookup("unet", "noise_pred", "llvm", "tiny")
    assert compare(a, b, tol).max_abs == compare(b, a, tol).max_abs
