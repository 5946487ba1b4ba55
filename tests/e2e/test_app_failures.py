"""What a person sees when things are wrong, and tokenizer parity with CLIPTokenizer."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.e2e.apphelpers import open_app


PROMPTS = st.one_of(
    st.just(""),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=80),
    st.lists(st.sampled_from(["a", "photo", "of", "cat,", "astronaut!", "héllo", "東京", "🙂", "--", "(8k)"]),
             max_size=120).map(" ".join),
)


@settings(max_examples=40)
@given(prompt=PROMPTS)
def test_browser_tokenizer_matches_cliptokenizer(app_page, tiny, prompt):
    tok = tiny.tokenizer
    expect = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    got = app_page.evaluate("(p) => window.sdparityApp.tokenize(p)", prompt)
    assert got == expect


def test_over_long_prompt_keeps_end_token(app_page, tiny):
    prompt = "a lighthouse on a cliff at dusk " * 40
    got = app_page.evaluate("(p) => window.sdparityApp.tokenize(p)", prompt)
    assert len(got) == 77 and got[0] == 49406 and got[-1] == 49407
    assert got == tiny.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids


def test_no_webgpu_adapter_shows_a_clear_message(app):
    """Chromium without --enable-unsafe-webgpu has no adapter: the page must say so."""
    from sdparity.backends.webgpu.backend import launch_chromium, shared_playwright

    with shared_playwright() as p:
        b = launch_chromium(p, webgpu=False)
        try:
            page = b.new_page()
            page.goto(f"{app.url}/app/index.html")
            page.wait_for_function("() => window.sdparityApp && window.sdparityApp.state.errors.length > 0",
                                   timeout=60_000)
            text = page.inner_text("#status")
            assert "WebGPU is not available" in text
            assert page.is_disabled("#generate")
        finally:
            b.close()


def test_missing_artifact_is_a_clear_error(page, app, tmp_path):
    cfg = json.loads((app.mounts["data"] / "config.json").read_text())
    cfg["artifact"] = "/art/no-such-build/"
    app.mounts["broken"] = tmp_path
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    page, _ = open_app(page, app, "?config=/broken/config.json")
    text = page.inner_text("#status")
    assert "sdparity.json" in text and "404" in text
    assert page.is_disabled("#generate")
