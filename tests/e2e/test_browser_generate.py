"""End-to-end: the web app generates an image in Chromium (WebGPU), driven like a person
would (fill the form, click Generate), with initial latents injected through the test hook.
Compared with diffusers.StableDiffusionPipeline on the same weights and latents: text
embeddings, latents after every step, and the final pixels."""

from __future__ import annotations

import numpy as np
import pytest

from reference.pipeline import diffusers_generate, initial_latents
from tests.e2e.apphelpers import GUIDANCE, LATENT, NEGATIVE, PROMPT, STEPS, open_app, run_generation
from sdparity.compare import compare, first_divergence
from sdparity.tolerances import lookup

@pytest.fixture(scope="module")
def reference(tiny):
    lat = initial_latents(tiny, LATENT, seed=0)
    return lat, diffusers_generate(tiny, PROMPT, NEGATIVE, STEPS, GUIDANCE, lat)


def _as_arrays(res, ref):
    shape = ref["latents"][0].shape
    lat = [np.array(x, np.float32).reshape(shape) for x in res["trace"]["latents"]]
    pos = np.array(res["trace"]["positive"], np.float32).reshape(ref["positive"].shape)
    neg = np.array(res["trace"]["negative"], np.float32).reshape(ref["negative"].shape)
    h, w = ref["image_u8"].shape[:2]
    rgba = np.array(res["rgba"], np.uint8).reshape(h, w, 4)
    return pos, neg, lat, rgba


def test_generation_matches_diffusers(page, app, reference, artifacts, tiny):
    from sdparity.reports.images import diff_heatmap, write_png

    lat0, ref = reference
    page, problems = open_app(page, app)
    res = run_generation(page, lat0)
    page.screenshot(path=str(artifacts / "app_after_generation.png"), full_page=True)
    assert not res["errors"] and not problems, res["errors"] + problems
    pos, neg, lat, rgba = _as_arrays(res, ref)
    write_png(artifacts / "browser.png", rgba[..., :3])
    write_png(artifacts / "diffusers.png", ref["image_u8"])
    write_png(artifacts / "difference.png", diff_heatmap(rgba[..., :3], ref["image_u8"]))

    steps = [compare(a, b, lookup("pipeline", "latents", "webgpu", "tiny")) for a, b in zip(lat, ref["latents"])]
    write_e2e_html(artifacts / "index.html", steps, res)

    emb_tol = lookup("pipeline", "embeddings", "webgpu", "tiny")
    assert compare(pos, ref["positive"], emb_tol).passed
    assert compare(neg, ref["negative"], emb_tol).passed
    assert len(lat) == STEPS and res["trace"]["timesteps"] == ref["timesteps"]
    k, m = first_divergence(lat, ref["latents"], lookup("pipeline", "latents", "webgpu", "tiny"))
    assert k is None, f"browser latents diverge from diffusers first at step {k + 1}: {m.why}"
    assert (rgba[..., 3] == 255).all()
    px = compare(rgba[..., :3], ref["image_u8"], lookup("pipeline", "pixels", "webgpu", "tiny"), integer=True)
    print(f"browser vs diffusers: final latents max abs {compare(lat[-1], ref['latents'][-1], emb_tol).max_abs:.3g}, "
          f"pixels {px.why}, generation {res['lastMs'] / 1000:.1f}s")
    assert px.passed, px.why
    page.close()


def write_e2e_html(path, steps, res):
    """A page with the browser image, the diffusers image and their difference side by side,
    and the per-step latent error."""
    from sdparity.files import write_atomic

    rows = "".join(f"<tr><td>{k + 1}</td><td>{m.max_abs:.3g}</td><td>{m.max_rel:.3g}</td>"
                   f"<td>{'pass' if m.passed else 'FAIL'}</td></tr>" for k, m in enumerate(steps))
    imgs = "".join(f'<figure><img src="{n}.png" width="256" style="image-rendering:pixelated">'
                   f"<figcaption>{n}</figcaption></figure>" for n in ("browser", "diffusers", "difference"))
    write_atomic(path, f"""<!doctype html><meta charset="utf-8"><title>sdparity browser e2e</title>
<style>body{{font-family:system-ui;margin:2em}} figure{{display:inline-block;margin:0 1em}}
td,th{{padding:0 1em;text-align:right}}</style>
<h1>Browser (WebGPU) vs diffusers.StableDiffusionPipeline</h1>
<p>{STEPS} DPM-Solver++ steps, guidance {GUIDANCE}, prompt "{PROMPT}", negative "{NEGATIVE}",
generation {res['lastMs'] / 1000:.1f} s in the browser.</p>{imgs}
<h2>Latents after each step</h2><table><tr><th>step</th><th>max abs</th><th>max rel</th><th>verdict</th></tr>
{rows}</table><p><img src="app_after_generation.png" width="640"></p>""")


def test_tutorial_constants_are_caught_at_the_last_step(page, app, reference, tiny):
    """Negative: the tutorial-era DPM table with today's default config must fail, at step 20."""
    from reference.dpm import tutorial_constants

    lat0, ref = reference
    page, problems = open_app(page, app)
    table = tutorial_constants(dict(tiny.pipe.scheduler.config), STEPS)
    res = run_generation(page, lat0, schedule=table)
    assert not res["errors"] and not problems
    _, _, lat, _ = _as_arrays(res, ref)
    k, m = first_divergence(lat, ref["latents"], lookup("pipeline", "latents", "webgpu", "tiny"))
    assert k == STEPS - 1, f"expected divergence at the last step, got {k}"
