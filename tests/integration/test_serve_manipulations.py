"""unCLIP's manipulations in ``tessera serve``'s API (FastAPI's TestClient; a tiny random-weight
unCLIP at 2 steps beside a tiny DALL·E): ``/api/variations``, ``/api/interpolate``,
``/api/textdiff`` and ``/api/inpaint`` answer with the inputs as the model saw them and the
labelled results, same seed same images, progress events on request; every limit of
``/api/generate`` and ``/api/complete`` holds (body size, pixels, formats, n, steps, queue, time
limit), a model without the capability is a 422 naming it, and an inpainting mask is resized
nearest onto the image, thresholded, and refused when empty."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient
from PIL import Image

from helpers.serve import BlockingPipeline, build_tiny_pipeline, build_tiny_unclip_pipeline
from tessera.apps.serve import ServeConfig, create_app
from tessera.pipelines import load_pipeline

CAPS = {"variations", "interpolation", "text_diff", "inpainting"}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-manipulations")
    return {
        "unclip": load_pipeline(build_tiny_unclip_pipeline(root / "unclip")),
        "dalle": load_pipeline(build_tiny_pipeline(root / "dalle")),
    }


@pytest.fixture(scope="module")
def client(pipes):
    config = ServeConfig(
        models=("unclip", "dalle"), max_body_bytes=256 * 1024, max_image_pixels=512 * 512
    )
    with TestClient(create_app(config, pipelines=dict(pipes))) as c:
        yield c


def _png(w=40, h=48, rgb=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), rgb).save(buf, "PNG")
    return buf.getvalue()


def _scene(w=64, h=48) -> bytes:
    """A white image with a red block on the left and a blue one on the right."""
    a = np.full((h, w, 3), 255, np.uint8)
    a[10:30, 4:24] = (220, 30, 30)
    a[16:40, 36:60] = (30, 30, 220)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _mask(w=64, h=48, box=(32, 0, 64, 48), value=255, mode="L") -> bytes:
    m = Image.new(mode, (w, h), 0)
    m.paste(value, box)
    buf = io.BytesIO()
    m.save(buf, "PNG")
    return buf.getvalue()


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


# route -> (files, form) of a good request
def _good(route: str) -> tuple[dict, dict]:
    image = ("a.png", _scene(), "image/png")
    return {
        "/api/variations": ({"image": image}, {"n": "2", "seed": "4"}),
        "/api/interpolate": (
            {"image_a": image, "image_b": ("b.png", _png(rgb=(30, 200, 30)), "image/png")},
            {"frames": "3", "seed": "4"},
        ),
        "/api/textdiff": (
            {"image": image},
            {
                "from_caption": "a red square",
                "to_caption": "a blue circle",
                "frames": "3",
                "seed": "4",
            },
        ),
        "/api/inpaint": (
            {"image": image, "mask": ("m.png", _mask(), "image/png")},
            {"prompt": "a green circle", "n": "2", "seed": "4"},
        ),
    }[route]


ROUTES = ("/api/variations", "/api/interpolate", "/api/textdiff", "/api/inpaint")
CAPABILITY = dict(zip(ROUTES, ("variations", "interpolation", "text_diff", "inpainting")))


def _post(client, route, files=None, **form):
    good_files, good_form = _good(route)
    data = {k: v for k, v in {**good_form, **form}.items() if v is not None}
    return client.post(route, files=files or good_files, data=data)


def test_healthz_lists_the_manipulations_unclip_supports(client) -> None:
    by_name = {m["name"]: m for m in client.get("/healthz").json()["models"]}
    assert set(by_name["unclip"]["capabilities"]) >= CAPS
    assert not set(by_name["dalle"]["capabilities"]) & CAPS
    paths = set(client.get("/openapi.json").json()["paths"])
    assert set(ROUTES) <= paths


@pytest.mark.parametrize(
    ("route", "kind", "layout", "inputs", "labels"),
    [
        ("/api/variations", "variations", "grid", ["given: image"], ["#1", "#2"]),
        ("/api/interpolate", "interpolation", "strip", ["given: A", "given: B"],
         ["θ=0.00", "θ=0.50", "θ=1.00"]),
        ("/api/textdiff", "text_diff", "strip", ["given: image"],
         ["θ=0.00", "θ=0.25", "θ=0.50"]),
        ("/api/inpaint", "inpainting", "grid", ["given: image", "given: mask"], ["#1", "#2"]),
    ],
)  # fmt: skip
def test_each_route_answers_and_same_seed_same_images(
    client, route, kind, layout, inputs, labels
) -> None:
    a = _post(client, route, steps="3")
    assert a.status_code == 200, a.text
    a = a.json()
    b = _post(client, route, steps="3").json()
    assert a["kind"] == kind and a["layout"] == layout and a["model"] == "unclip"
    assert a["seed"] == 4 and a["steps"] == 3 and a["settings"]["decoder_steps"] == 3
    assert [i["label"] for i in a["inputs"]] == inputs
    assert [i["label"] for i in a["images"]] == labels
    for im in a["inputs"] + a["images"]:
        px = _decode(im["png"])
        assert px.shape == (32, 32, 3)
    assert [i["png"] for i in a["images"]] == [i["png"] for i in b["images"]]
    assert a["warnings"] == [] and a["seconds"] >= 0


def test_variations_take_guidance_and_other_seeds_differ(client) -> None:
    a = _post(client, "/api/variations", guidance="1.5").json()
    assert a["guidance"] == 1.5 and a["settings"]["decoder_guidance"] == 1.5 and a["eta"] == 1.0
    assert set(a["settings"]) == {"decoder_steps", "decoder_guidance", "upsampler_steps"}
    c = _post(client, "/api/variations", guidance="1.5", seed="5").json()
    assert [i["png"] for i in a["images"]] != [i["png"] for i in c["images"]]


def test_text_diff_echoes_its_captions_and_thetas(client) -> None:
    r = _post(client, "/api/textdiff", max_theta="0.3", frames="4", from_caption="").json()
    assert r["from_caption"] == "" and r["to_caption"] == "a blue circle"
    assert r["thetas"] == pytest.approx([0.0, 0.1, 0.2, 0.3]) and r["max_theta"] == 0.3


def test_inpainting_keeps_the_unmasked_pixels_and_resizes_the_mask_nearest(client) -> None:
    # a 64 x 48 image -> 43 x 32 (shorter side 32) -> the crop's columns are 5..36; the mask
    # at 2x (128 x 96), white from column 70: nearest takes source column
    # floor((x + 0.5) * 128 / 43) for image column x, white from x = 24, the crop's 19
    files = {
        "image": ("a.png", _scene(), "image/png"),
        "mask": ("m.png", _mask(128, 96, (70, 0, 128, 96)), "image/png"),
    }
    r = _post(client, "/api/inpaint", files=files)
    assert r.status_code == 200, r.text
    r = r.json()
    given, mask = (_decode(i["png"]) for i in r["inputs"])
    assert set(np.unique(mask).tolist()) == {0, 255}  # exactly binary
    keep = mask[..., 0] == 0
    assert keep[:, :19].all() and not keep[:, 19:].any()
    scores = [i["score"] for i in r["images"]]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    for im in r["images"]:
        out = _decode(im["png"])
        assert (out[keep] == given[keep]).all()  # kept pixels, exactly
    assert r["resample"] == 1 and r["jump"] == 1 and "prior_steps" in r["settings"]


def test_inpainting_thresholds_a_grey_mask_at_half(client) -> None:
    def given_mask(value):
        files = {
            "image": ("a.png", _scene(), "image/png"),
            "mask": ("m.png", _mask(value=value), "image/png"),
        }
        return _post(client, "/api/inpaint", files=files)

    assert given_mask(100).status_code == 422  # below half grey: nothing to repaint
    r = given_mask(200)
    assert r.status_code == 200
    assert _decode(r.json()["inputs"][1]["png"]).max() == 255


@pytest.mark.parametrize("route", ROUTES)
def test_a_model_without_the_capability_is_a_422_naming_it(client, route) -> None:
    r = _post(client, route, model="dalle")
    assert r.status_code == 422, r.text
    cap = CAPABILITY[route]
    assert f"model 'dalle' (dalle) does not support {cap}" in r.json()["detail"]


@pytest.mark.parametrize(
    ("route", "form", "message"),
    [
        ("/api/variations", {"n": "0"}, "n must be between 1 and 16, got 0"),
        ("/api/variations", {"n": "99"}, "n must be between 1 and 16, got 99"),
        ("/api/variations", {"steps": "1"}, "decoder_steps must be >= 2, got 1"),
        ("/api/variations", {"steps": "10000"}, "steps must be between 1 and 250"),
        ("/api/variations", {"guidance": "51"}, "guidance must be between 0 and 50"),
        ("/api/variations", {"guidance": "nan"}, "guidance"),
        ("/api/variations", {"seed": "-1"}, "seed must be between 0 and"),
        ("/api/variations", {"n": "many"}, "n: Input should be a valid integer"),
        ("/api/interpolate", {"frames": "1"}, "frames must be between 2 and 16, got 1"),
        ("/api/interpolate", {"frames": "17"}, "frames must be between 2 and 16, got 17"),
        ("/api/interpolate", {"steps": "1"}, "decoder_steps must be >= 2"),
        ("/api/textdiff", {"to_caption": "  "}, "to_caption must not be empty"),
        ("/api/textdiff", {"max_theta": "0"}, "max_theta must be in (0, 1], got 0.0"),
        ("/api/textdiff", {"max_theta": "1.5"}, "max_theta must be in (0, 1], got 1.5"),
        ("/api/textdiff", {"max_theta": "nan"}, "max_theta must be in (0, 1]"),
        ("/api/textdiff", {"frames": "0"}, "frames must be between 2 and 16"),
        ("/api/textdiff", {"to_caption": "a red circle " * 20}, "longer than the model's"),
        ("/api/textdiff", {"from_caption": "a red circle", "to_caption": "a red circle"},
         "have the same CLIP text embedding"),
        ("/api/inpaint", {"prompt": " "}, "prompt must not be empty"),
        ("/api/inpaint", {"prompt": ""}, "prompt: Field required"),
        ("/api/inpaint", {"prompt": "a red circle " * 20}, "longer than the model's"),
        ("/api/inpaint", {"n": "17"}, "n must be between 1 and 16"),
        ("/api/inpaint", {"resample": "0"}, "resample must be between 1 and 125"),
        ("/api/inpaint", {"resample": "200"}, "resample × steps = 200 × 2 is capped"),
        ("/api/inpaint", {"jump": "0"}, "jump must be between 1 and 250, got 0"),
        ("/api/inpaint", {"steps": "1"}, "decoder_steps must be >= 2"),
    ],
)  # fmt: skip
def test_bad_fields_are_422_naming_them(client, route, form, message) -> None:
    r = _post(client, route, **form)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_an_unknown_model_is_404(client) -> None:
    r = _post(client, "/api/variations", model="../unclip")
    assert r.status_code == 404 and "unknown model" in r.json()["detail"]


def test_a_missing_upload_is_a_422_naming_it(client) -> None:
    r = client.post("/api/inpaint", files={"image": ("a.png", _scene(), "image/png")},
                    data={"prompt": "a red circle"})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"] == "mask: Field required"


@pytest.mark.parametrize(
    ("field", "data", "message"),
    [
        ("image", b"just some text, renamed to .png\n" * 4, "bad image: "),
        ("image", b"", "the uploaded image is empty"),
        ("image", _png(600, 600), "pixels exceeds the cap of 262144"),
        ("image_b", b"not an image\n" * 4, "bad image_b: "),
        ("mask", b"not an image\n" * 4, "bad mask: "),
        ("mask", _mask(600, 600), "bad mask: 600x600 = 360000 pixels exceeds"),
    ],
)
def test_bad_uploads_are_400_naming_the_upload(client, field, data, message) -> None:
    route = {"image_b": "/api/interpolate", "mask": "/api/inpaint"}.get(field, "/api/variations")
    files = dict(_good(route)[0])
    files[field] = ("x.png", data, "image/png")
    r = _post(client, route, files=files)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize(
    "mask",
    [_mask(box=(0, 0, 0, 0)), _mask(box=(0, 0, 8, 48))],  # nothing; only outside the crop
    ids=["black", "outside-the-crop"],
)
def test_an_empty_mask_is_a_422(client, mask) -> None:
    files = {"image": ("a.png", _scene(), "image/png"), "mask": ("m.png", mask, "image/png")}
    r = _post(client, "/api/inpaint", files=files)
    assert r.status_code == 422 and r.json()["detail"].startswith("the mask is empty")


def test_an_oversized_upload_is_413(client) -> None:
    files = {"image": ("a.png", b"\0" * (300 * 1024), "image/png")}
    for route in ROUTES:
        r = client.post(route, files=files, data={"prompt": "a", "to_caption": "a"})
        assert r.status_code == 413, route


def _events(response) -> list[tuple[str, dict]]:
    return [
        (b.split("\n")[0].removeprefix("event: "), json.loads(b.split("\n")[1][6:]))
        for b in response.text.strip().split("\n\n")
    ]


@pytest.mark.parametrize("route", ROUTES)
def test_progress_events_then_result(client, route) -> None:
    files, form = _good(route)
    r = client.post(route, files=files, data=form, headers={"accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert events[0][0] == "progress" and {e for e, _ in events[:-1]} == {"progress"}
    kind, result = events[-1]
    assert kind == "result" and result["kind"] == CAPABILITY[route] and result["seed"] == 4


def test_a_refusal_on_the_event_stream_is_a_plain_422(client) -> None:
    files, form = _good("/api/inpaint")
    files = {**files, "mask": ("m.png", _mask(box=(0, 0, 0, 0)), "image/png")}
    r = client.post("/api/inpaint", files=files, data=form,
                    headers={"accept": "text/event-stream"})  # fmt: skip
    assert r.status_code == 422 and "mask is empty" in r.json()["detail"]


def test_a_library_refusal_while_running_is_an_error_event(client, monkeypatch) -> None:
    """A DataError the manipulation raises on the worker (here: a stand-in) is a 422 -- a
    plain one, or an ``error`` event once the stream has started."""
    from tessera.errors import DataError
    from tessera.pipelines import manipulations

    def refuse(*args, **kwargs):
        raise DataError("the mask must be one plane of the image's size\nsecond line")

    monkeypatch.setattr(manipulations, "inpaint", refuse)
    files, form = _good("/api/inpaint")
    r = client.post("/api/inpaint", files=files, data=form)
    assert r.status_code == 422
    assert r.json()["detail"] == "the mask must be one plane of the image's size"
    r = client.post("/api/inpaint", files=files, data=form,
                    headers={"accept": "text/event-stream"})  # fmt: skip
    kind, data = _events(r)[-1]
    assert kind == "error" and data["status"] == 422


def test_a_fault_is_a_json_500_logged_once(client, monkeypatch, caplog) -> None:
    from tessera.pipelines import manipulations

    def boom(*args, **kwargs):
        raise TypeError("boom: an unexpected fault inside the model")

    monkeypatch.setattr(manipulations, "variations", boom)
    with caplog.at_level(logging.ERROR):
        r = _post(client, "/api/variations")
    assert r.status_code == 500 and r.json()["detail"].startswith("internal server error")
    assert "boom" not in r.text
    assert len([x for x in caplog.records if x.levelno >= logging.ERROR]) == 1


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_the_models_queue_and_time_limit_hold_for_every_route(pipes) -> None:
    """One queue per model, whatever the route: a text-to-image request blocks the worker, one
    manipulation waits, the next is a 429; with a short time limit, a waiting one is a 504."""
    blocking = BlockingPipeline(pipes["unclip"])
    app = create_app(ServeConfig(models=("u",), queue_size=1), pipelines={"u": blocking})
    slot = app.state.slots["u"]
    with TestClient(app) as client:
        results = []

        def go(fn):
            t = threading.Thread(target=lambda: results.append(fn()))
            t.start()
            return t

        first = go(lambda: client.post("/api/generate", json={"prompt": "a", "n": 1}))
        _wait_for(lambda: blocking.calls == 1)
        second = go(lambda: _post(client, "/api/variations", model="u"))
        _wait_for(lambda: slot.pending == 2)
        for route in ROUTES:
            r = _post(client, route, model="u")
            assert r.status_code == 429, (route, r.text)
            assert int(r.headers["retry-after"]) >= 1
        blocking.release.set()
        first.join(20)
        second.join(20)
        assert sorted(x.status_code for x in results) == [200, 200]

    blocking = BlockingPipeline(pipes["unclip"])
    config = ServeConfig(models=("u",), queue_size=2, request_timeout_s=0.5)
    app = create_app(config, pipelines={"u": blocking})
    with TestClient(app) as client:
        first = threading.Thread(
            target=lambda: client.post("/api/generate", json={"prompt": "a", "n": 1})
        )
        first.start()
        _wait_for(lambda: blocking.calls == 1)
        r = _post(client, "/api/interpolate", model="u")
        assert r.status_code == 504 and "0.5 s limit" in r.json()["detail"]
        blocking.release.set()
        first.join(20)
        _wait_for(lambda: app.state.slots["u"].pending == 0)
        assert _post(client, "/api/textdiff", model="u").status_code == 200
