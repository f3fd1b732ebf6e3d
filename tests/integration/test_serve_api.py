"""``tessera serve``'s JSON API with FastAPI's TestClient on a tiny random-weight pipeline:
every limit has its own answer, same seed gives the same images, /healthz and /docs work."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient
from PIL import Image

from helpers.serve import BlockingPipeline, build_tiny_pipeline
from tessera.apps.serve import ServeConfig, create_app
from tessera.pipelines import load_pipeline


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def client(pipe):
    config = ServeConfig(models=("tiny",), max_body_bytes=256 * 1024, max_image_pixels=512 * 512)
    with TestClient(create_app(config, pipelines={"tiny": pipe})) as c:
        yield c


def _png(w=40, h=48, rgb=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(side=100_000) -> bytes:
    """A PNG header claiming side x side pixels (no pixel data): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # a sliver of rows; decoding would need ~30 GB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_healthz_lists_models_with_capabilities_and_limits(client) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok"
    (m,) = h["models"]
    assert m["name"] == "tiny" and m["kind"] == "dalle" and m["image_size"] == 32
    assert set(m["capabilities"]) == {"text_to_image", "image_prompt", "guidance", "rerank"}
    assert m["image_prompt_rows"] == 8
    assert h["limits"]["max_n"] == 16 and h["limits"]["max_body_bytes"] == 256 * 1024


def test_docs_openapi_and_page_answer_without_external_urls(client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/api/generate", "/api/complete"} <= set(spec["paths"])
    for path in ("/docs", "/", "/static/app.js", "/static/docs.js", "/static/style.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "http://" not in r.text and "https://" not in r.text, path
        assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "/static/docs.js" in client.get("/docs").text


def test_generate_returns_scored_checked_pngs_and_same_seed_same_images(client) -> None:
    body = {"prompt": "a red circle", "n": 2, "candidates": 4, "seed": 7, "guidance": 1.0}
    a = client.post("/api/generate", json=body).json()
    b = client.post("/api/generate", json=body).json()
    c = client.post("/api/generate", json={**body, "seed": 8}).json()
    assert a["seed"] == 7 and a["n"] == 2 and a["candidates"] == 4 and a["warnings"] == []
    assert len(a["images"]) == 2
    scores = [im["score"] for im in a["images"]]
    assert scores == sorted(scores, reverse=True)  # best CLIP score first
    for im in a["images"]:
        img = Image.open(io.BytesIO(base64.b64decode(im["png"])))
        assert img.format == "PNG" and img.size == (32, 32) == (im["width"], im["height"])
        assert set(im["checker"]) == {
            "passed", "count", "color_shape", "size", "position", "relation",
        }  # fmt: skip
        assert im["checker"]["relation"] is None  # not claimed by "a red circle"
    assert [i["png"] for i in a["images"]] == [i["png"] for i in b["images"]]
    assert [i["png"] for i in a["images"]] != [i["png"] for i in c["images"]]


def test_free_text_prompt_has_no_verdict_and_seed_is_reported(client) -> None:
    r = client.post("/api/generate", json={"prompt": "a cat playing a violin", "n": 1}).json()
    assert r["checker_understands"] is False and r["images"][0]["checker"] is None
    assert isinstance(r["seed"], int)


def test_overlong_prompt_is_cut_with_a_warning(client) -> None:
    r = client.post("/api/generate", json={"prompt": "a red circle " * 40, "n": 1})
    assert r.status_code == 200
    body = r.json()
    assert len(body["prompt"]) <= 300
    assert any("prompt cut to 300 characters" in w for w in body["warnings"])
    assert any("text tokens were cut" in w for w in body["warnings"])  # the model's context


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "a red circle", "n": -1}, "n must be between 1 and 16, got -1"),
        ({"prompt": "a red circle", "n": 10_000}, "n must be between 1 and 16"),
        ({"prompt": "a red circle", "candidates": 999}, "and 64, got 999"),
        ({"prompt": "a red circle", "n": 4, "candidates": 2}, "between n = 4 and 64"),
        ({"prompt": "a red circle", "steps": 10_000}, "steps must be between 1 and 250"),
        ({"prompt": "a red circle", "steps": 10}, "does not take steps"),
        ({"prompt": "a red circle", "guidance": -2}, "guidance: Input should be greater than or"),
        ({"prompt": "a red circle", "guidance": 51}, "guidance must be between 0 and 50"),
        ({"prompt": "a red circle", "seed": -5}, "seed must be between 0 and"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "a red circle", "n": "many"}, "n: Input should be a valid integer"),
        ({"prompt": "a red circle", "path": "/etc/passwd"}, "Extra inputs are not permitted"),
        ({}, "prompt: Field required"),
    ],
)
def test_bad_parameters_are_422_naming_the_cap(client, body, message) -> None:
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_bad_json_is_422(client) -> None:
    r = client.post(
        "/api/generate", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


def test_model_names_are_names_never_paths(client) -> None:
    for name in ("../../etc/passwd", "/tmp", "dalle"):
        r = client.post("/api/generate", json={"prompt": "a red circle", "model": name})
        assert r.status_code == 404 and "unknown model" in r.json()["detail"]


def test_oversized_body_is_413(client) -> None:
    big = json.dumps({"prompt": "x" * (300 * 1024)}).encode()
    r = client.post("/api/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit of 262144" in r.json()["detail"]
    r = client.post(
        "/api/complete",
        files={"image": ("a.png", b"\0" * (300 * 1024), "image/png")},
        data={"prompt": "a red circle"},
    )
    assert r.status_code == 413


def test_chunked_oversized_body_is_413(client) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 8192

    r = client.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


def test_complete_keeps_rows_and_is_deterministic(client) -> None:
    form = {"prompt": "a red circle", "keep_rows": "3", "seed": "5", "n": "2"}
    files = {"image": ("anything.png", _png(), "image/png")}
    a = client.post("/api/complete", files=files, data=form)
    assert a.status_code == 200, a.text
    b = client.post("/api/complete", files=files, data=form).json()
    a = a.json()
    assert a["keep_rows"] == 3 and len(a["images"]) == 2
    assert [i["png"] for i in a["images"]] == [i["png"] for i in b["images"]]
    given = Image.open(io.BytesIO(base64.b64decode(a["given"])))
    assert given.size == (32, 32) and given.getpixel((16, 31)) == (255, 255, 255)
    assert given.getpixel((16, 2)) == (200, 30, 30)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_bomb_png(), "decompression bomb"),  # Pillow's own limit, caught
        (_bomb_png(5000), "5000x5000 = 25000000 pixels exceeds the cap of 262144"),
        (_png(600, 600), "pixels exceeds the cap of 262144"),  # a real image over the cap
        (b"just some text, renamed to .png\n" * 4, "not a readable image"),
        (b"", "empty"),
        (_png()[:60], "bad image"),  # truncated
    ],
    ids=["bomb", "bomb-under-pillow-cap", "over-cap", "text-as-png", "empty", "truncated"],
)
def test_bad_uploads_are_400(client, data, message) -> None:
    r = client.post(
        "/api/complete", files={"image": ("x.png", data, "image/png")}, data={"prompt": "a"}
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]
    assert client.get("/healthz").status_code == 200  # still up


def test_refused_format_is_400(client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "TIFF")
    files = {"image": ("x.tif", buf.getvalue(), "image/tiff")}
    r = client.post("/api/complete", files=files, data={"prompt": "a red circle"})
    assert r.status_code == 400 and "bad image" in r.json()["detail"]


@pytest.mark.parametrize("rows", ["0", "8", "99"])
def test_complete_rows_out_of_range_is_422(client, rows) -> None:
    files = {"image": ("x.png", _png(), "image/png")}
    r = client.post("/api/complete", files=files, data={"prompt": "a", "keep_rows": rows})
    assert r.status_code == 422 and "keep_rows must be between 1 and 7" in r.json()["detail"]


def test_progress_events_then_result(client) -> None:
    r = client.post(
        "/api/generate",
        json={"prompt": "a red circle", "n": 1, "seed": 3},
        headers={"accept": "text/event-stream"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [
        (b.split("\n")[0].removeprefix("event: "), json.loads(b.split("\n")[1][6:]))
        for b in r.text.strip().split("\n\n")
    ]
    assert events[0][0] == "progress" and events[-1][0] == "result"
    assert events[-1][1]["seed"] == 3 and len(events[-1][1]["images"]) == 1


def _post_in_thread(client, results, body):
    def go():
        results.append(client.post("/api/generate", json=body))

    t = threading.Thread(target=go)
    t.start()
    return t


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_queue_full_is_429_with_retry_after(pipe) -> None:
    blocking = BlockingPipeline(pipe)
    app = create_app(ServeConfig(models=("b",), queue_size=1), pipelines={"b": blocking})
    slot = app.state.slots["b"]
    body = {"prompt": "a red circle", "n": 1, "seed": 1}
    with TestClient(app) as client:
        results = []
        first = _post_in_thread(client, results, body)
        _wait_for(lambda: blocking.calls == 1)  # running, blocked
        second = _post_in_thread(client, results, body)
        _wait_for(lambda: slot.pending == 2)  # waiting in the queue
        r = client.post("/api/generate", json=body)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"]
        h = client.get("/healthz").json()  # health still answers while busy
        assert h["models"][0]["pending"] == 2
        blocking.release.set()
        first.join(20)
        second.join(20)
        assert [x.status_code for x in results] == [200, 200]
        assert client.post("/api/generate", json=body).status_code == 200  # room again


def test_time_limit_is_504_and_frees_the_queue(pipe) -> None:
    blocking = BlockingPipeline(pipe)
    config = ServeConfig(models=("b",), queue_size=1, request_timeout_s=0.3)
    app = create_app(config, pipelines={"b": blocking})
    with TestClient(app) as client:
        t0 = time.monotonic()
        r = client.post("/api/generate", json={"prompt": "a red circle", "n": 1})
        assert r.status_code == 504 and "0.3 s limit" in r.json()["detail"]
        assert time.monotonic() - t0 < 5
        blocking.release.set()
        _wait_for(lambda: app.state.slots["b"].pending == 0)
        assert client.post("/api/generate", json={"prompt": "a", "n": 1}).status_code == 200
