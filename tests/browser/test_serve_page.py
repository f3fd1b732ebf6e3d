"""The ``tessera serve`` page in a real browser (Playwright driving Debian's chromium): type a
prompt, see every image decode, enlarge one, complete an uploaded image, see an error shown,
fit a phone-width window, reach nothing but this server.

Under ``CI=true`` a missing browser or playwright fails the test; elsewhere it skips, saying
how to install them. ``TESSERA_SCREENSHOT_DIR=docs/images`` also writes ``serve.png`` there:
the shipped model's page after generating "a red circle", at a desktop width.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers.browser import CHROMIUM, HEADLESS_ARGS, need_browser
from helpers.serve import build_tiny_pipeline, running_server

ARGS = HEADLESS_ARGS


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def _app(models):
    from tessera.apps.serve import ServeConfig, create_app

    config = ServeConfig(models=tuple(models), max_body_bytes=512 * 1024)
    return create_app(config, pipelines=models)


def _watch(page, base):
    """Every request the page makes, and its console errors."""
    seen = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    return seen


def _generate(page, prompt: str, n: int) -> None:
    page.fill("#prompt", prompt)
    page.fill("#n", str(n))
    page.click("#go")
    page.wait_for_function(
        f"() => document.querySelector('#status').hidden && "
        "!document.querySelector('#results figcaption').innerText.startsWith('given') && "
        f"document.querySelectorAll('#results img').length === {n} && "
        "[...document.querySelectorAll('#results img')].every(i => i.complete)",
        timeout=180_000,  # a loaded 2-core CI machine; the shipped model draws 16 candidates
    )


def _decoded(page) -> list[int]:
    return page.eval_on_selector_all("#results img", "els => els.map(e => e.naturalWidth)")


def test_page_generates_completes_and_shows_errors(browser, tiny_pipeline_dir, tmp_path) -> None:
    from tessera.pipelines import load_pipeline

    app = _app({"tiny": load_pipeline(tiny_pipeline_dir)})
    with running_server(app) as base:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        seen = _watch(page, base)
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
        assert "rerank" in page.inner_text("#caps")

        # text to images: every image decodes, each with its score and checker verdict
        page.fill("#seed", "3")
        _generate(page, "a red circle", 3)
        assert all(w == 32 for w in _decoded(page))
        captions = page.eval_on_selector_all("#results figcaption", "e => e.map(x => x.innerText)")
        assert all("CLIP" in c and "checker" in c for c in captions), captions
        assert page.is_hidden("#error") and page.is_hidden("#status")

        # click to enlarge; the download link carries the PNG
        page.click("#results img >> nth=0")
        assert page.is_visible("#viewer")
        assert page.get_attribute("#download", "href").startswith("data:image/png;base64,")
        page.click("#close")
        page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)

        # image-prompt completion from an upload: the given image, then the completions
        upload = tmp_path / "upload.png"
        Image.new("RGB", (48, 40), (30, 30, 200)).save(upload)
        page.click("#complete-panel summary")
        page.set_input_files("#image", str(upload))
        page.fill("#n", "2")
        page.click("#complete-go")
        page.wait_for_function(
            "() => document.querySelector('#results figcaption')?.innerText.startsWith('given')",
            timeout=180_000,  # a loaded 2-core CI machine; the shipped model draws 16 candidates
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results img')].every(i => i.complete)"
        )
        # the given image, then the n = 2 completions the Images field asks for
        assert len(_decoded(page)) == 3 and all(w == 32 for w in _decoded(page))

        # errors are shown in the page: a text file named .png, then an oversized file
        fake = tmp_path / "notes.png"
        fake.write_text("not an image at all\n" * 10)
        page.set_input_files("#image", str(fake))
        page.click("#complete-go")
        page.wait_for_selector("#error:not([hidden])")
        assert "Bad input" in page.inner_text("#error")
        big = tmp_path / "big.png"
        buf = io.BytesIO()
        Image.effect_noise((600, 600), 80).convert("RGB").save(buf, "PNG")
        big.write_bytes(buf.getvalue())
        page.set_input_files("#image", str(big))
        page.click("#complete-go")
        page.wait_for_function(
            "() => document.querySelector('#error').innerText.includes('Too large')"
        )
        page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

        # a phone-width window: no sideways scrolling, the form and grid still usable
        page.set_viewport_size({"width": 375, "height": 800})
        _generate(page, "a blue square", 2)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 375, width
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

        # the API docs render offline from /openapi.json
        page.goto(base + "/docs")
        page.wait_for_selector(".op h2")
        assert "/api/generate" in page.inner_text("#api")

        assert all(u.startswith(base) or u.startswith("data:") for u in seen["requests"]), [
            u for u in seen["requests"] if not u.startswith(base)
        ]
        assert not [e for e in seen["errors"] if "Failed to load resource" not in e], seen
        page.close()


def test_page_drives_each_loaded_model_in_turn(browser, tmp_path) -> None:
    """DALL·E and unCLIP served together: pick each in the page, generate, see its images.
    The page shows (and sends) only the fields the chosen model takes, with its defaults."""
    import json

    from helpers.serve import build_tiny_pipeline, build_tiny_unclip_pipeline
    from tessera.apps.serve.service import served_specs
    from tessera.pipelines import load_pipeline

    models = {
        "dalle": load_pipeline(build_tiny_pipeline(tmp_path / "dalle")),
        "unclip": load_pipeline(build_tiny_unclip_pipeline(tmp_path / "unclip")),
    }
    with running_server(_app(models)) as base:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        seen = _watch(page, base)
        sent = []
        page.on(
            "request",
            lambda r: r.url.endswith("/api/generate") and sent.append(json.loads(r.post_data)),
        )
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
        for name, steps in (("dalle", False), ("unclip", True), ("dalle", False)):
            page.select_option("#model", name)
            assert page.input_value("#model") == name and name in page.inner_text("#caps")
            default = models[name].settings.guidance if name == "dalle" else 3.0
            assert page.is_visible("#guidance-field")
            assert float(page.input_value("#guidance")) == default  # the model's own default
            assert page.is_visible("#steps-field") is steps
            assert page.is_visible("#complete-panel") is (name == "dalle")
            page.fill("#guidance", "2")
            if steps:
                page.fill("#steps", "3")
            page.fill("#seed", "5")
            # the model's own settings, one input each, derived from its settings dataclass
            own = {s.name for s in served_specs(models[name])} - {"guidance", "decoder_guidance"}
            shown = page.eval_on_selector_all(
                "#settings-fields [data-setting]", "els => els.map(e => e.dataset.setting)"
            )
            assert set(shown) == own - {"decoder_steps"}, shown
            if not page.evaluate("() => document.querySelector('#settings-panel').open"):
                page.click("#settings-panel summary")
            changed = ("#setting-top_k", "3") if name == "dalle" else ("#setting-prior_steps", "3")
            page.fill(*changed)
            page.evaluate("() => document.querySelector('#results').replaceChildren()")
            _generate(page, "a red circle", 2)
            assert _decoded(page) == [32, 32]
            assert page.is_hidden("#error"), page.inner_text("#error")
            body = sent[-1]
            assert body["model"] == name and body["guidance"] == 2
            assert ("steps" in body) is steps and (body.get("steps") == 3 or not steps)
            key = changed[0].removeprefix("#setting-")
            assert body[key] == 3 and not set(body) & (own - {key, "decoder_steps"})
        assert len(sent) == 3
        assert all(u.startswith(base) or u.startswith("data:") for u in seen["requests"])
        assert not [e for e in seen["errors"] if "Failed to load resource" not in e], seen
        page.close()


def test_shipped_model_page_screenshot(browser, tmp_path) -> None:
    """The shipped model at a desktop width after "a red circle" (docs/images/serve.png)."""
    from tessera.apps.demo import default_pipeline_dir
    from tessera.pipelines import load_pipeline

    pipe = load_pipeline(default_pipeline_dir())
    app = _app({"dalle": pipe})
    with running_server(app) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
        page.fill("#seed", "0")
        page.fill("#candidates", "16")
        _generate(page, "a red circle", 8)
        assert all(w == pipe.image_size for w in _decoded(page))
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    out = os.environ.get("TESSERA_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(out) / "serve.png")
