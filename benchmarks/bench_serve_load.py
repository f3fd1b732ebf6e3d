"""Bounded load on ``tessera serve``: 16 clients x 5 requests against a server on 127.0.0.1
(a subprocess running the real CLI) with two tiny random-weight models loaded, a DALL·E and
an unCLIP one; the clients alternate between them, each request with every field the model
takes (the page's guidance, and steps for unCLIP). Prints one JSON line: requests, 200s,
429s, other answers, p50/p95 latency of the 200s, the answers per model, the server's RSS
before and after, its peak RSS, and whether /healthz still answers.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 16] [--requests 5]

Every request must get a 200 or a 429 (the bounded queue), none a 5xx or a hang past the time
limit; tests/integration/test_serve_load.py runs the same and checks it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (VmRSS now, VmHWM the peak), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def serve_subprocess(
    model_dirs: Path | list[Path], port: int, *, timeout_s: float = 30, queue_size: int = 4
):
    """``tessera serve`` of one or more model folders (each served under its folder name) on
    127.0.0.1:port in a subprocess; yields (base URL, pid)."""
    import httpx

    dirs = model_dirs if isinstance(model_dirs, list) else [model_dirs]
    cmd = [sys.executable, "-m", "tessera", "serve"]
    for d in dirs:
        cmd += ["--model", str(d)]
    cmd += ["--port", str(port), "--timeout", str(timeout_s), "--queue-size", str(queue_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"tessera serve exited {proc.returncode}:\n{out[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("tessera serve did not answer /healthz within 90 s")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(base: str, pid: int, *, clients: int = 16, requests: int = 5,
             time_limit_s: float = 30) -> dict:  # fmt: skip
    """``clients`` threads each sending ``requests`` generate requests, spread over every
    loaded model (from /healthz) with every field it takes; the figures."""
    import httpx

    loaded = httpx.get(base + "/healthz", timeout=10).json()["models"]
    results: list[tuple[int, float]] = []
    per_model: dict[str, dict[str, int]] = {m["name"]: {} for m in loaded}
    lock = threading.Lock()
    peak_sampled = [rss_kb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                peak_sampled.append(rss_kb(pid))

    def client(c: int) -> None:
        with httpx.Client(timeout=time_limit_s + 10) as http:
            for r in range(requests):
                model = loaded[(c + r) % len(loaded)]
                body = {"prompt": "a red circle", "model": model["name"], "n": 2,
                        "candidates": 4, "seed": c * 100 + r}  # fmt: skip
                for field, setting in model.get("settings", {}).items():
                    body[field] = setting["default"]  # what the page sends
                t0 = time.monotonic()
                try:
                    status = http.post(base + "/api/generate", json=body).status_code
                except httpx.HTTPError:
                    status = -1  # no answer in time, or the connection failed
                with lock:
                    results.append((status, time.monotonic() - t0))
                    counts = per_model[model["name"]]
                    counts[str(status)] = counts.get(str(status), 0) + 1

    rss_before = rss_kb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    healthz = httpx.get(base + "/healthz", timeout=10).status_code
    ok = sorted(s for code, s in results if code == 200)
    q = statistics.quantiles(ok, n=20) if len(ok) >= 2 else ok * 19 or [float("nan")] * 19
    return {
        "requests": len(results),
        "ok_200": len(ok),
        "busy_429": sum(code == 429 for code, _ in results),
        "other": sorted({code for code, _ in results} - {200, 429}),
        "latency_p50_s": round(statistics.median(ok), 4) if ok else None,
        "latency_p95_s": round(q[18], 4) if ok else None,
        "latency_max_s": round(max(s for _, s in results), 4),
        "wall_s": round(wall, 2),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_mb": round(rss_kb(pid) / 1024, 1),
        "peak_rss_mb": round(max(max(peak_sampled), rss_kb(pid, "VmHWM")) / 1024, 1),
        "healthz_after": healthz,
        "per_model": per_model,
        "clients": clients,
        "requests_per_client": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.serve import build_tiny_pipeline, build_tiny_unclip_pipeline, free_port

    with tempfile.TemporaryDirectory() as tmp:
        models = [
            build_tiny_pipeline(Path(tmp) / "dalle"),
            build_tiny_unclip_pipeline(Path(tmp) / "unclip"),
        ]
        with serve_subprocess(models, free_port()) as (base, pid):
            figures = run_load(base, pid, clients=args.clients, requests=args.requests)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
