"""unCLIP's manipulations in the ``tessera serve`` page, in a real browser (Playwright driving
Debian's chromium) against a tiny random-weight unCLIP pipeline at 2 steps: variations
(upload -> grid), interpolation (two uploads -> strip), text diffs (upload + captions ->
strip) and inpainting (upload, paint the mask with the brush, erase, clear -> results), each
with the enlarge/download actions; and the errors: an upload that is not an image, an empty
mask. The panels follow the chosen model's ``capabilities``.

``TESSERA_SCREENSHOT_DIR=docs/images`` also runs :func:`test_shipped_unclip_screenshots`: every
flow with the shipped unCLIP model (few steps), one PNG each (about 15 s on 2 CPU cores).
"""

from __future__ import annotations

import email.parser
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.browser import CHROMIUM, HEADLESS_ARGS, need_browser
from helpers.serve import build_tiny_pipeline, build_tiny_unclip_pipeline, running_server

SHOTS = os.environ.get("TESSERA_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=HEADLESS_ARGS, headless=True)
        yield b
        b.close()


def _app(models):
    from tessera.apps.serve import ServeConfig, create_app

    config = ServeConfig(models=tuple(models), max_body_bytes=512 * 1024)
    return create_app(config, pipelines=models)


class Recorder:
    """ASGI wrapper keeping the multipart forms the server received on ``path`` (the browser's
    request events carry no body for forms holding a Blob)."""

    def __init__(self, app, path: str) -> None:
        self.app, self.path, self.forms = app, path, []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        chunks = []

        async def keep():
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] == "http.request" and not message.get("more_body"):
                kind = dict(scope["headers"])[b"content-type"].decode()
                self.forms.append(_multipart(b"".join(chunks), kind))
            return message

        await self.app(scope, keep, send)


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in msg.get_payload()
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny unCLIP (2 prior and decoder steps) and a tiny DALL·E, served together; the
    inpainting forms it receives are kept."""
    from tessera.pipelines import load_pipeline

    root = tmp_path_factory.mktemp("serve-manipulations")
    models = {
        "unclip": load_pipeline(build_tiny_unclip_pipeline(root / "unclip")),
        "dalle": load_pipeline(build_tiny_pipeline(root / "dalle")),
    }
    app = Recorder(_app(models), "/api/inpaint")
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def base(server):
    return server[0]


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    """Shapes scenes as PNG files (96 x 64 and 64 x 64), and a text file named .png."""
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource

    root = tmp_path_factory.mktemp("uploads")
    src = ShapesSource(ShapesConfig(size=64), split="eval", n=4)
    out = {}
    for i, name in enumerate(("a", "b")):
        out[name] = root / f"{name}.png"
        Image.fromarray(src.image(i)).save(out[name])
    wide = Image.new("RGB", (96, 64), (255, 255, 255))
    wide.paste(Image.fromarray(src.image(2)), (16, 0))
    out["wide"] = root / "wide.png"
    wide.save(out["wide"])
    out["text"] = root / "notes.png"
    out["text"].write_text("not an image at all\n" * 10)
    return out


@pytest.fixture()
def page(browser, base):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    seen = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.goto(base + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    page.select_option("#model", "unclip")
    page.fill("#seed", "1")
    yield page
    assert all(u.startswith(base) or u.startswith(("data:", "blob:")) for u in seen["requests"])
    assert not [e for e in seen["errors"] if "Failed to load resource" not in e], seen
    page.close()


def _open(page, panel: str) -> None:
    if not page.evaluate(f"() => document.querySelector('#{panel}').open"):
        page.click(f"#{panel} summary")


def _submit(page, button: str, kind: str, count: int, timeout_s: float = 60) -> list[str]:
    """Click ``button``; wait for the answer of ``kind`` with ``count`` images; its captions."""
    page.evaluate(
        "() => { const g = document.querySelector('#results'); g.replaceChildren(); "
        "delete g.dataset.kind; }"
    )
    page.click(button)
    page.wait_for_function(
        "([kind, count]) => document.querySelector('#status').hidden && "
        "document.querySelector('#results').dataset.kind === kind && "
        "document.querySelectorAll('#results img').length === count && "
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)",
        arg=[kind, count],
        timeout=timeout_s * 1000,
    )
    assert page.is_hidden("#error"), page.inner_text("#error")
    return page.eval_on_selector_all("#results figcaption", "e => e.map(x => x.innerText)")


def _enlarge_and_download(page, nth: int) -> None:
    page.click(f"#results img >> nth={nth}")
    assert page.is_visible("#viewer")
    href = page.get_attribute("#download", "href")
    assert href.startswith("data:image/png;base64,")
    assert page.get_attribute("#download", "download").endswith(".png")
    page.click("#close")
    assert page.is_hidden("#viewer")


def _shot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TESSERA_TINY_SHOTS"):  # to look at the tiny model's flows
        Path(os.environ["TESSERA_TINY_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(os.environ["TESSERA_TINY_SHOTS"]) / path.name)


def test_panels_follow_the_models_capabilities(page) -> None:
    panels = ("variations-panel", "interpolate-panel", "textdiff-panel", "inpaint-panel")
    for name, shown in (("unclip", True), ("dalle", False), ("unclip", True)):
        page.select_option("#model", name)
        for panel in panels:
            assert page.is_visible(f"#{panel}") is shown, (name, panel)
        assert page.is_visible("#complete-panel") is (not shown)
    page.goto(page.url + "docs")  # the offline API docs list every route
    page.wait_for_selector(".op h2")
    api = page.inner_text("#api")
    for route in ("/api/variations", "/api/interpolate", "/api/textdiff", "/api/inpaint"):
        assert route in api


def test_variations_upload_to_grid(page, uploads, tmp_path) -> None:
    _open(page, "variations-panel")
    page.set_input_files("#variations-image", str(uploads["a"]))
    page.fill("#n", "3")
    page.fill("#steps", "2")
    captions = _submit(page, "#variations-go", "variations", 4)
    assert captions == ["given: image", "#1", "#2", "#3"]
    assert page.eval_on_selector_all("#results img", "e => e.map(x => x.naturalWidth)") == [32] * 4
    assert not page.evaluate("() => document.querySelector('#results').classList.contains('strip')")
    _enlarge_and_download(page, 2)
    _shot(page, tmp_path / "variations.png")


def test_interpolation_two_uploads_to_strip(page, uploads, tmp_path) -> None:
    _open(page, "interpolate-panel")
    page.set_input_files("#interpolate-a", str(uploads["a"]))
    page.set_input_files("#interpolate-b", str(uploads["b"]))
    page.fill("#interpolate-frames", "4")
    captions = _submit(page, "#interpolate-go", "interpolation", 6)
    assert captions == ["given: A", "given: B", "θ=0.00", "θ=0.33", "θ=0.67", "θ=1.00"]
    assert page.evaluate("() => document.querySelector('#results').classList.contains('strip')")
    _enlarge_and_download(page, 5)
    _shot(page, tmp_path / "interpolate.png")


def test_text_diff_upload_and_captions_to_strip(page, uploads, tmp_path) -> None:
    _open(page, "textdiff-panel")
    page.set_input_files("#textdiff-image", str(uploads["a"]))
    page.fill("#from-caption", "a purple square")
    page.fill("#to-caption", "a green circle")
    page.fill("#textdiff-frames", "3")
    page.fill("#max-theta", "0.5")
    captions = _submit(page, "#textdiff-go", "text_diff", 4)
    assert captions == ["given: image", "θ=0.00", "θ=0.25", "θ=0.50"]
    assert page.evaluate("() => document.querySelector('#results').classList.contains('strip')")
    _enlarge_and_download(page, 1)
    _shot(page, tmp_path / "textdiff.png")


def _drag(page, canvas: str, points: list[tuple[float, float]]) -> None:
    page.locator(canvas).scroll_into_view_if_needed()
    box = page.locator(canvas).bounding_box()  # in the viewport, where the mouse is
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=4)
    page.mouse.up()


def test_inpainting_paint_erase_clear_then_results(page, server, uploads, tmp_path) -> None:
    sent = server[1].forms
    sent.clear()
    _open(page, "inpaint-panel")
    page.fill("#prompt", "a green circle")
    page.fill("#n", "2")
    page.set_input_files("#inpaint-image", str(uploads["wide"]))  # 96 x 64
    page.wait_for_selector("#mask-box:not([hidden])")
    # shown at the displayed resolution: 4x, 384 x 256; the canvas is that size on screen
    size = page.evaluate("() => [document.querySelector('#mask-paint').width, "
                         "document.querySelector('#mask-paint').height]")  # fmt: skip
    assert size == [384, 256]
    box = page.locator("#mask-paint").bounding_box()
    assert (round(box["width"]), round(box["height"])) == (384, 256)

    # brush a stroke, clear it, brush again, erase a bit of it with a smaller eraser
    page.fill("#brush-size", "40")
    _drag(page, "#mask-paint", [(100, 60), (300, 60)])
    assert int(page.get_attribute("#mask-paint", "data-painted")) > 40 * 200 * 0.9
    page.click("#mask-clear")
    assert page.get_attribute("#mask-paint", "data-painted") == "0"
    _drag(page, "#mask-paint", [(120, 128), (260, 128)])
    painted = int(page.get_attribute("#mask-paint", "data-painted"))
    page.check("#tool-eraser")
    page.fill("#brush-size", "10")
    _drag(page, "#mask-paint", [(190, 110), (190, 146)])
    assert 0 < int(page.get_attribute("#mask-paint", "data-painted")) < painted
    page.check("#tool-brush")

    captions = _submit(page, "#inpaint-go", "inpainting", 4)
    assert captions[:2] == ["given: image", "given: mask"]
    assert [c.split()[0] for c in captions[2:]] == ["#1", "#2"]
    assert all("CLIP" in c for c in captions[2:])  # reranked, best first

    # the mask sent: a PNG at the displayed size, exactly black and white
    (form,) = sent
    assert form["prompt"] == b"a green circle" and form["n"] == b"2"
    mask = Image.open(io.BytesIO(form["mask"]))
    assert mask.format == "PNG" and mask.size == (384, 256)
    values = np.unique(np.asarray(mask.convert("RGB")).reshape(-1, 3), axis=0).tolist()
    assert values == [[0, 0, 0], [255, 255, 255]], values
    grey = mask.convert("L")
    assert grey.getpixel((130, 128)) == 255 and grey.getpixel((250, 128)) == 255  # brushed
    assert grey.getpixel((190, 128)) == 0  # erased
    assert grey.getpixel((100, 60)) == 0 and grey.getpixel((5, 5)) == 0  # cleared, untouched
    _enlarge_and_download(page, 2)
    _shot(page, tmp_path / "inpaint.png")


def test_an_upload_that_is_not_an_image_is_shown_as_an_error(page, uploads) -> None:
    _open(page, "variations-panel")
    page.set_input_files("#variations-image", str(uploads["text"]))
    page.click("#variations-go")
    page.wait_for_selector("#error:not([hidden])")
    assert "Bad input: bad image" in page.inner_text("#error")
    # the inpainting panel cannot show it: no canvas, said at once
    _open(page, "inpaint-panel")
    page.set_input_files("#inpaint-image", str(uploads["text"]))
    page.wait_for_function(
        "() => document.querySelector('#error').innerText.includes('not an image')"
    )
    assert page.is_hidden("#mask-box")


def test_an_empty_mask_is_refused_by_name(page, uploads, tmp_path) -> None:
    _open(page, "inpaint-panel")
    page.set_input_files("#inpaint-image", str(uploads["a"]))
    page.wait_for_selector("#mask-box:not([hidden])")
    page.click("#inpaint-go")
    page.wait_for_selector("#error:not([hidden])")
    assert "Not accepted: the mask is empty" in page.inner_text("#error")
    assert page.is_hidden("#status")
    _shot(page, tmp_path / "empty_mask.png")


def test_phone_width_strip_and_mask_fit(page, uploads, tmp_path) -> None:
    """At 375 px: the strip scrolls inside itself, the mask canvas fits and still paints."""
    page.set_viewport_size({"width": 375, "height": 800})
    _open(page, "interpolate-panel")
    page.set_input_files("#interpolate-a", str(uploads["a"]))
    page.set_input_files("#interpolate-b", str(uploads["b"]))
    page.fill("#interpolate-frames", "6")
    _submit(page, "#interpolate-go", "interpolation", 8)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    _open(page, "inpaint-panel")
    page.set_input_files("#inpaint-image", str(uploads["wide"]))
    page.wait_for_selector("#mask-box:not([hidden])")
    box = page.locator("#mask-paint").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    width = page.evaluate("() => document.querySelector('#mask-paint').width")
    assert round(box["width"]) == width  # still drawn at its own resolution
    _drag(page, "#mask-paint", [(box["width"] / 2, box["height"] / 2)])
    assert int(page.get_attribute("#mask-paint", "data-painted")) > 0
    _shot(page, tmp_path / "phone.png")


@pytest.mark.skipif(not SHOTS, reason="writes docs screenshots: set TESSERA_SCREENSHOT_DIR")
def test_shipped_unclip_screenshots(browser, uploads, tmp_path) -> None:
    """Every flow with the shipped unCLIP model (decoder 5 steps, upsamplers 2, prior 10:
    about 15 s on 2 CPU cores), one desktop-width screenshot each of the panel and its results,
    into ``$TESSERA_SCREENSHOT_DIR`` (docs/images/serve_*.png)."""
    import dataclasses

    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource
    from tessera.pipelines import load_pipeline

    pipe = load_pipeline("unclip")
    pipe.settings = dataclasses.replace(
        pipe.settings, decoder_steps=5, upsampler_steps=2, prior_steps=10
    )
    src = ShapesSource(ShapesConfig(size=pipe.image_size), split="eval", n=8)
    files = {}
    for i in (0, 1, 5):
        files[i] = tmp_path / f"scene{i}.png"
        Image.fromarray(src.image(i)).save(files[i])
    shots = {}
    with running_server(_app({"unclip": pipe})) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
        page.fill("#seed", "0")
        page.fill("#n", "4")

        def done(button, kind, count):
            _submit(page, button, kind, count, timeout_s=600)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")

        def panel_shot(panel):
            """The open panel and the results under it, at the page's width."""
            top = page.evaluate(
                f"() => document.querySelector('#{panel}').getBoundingClientRect().top "
                "+ window.scrollY - 8"
            )
            bottom = page.evaluate(
                "() => document.querySelector('#results').getBoundingClientRect().bottom "
                "+ window.scrollY + 8"
            )
            clip = {"x": 0, "y": top, "width": 1280, "height": bottom - top}
            return page.screenshot(full_page=True, clip=clip)

        def close_all():
            page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = false)")

        close_all()
        _open(page, "variations-panel")
        page.set_input_files("#variations-image", str(files[0]))
        done("#variations-go", "variations", 5)
        shots["serve_variations.png"] = panel_shot("variations-panel")

        close_all()
        _open(page, "interpolate-panel")
        page.set_input_files("#interpolate-a", str(files[0]))
        page.set_input_files("#interpolate-b", str(files[1]))
        page.fill("#interpolate-frames", "6")
        done("#interpolate-go", "interpolation", 8)
        shots["serve_interpolate.png"] = panel_shot("interpolate-panel")

        close_all()
        _open(page, "textdiff-panel")
        page.set_input_files("#textdiff-image", str(files[5]))
        page.fill("#from-caption", "a small green circle in the center")
        page.fill("#to-caption", "a small red circle in the center")
        page.fill("#textdiff-frames", "5")
        done("#textdiff-go", "text_diff", 6)
        shots["serve_textdiff.png"] = panel_shot("textdiff-panel")

        close_all()
        _open(page, "inpaint-panel")
        page.fill("#prompt", "a purple square to the left of a yellow circle")
        page.set_input_files("#inpaint-image", str(files[0]))
        page.wait_for_selector("#mask-box:not([hidden])")
        page.fill("#brush-size", "96")
        # over the blue square on the right (x 82-113, y 48-78 of 128; shown at 3x)
        _drag(page, "#mask-paint", [(270, 140), (315, 140), (315, 235), (270, 235), (270, 140)])
        done("#inpaint-go", "inpainting", 6)
        shots["serve_inpaint.png"] = panel_shot("inpaint-panel")
        page.close()
    out = Path(SHOTS)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in shots.items():
        (tmp_path / name).write_bytes(png)
        shutil.copyfile(tmp_path / name, out / name)
