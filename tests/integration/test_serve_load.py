"""A bounded load test of ``tessera serve`` on 127.0.0.1: 16 clients x 5 requests against a
server with both kinds of model loaded, a tiny DALL·E and a tiny unCLIP (the real CLI in a
subprocess), the clients alternating between them with every field each model takes. Every
request gets a 200 or a 429, none a 5xx or a hang; both models serve; the server's memory
stays bounded; /healthz answers after. The figures go to ``load.json`` in the test's tmp dir
(and are printed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers.serve import build_tiny_pipeline, build_tiny_unclip_pipeline, free_port

pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="needs httpx: pip install -e '.[dev]'")

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve_load.py"
_spec = importlib.util.spec_from_file_location("bench_serve_load", _BENCH)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_serve_load", bench)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def tiny_pipeline_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return [build_tiny_pipeline(root / "dalle"), build_tiny_unclip_pipeline(root / "unclip")]


TIME_LIMIT_S = 30


@pytest.mark.slow
def test_sixteen_clients_get_200_or_429_and_memory_stays_bounded(tiny_pipeline_dirs, tmp_path):
    with bench.serve_subprocess(tiny_pipeline_dirs, free_port(), timeout_s=TIME_LIMIT_S) as (
        base,
        pid,
    ):
        figures = bench.run_load(base, pid, clients=16, requests=5, time_limit_s=TIME_LIMIT_S)
    (tmp_path / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    assert figures["requests"] == 80
    assert figures["other"] == [], figures  # no 5xx, no timeout, no refused connection
    assert figures["ok_200"] + figures["busy_429"] == 80
    assert figures["ok_200"] >= 5  # the queue drains: every client gets some work done
    assert set(figures["per_model"]) == {"dalle", "unclip"}
    for name, counts in figures["per_model"].items():  # both kinds served under load
        assert set(counts) <= {"200", "429"} and counts.get("200", 0) >= 2, (name, counts)
    assert figures["latency_max_s"] < TIME_LIMIT_S
    assert figures["healthz_after"] == 200
    # bounded: the tiny model's server stays small and does not grow with the load
    assert figures["peak_rss_mb"] < 1500, figures
    assert figures["rss_after_mb"] - figures["rss_before_mb"] < 300, figures
