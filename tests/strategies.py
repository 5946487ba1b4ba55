"""Hypothesis strategies for every fuzzed input, in one module.

Profiles: "ci" (derandomized, few examples: the default) and "dev" (many examples).
Select with HYPOTHESIS_PROFILE=dev.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sdparity.stages.image_to_rgba import EDGE_PIXELS  # the packer's defined edge cases

settings.register_profile(
    "ci", max_examples=8, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- shapes for stages built once with symbolic dimensions --------------------------------
image_hw = st.tuples(st.integers(1, 96), st.integers(1, 96))  # image_to_rgba H, W
latent_nchw = st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 24), st.integers(1, 24))

# -- scheduler step counts and indices ---------------------------------------------------
step_counts = st.integers(1, 100)


@st.composite
def step_and_index(draw, max_steps: int = 100):
    n = draw(st.integers(1, max_steps))
    return n, draw(st.integers(0, n - 1))


# -- latent sizes for model stages (fixed-shape builds: keep few) ---------------------------
latent_sizes_tiny = st.sampled_from([(8, 8), (16, 8), (16, 16), (8, 24)])

# -- values -----------------------------------------------------------------------------
@st.composite
def pixel_images(draw, shape):
    """float32 images in 0..255 with edge values (ties, out of range, NaN, +-Inf) mixed in."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    img = rng.uniform(-20, 275, size=shape).astype(np.float32)
    n_edge = draw(st.integers(0, img.size))
    idx = rng.choice(img.size, size=n_edge, replace=False)
    img.reshape(-1)[idx] = rng.choice(EDGE_PIXELS, size=n_edge)
    return img
