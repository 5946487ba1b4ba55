"""Driving the web app from Playwright, shared by the e2e tests."""

from __future__ import annotations

# the generation every driver runs (sdparity.app.pipeline, the browser app, Node on Dawn)
from sdparity.app.pipeline import GUIDANCE, NEGATIVE, PROMPT, STEPS  # noqa: F401

LATENT = (16, 16)
TIMEOUT_MS = 600_000


def open_app(page, app, query: str = ""):
    """Open the app in ``page`` (pytest-playwright's: traced, screenshot kept on failure)."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{app.url}/app/index.html{query}")
    _wait_ready(page)
    return page, problems


def _wait_ready(page):
    page.wait_for_function("() => window.sdparityApp && (window.sdparityApp.state.ready || "
                           "window.sdparityApp.state.errors.length > 0)", timeout=TIMEOUT_MS)


def pick_model(page, name: str):
    """Choose a model in the app's picker, as a person would: the page reloads with it."""
    value = page.evaluate("(n) => [...document.querySelectorAll('#model-picker option')]"
                          ".find((o) => o.textContent.startsWith(n + ' '))?.value", name)
    assert value, f"{name} is not in the app's model picker"
    with page.expect_navigation():
        page.select_option("#model-picker", value)
    _wait_ready(page)
    return page


def run_generation(page, latents, schedule=None, scheduler: str = "dpm", steps: int = STEPS, seed: int = 0):
    """Generate in the page from the injected ``latents`` (seed ``seed``'s: LCM's step noise is
    what diffusers draws after them, reference.pipeline.step_noises)."""
    from reference.pipeline import step_noises

    page.evaluate("(a) => window.sdparityApp.injectLatents(a)", latents.reshape(-1).tolist())
    noises = None
    if scheduler == "lcm":  # every step but the last adds noise
        noises = [z.reshape(-1).tolist() for z in step_noises(seed, latents.shape, steps - 1)]
    page.evaluate("(a) => window.sdparityApp.injectNoises(a)", noises)
    page.evaluate("(t) => window.sdparityApp.overrideSchedule(t)", schedule)  # None: the app's own
    page.select_option("#scheduler", scheduler)
    page.fill("#prompt", PROMPT)
    page.fill("#negative", NEGATIVE)
    page.fill("#steps", str(steps))
    page.fill("#guidance", str(GUIDANCE))
    page.click("#generate")
    page.wait_for_function("() => { const r = window.sdparityApp.state; return r.done || r.errors.length > 0; }",
                           timeout=TIMEOUT_MS)
    return page.evaluate("() => window.sdparityApp.result()")

