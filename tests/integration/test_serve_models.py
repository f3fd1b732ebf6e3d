"""``tessera serve`` with a DALL·E and an unCLIP model loaded at once (tiny random weights):
every route and every request field against each model. A field is set on the chosen model's
own settings (unCLIP: ``guidance`` -> ``decoder_guidance``, ``steps`` -> ``decoder_steps``) or
refused with a 422 naming it; bad numbers (``1e400``, ``Infinity``, ``NaN``) are 422s; an
overlong prompt is cut with a warning for both models; a fault is a JSON 500 (or an SSE error
event) with no traceback, logged once."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient
from PIL import Image

from helpers.serve import FailingPipeline, build_tiny_pipeline, build_tiny_unclip_pipeline
from tessera.apps.serve import ServeConfig, create_app
from tessera.pipelines import load_pipeline

MODELS = ("dalle", "unclip")
# generic request field -> the setting it sets, per model (None: the model refuses it)
TARGETS = {
    "dalle": {"guidance": "guidance", "steps": None},
    "unclip": {"guidance": "decoder_guidance", "steps": "decoder_steps"},
}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    return {
        "dalle": load_pipeline(build_tiny_pipeline(root / "dalle")),
        "unclip": load_pipeline(build_tiny_unclip_pipeline(root / "unclip")),
    }


@pytest.fixture(scope="module")
def client(pipes):
    config = ServeConfig(models=MODELS, max_body_bytes=256 * 1024)
    with TestClient(create_app(config, pipelines=dict(pipes))) as c:
        yield c


def _post(client, model, **fields):
    return client.post("/api/generate", json={"prompt": "a red circle", "model": model, **fields})


def _events(response) -> list[tuple[str, dict]]:
    return [
        (b.split("\n")[0].removeprefix("event: "), json.loads(b.split("\n")[1][6:]))
        for b in response.text.strip().split("\n\n")
    ]


def test_healthz_lists_both_models_with_the_settings_each_field_sets(client, pipes) -> None:
    h = client.get("/healthz").json()
    by_name = {m["name"]: m for m in h["models"]}
    assert list(by_name) == list(MODELS)
    assert by_name["dalle"]["kind"] == "dalle" and by_name["unclip"]["kind"] == "unclip"
    for name in MODELS:
        settings = by_name[name]["settings"]
        want = {f: t for f, t in TARGETS[name].items() if t is not None}
        assert {f: s["setting"] for f, s in settings.items()} == want
        for field, s in settings.items():
            assert s["default"] == getattr(pipes[name].settings, want[field])
        assert by_name[name]["max_prompt_tokens"] == pipes[name].max_prompt_tokens
    assert by_name["unclip"]["default_guidance"] == 3.0  # the decoder's
    assert "image_prompt_rows" in by_name["dalle"] and "image_prompt_rows" not in by_name["unclip"]


@pytest.mark.parametrize("model", MODELS)
def test_every_field_is_taken_and_same_seed_same_images(client, model) -> None:
    fields = {"n": 2, "candidates": 3, "seed": 11, "guidance": 2.0}
    if TARGETS[model]["steps"]:
        fields["steps"] = 3
    a = _post(client, model, **fields)
    assert a.status_code == 200, a.text
    a = a.json()
    b = _post(client, model, **fields).json()
    c = _post(client, model, **{**fields, "seed": 12}).json()
    assert a["model"] == model and a["n"] == 2 and a["candidates"] == 3 and a["seed"] == 11
    assert a["guidance"] == 2.0 and a["settings"][TARGETS[model]["guidance"]] == 2.0
    if TARGETS[model]["steps"]:
        assert a["steps"] == 3 and a["settings"]["decoder_steps"] == 3
    else:
        assert a["steps"] is None
    assert len(a["images"]) == 2
    scores = [im["score"] for im in a["images"]]
    assert scores == sorted(scores, reverse=True)  # reranked by the model's CLIP, best first
    for im in a["images"]:
        img = Image.open(io.BytesIO(base64.b64decode(im["png"])))
        assert img.format == "PNG" and img.size == (32, 32) == (im["width"], im["height"])
        assert im["checker"] is not None  # "a red circle" is in the checker's grammar
    assert [i["png"] for i in a["images"]] == [i["png"] for i in b["images"]]
    assert [i["png"] for i in a["images"]] != [i["png"] for i in c["images"]]


@pytest.mark.parametrize("model", MODELS)
def test_omitted_fields_take_the_models_defaults(client, pipes, model) -> None:
    r = _post(client, model, n=1)
    assert r.status_code == 200, r.text
    r = r.json()
    assert r["candidates"] == 1 and isinstance(r["seed"], int)
    target = TARGETS[model]["guidance"]
    assert r["guidance"] == getattr(pipes[model].settings, target)


def test_unclip_takes_the_pages_guidance_field(client) -> None:
    """The reported bug: the page always sends guidance; unCLIP answered 500."""
    r = client.post("/api/generate", json={"prompt": "a red circle", "model": "unclip",
                                           "guidance": 2, "n": 1})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["settings"]["decoder_guidance"] == 2.0


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("dalle", {"steps": 10}, "steps: model 'dalle' (dalle) does not take steps"),
        ("unclip", {"steps": 1}, "steps (decoder_steps): decoder_steps must be >= 2, got 1"),
        ("unclip", {"steps": 10_000}, "steps must be between 1 and 250"),
        ("dalle", {"guidance": -1}, "guidance: Input should be greater than or equal to 0"),
        ("unclip", {"guidance": 51}, "guidance must be between 0 and 50"),
        ("unclip", {"candidates": 999}, "and 64, got 999"),
        ("dalle", {"n": 0}, "n must be between 1 and 16, got 0"),
        ("unclip", {"seed": 2**32}, "seed must be between 0 and"),
        ("unclip", {"temperature": 0.5}, "temperature: model 'unclip' (unclip) does not take"),
        ("dalle", {"decoder_guidance": 2}, "decoder_guidance: model 'dalle' (dalle) does not"),
        ("unclip", {"guidance": 2, "decoder_guidance": 3}, "set the same setting"),
        ("unclip", {"prior_steps": 999}, "prior_steps must be between 1 and 250"),
        ("unclip", {"prior_kind": "lstm"}, "prior_kind: Input should be 'diffusion' or 'ar'"),
        ("dalle", {"compile": True}, "Extra inputs are not permitted"),  # the operator's
    ],
)
def test_fields_a_model_cannot_use_are_422_naming_them(client, model, fields, message) -> None:
    r = _post(client, model, **fields)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("field", ["n", "candidates", "guidance", "seed", "steps"])
@pytest.mark.parametrize("number", ["1e400", "-1e400", "Infinity", "-Infinity", "NaN"])
def test_non_finite_numbers_are_422_not_500(client, model, field, number) -> None:
    body = f'{{"prompt": "a red circle", "model": "{model}", "{field}": {number}}}'
    r = client.post(
        "/api/generate", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{field}: ") and "finite number" in detail, detail


@pytest.mark.parametrize("model", MODELS)
def test_overlong_prompt_is_cut_with_a_warning_for_every_model(client, pipes, model) -> None:
    long = "a red circle above a blue square " * 12  # over 300 characters, over the context
    r = client.post("/api/generate", json={"prompt": long, "model": model, "n": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["prompt"]) <= 300 and len(body["images"]) == 1
    assert any("prompt cut to 300 characters" in w for w in body["warnings"])
    room = pipes[model].max_prompt_tokens
    assert any(f"longer than the model's {room} text tokens were cut" in w
               for w in body["warnings"]), body["warnings"]  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
def test_progress_events_then_result_for_every_model(client, model) -> None:
    fields = {"n": 1, "seed": 3, "guidance": 1.5}
    if TARGETS[model]["steps"]:
        fields["steps"] = 2
    r = client.post(
        "/api/generate",
        json={"prompt": "a red circle", "model": model, **fields},
        headers={"accept": "text/event-stream"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert events[0][0] == "progress" and {e for e, _ in events[:-1]} == {"progress"}
    kind, result = events[-1]
    assert kind == "result" and result["model"] == model and result["seed"] == 3
    assert result["guidance"] == 1.5 and len(result["images"]) == 1


@pytest.mark.parametrize("model", MODELS)
def test_bad_field_on_the_event_stream_is_a_plain_422(client, model) -> None:
    r = client.post(
        "/api/generate",
        json={"prompt": "a red circle", "model": model, "steps": 1},
        headers={"accept": "text/event-stream"},
    )
    assert r.status_code == 422 and "steps" in r.json()["detail"]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("model", MODELS)
def test_complete_route_for_every_model(client, model) -> None:
    files = {"image": ("a.png", _png(), "image/png")}
    form = {"prompt": "a red circle", "model": model, "n": "1", "seed": "2", "guidance": "1.5"}
    r = client.post("/api/complete", files=files, data=form)
    if model == "dalle":
        assert r.status_code == 200, r.text
        assert r.json()["guidance"] == 1.5 and len(r.json()["images"]) == 1
    else:  # unCLIP does not complete images: refused by name, never a 500
        assert r.status_code == 422 and "does not take image prompts" in r.json()["detail"]
    r = client.post("/api/complete", files=files, data={**form, "guidance": "inf"})
    assert r.status_code == 422 and "guidance must be between 0 and 50" in r.json()["detail"]


@pytest.fixture()
def failing_client(pipes):
    failing = {name: FailingPipeline(pipe) for name, pipe in pipes.items()}
    with TestClient(create_app(ServeConfig(models=MODELS), pipelines=failing)) as c:
        yield c


def _serve_records(caplog) -> list[logging.LogRecord]:
    """Every error logged (by tessera.serve, Starlette, anyone): the fault must be one."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("model", MODELS)
def test_a_fault_is_a_json_500_logged_once(failing_client, caplog, model) -> None:
    with caplog.at_level(logging.ERROR):
        r = _post(failing_client, model, n=1)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "internal server error (logged on the server)"}
    assert "Traceback" not in r.text and "boom" not in r.text
    (record,) = _serve_records(caplog)
    assert "boom" in record.getMessage() and record.exc_info is not None


@pytest.mark.parametrize("model", MODELS)
def test_a_fault_on_the_event_stream_is_an_error_event_logged_once(
    failing_client, caplog, model
) -> None:
    with caplog.at_level(logging.ERROR):
        r = failing_client.post(
            "/api/generate",
            json={"prompt": "a red circle", "model": model, "n": 1},
            headers={"accept": "text/event-stream"},
        )
    kind, data = _events(r)[-1]
    assert kind == "error" and data["status"] == 500 and "boom" not in r.text
    assert len(_serve_records(caplog)) == 1


class _BrokenCaps:
    """A model whose capabilities fail: the fault happens on the request path itself."""

    kind = "broken"
    image_size = 32

    @property
    def capabilities(self):
        raise RuntimeError("capabilities exploded")


def test_a_fault_outside_the_model_queue_is_a_json_500_logged_once(caplog) -> None:
    app = create_app(ServeConfig(models=("broken",)), pipelines={"broken": _BrokenCaps()})
    with TestClient(app) as c, caplog.at_level(logging.ERROR):
        r = c.post("/api/generate", json={"prompt": "a red circle"})
    assert r.status_code == 500 and r.json()["detail"].startswith("internal server error")
    assert "Traceback" not in r.text and "exploded" not in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]  # still our headers
    assert len(_serve_records(caplog)) == 1
