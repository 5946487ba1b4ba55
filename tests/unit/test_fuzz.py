"""Hypothesis fuzzing of shapes and values on the native backend.

Stages built once with symbolic dimensions (image_to_rgba, concat_embeddings) are built one
time and called on every generated shape; model stages are fixed-shape builds, so they get
a few latent sizes (each is a cached build)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import strategies as S
from sdparity.compare import compare
from sdparity.registry import get_stage
from sdparity.stages.image_to_rgba import pack_reference
from sdparity.tolerances import lookup


@pytest.fixture(scope="module")
def built(llvm, cache, tiny):
    """stage name -> (runner, artifact) for the symbolic-shape stages."""
    out = {}
    with llvm.session() as runner:
        for name in ("image_to_rgba", "concat_embeddings"):
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


@settings(max_examples=2)
@given(latent=S.latent_sizes_tiny)
def test_vae_latent_sizes(latent, llvm, run_check):
    results = run_check(get_stage("vae"), llvm, variant={"latent": list(latent), "batch": 1})
    assert results and all(r["verdict"] == "pass" for r in results), [r["message"] for r in results]
    assert results[0]["metrics"]["shape"][1:3] == [8 * latent[0], 8 * latent[1]]


@settings(max_examples=2)
@given(latent=S.latent_sizes_tiny, batch=st.integers(1, 2))
def test_unet_latent_sizes_and_batch(latent, batch, llvm, run_check):
    results = run_check(get_stage("unet"), llvm, variant={"latent": list(latent), "batch": batch})
    assert results and all(r["verdict"] == "pass" for r in results), [r["message"] for r in results]
    assert results[0]["metrics"]["shape"] == [batch, 4, *latent]


@given(x=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64))
def test_compare_is_symmetric_in_max_abs(x):
    a = np.array(x, np.float32)
    b = a[::-1].copy()
    tol = lookup("unet", "noise_pred", "llvm", "tiny")
    assert compare(a, b, tol).max_abs == compare(b, a, tol).max_abs
