"""The one prepared script for a lent GPU (issue 18): CUDA paths a CPU cannot exercise.

Run it in one call on the device machine (it prints one JSON line and, when ``$OUT`` is set,
writes it to ``$OUT/gpu_check.json`` too):

    python benchmarks/gpu_check.py                 # on the GPU machine (~3-5 min)
    python benchmarks/gpu_check.py --device cpu --quick   # a CPU dry run (the test suite's)

Parts (each reports ``ok`` or its one-line error, and the script goes on to the next):
  train   the tiny pipeline end to end on the device: tokenizer, dVAE (2 steps), transformer
          (4 steps, bf16 autocast, the sample hook every 2 steps: the generator-device bug
          would end the run at step 2), then ``tessera generate --compile --precision bf16``.
  flex    FlexAttention (compiled on CUDA) against SDPA with the dense mask for every mask kind
          of the sparse transformer at 64 text + 16x16 image tokens: forward and input-gradient
          max |difference| in fp32 and bf16 (on CPU: forward only, eager flex).
  figures s128-d8-full (d 256, 8 layers, 8192 image tokens, batch 8): training samples/s in
          bf16 eager and compiled; cached sampling image tokens/s at batch 4 (bf16 eager and
          compiled), and 512 candidates of one caption in images/s (compiled bf16).
  convert released layouts on the device: a small random Karlo folder (built by diffusers
          and transformers, as the parity tests build it) through `tessera convert karlo`, and
          a small ruDALL-E layout (built with ruDALL-E's own modules) through `tessera convert
          rudalle`; each converted pipeline moved to the device and sampled (needs the
          test-only references, as `make test` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def part(name: str, fn, *args) -> dict:
    t = time.perf_counter()
    try:
        out = {"ok": True, **fn(*args)}
    except Exception as e:  # a failing part is reported, the others still run
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        traceback.print_exc()
    out["wall_s"] = round(time.perf_counter() - t, 1)
    log(f"{name}: {'ok' if out['ok'] else out['error']} ({out['wall_s']} s)")
    return out


def check_train(device: str, quick: bool) -> dict:
    from tessera.cli.main import main

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        d = Path(tmp)  # the commands' own messages go to stderr: stdout is the JSON line
        steps = ["--no-progress"]
        rc = [main(["tokenizer", "train", "shapes", "--n", "200", "--out", str(d / "tok"),
                    "--preset", "tiny"])]  # fmt: skip
        rc.append(main(["vae", "train", "--preset", "tiny", "--run-dir", str(d / "vae"),
                        "--steps", "2", *steps]))  # fmt: skip
        rc.append(main(["dalle", "train", "--preset", "tiny", "--run-dir", str(d / "run"),
                        "--vae", str(d / "vae" / "final"), "--tokenizer", str(d / "tok"),
                        "--steps", "4", *steps, "train.precision=bf16",
                        "train.sample_every=2"]))  # fmt: skip
        gen = ["generate", "a red circle", "--model", str(d / "run" / "final"), "--n", "2",
               "--precision", "bf16", "--out", str(d / "gen")]  # fmt: skip
        rc.append(main(gen if quick else [*gen, "--compile"]))
        metrics = (d / "run" / "metrics.jsonl").read_text().splitlines()
        samples = sorted(p.name for p in (d / "run").rglob("*.png"))
    if any(rc):
        raise RuntimeError(f"exit codes {rc} (tokenizer, vae, dalle train, generate)")
    return {
        "device": device,
        "losses": [round(json.loads(m)["loss"], 4) for m in metrics],
        "sample_pngs": len(samples),
    }


def check_flex(device: str, quick: bool) -> dict:
    import torch

    from tessera.nn.attention import MaskSpec, SelfAttention

    cuda = device.startswith("cuda")
    out: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        for kind in ("row", "column", "conv", "full"):
            torch.manual_seed(0)
            attn = SelfAttention(256, 8).to(device).eval()
            spec = MaskSpec(kind, 64, 16, 16)
            x = torch.randn(2, 64 + 256, 256, device=device)
            res = {}
            with (
                torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32),
                contextlib.nullcontext() if cuda else torch.no_grad(),  # no CPU flex backward
            ):
                xs = [x.clone().requires_grad_(cuda) for _ in range(2)]
                ys = [attn(xi, spec, backend=b) for xi, b in zip(xs, ("sdpa", "flex"), strict=True)]
                res["forward"] = (ys[0].float() - ys[1].float()).abs().max().item()
                if cuda:  # flex has no backward on CPU (torch 2.13)
                    g = torch.randn_like(ys[0])
                    grads = [torch.autograd.grad(y, xi, g)[0] for y, xi in zip(ys, xs, strict=True)]
                    res["input_grad"] = (grads[0].float() - grads[1].float()).abs().max().item()
            out[f"{kind}_{str(dtype).removeprefix('torch.')}"] = {
                k: float(f"{v:.3g}") for k, v in res.items()
            }
    tol = {"float32": 1e-4, "bfloat16": 5e-2}
    out["within_tolerance"] = all(
        v <= tol[k.split("_")[-1]] for k, r in out.items() for v in r.values()
    )
    return out


def check_figures(device: str, quick: bool) -> dict:
    import torch

    from bench_dalle import train_step  # the same timed unit as the CPU benchmark
    from tessera.config.dalle import DalleConfig
    from tessera.config.sampling import DalleSampling
    from tessera.models.dalle import DALLE, prepare_text
    from tessera.sampling.sample import generate_image_tokens

    grid, layers = (4, 2) if quick else (16, 8)
    cfg = DalleConfig(text_vocab=10000, text_len=64, image_vocab=8192, grid_size=grid,
                      d_model=256, n_heads=8, n_layers=layers, attention="full")  # fmt: skip
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(1)

    def text(b: int) -> torch.Tensor:
        ids = torch.randint(1, 10000, (b, 63), generator=g)
        return prepare_text(ids, torch.full((b,), 63), cfg).to(dev)

    out: dict = {"config": f"grid {grid}, {layers} layers, d 256, vocab 8192, batch 8"}
    steps = 2 if quick else 10
    for compiled in (False, True):
        torch.manual_seed(0)
        model = DALLE(cfg).to(dev).train()
        if compiled:
            model.compile(dynamic=False)
        t8, img = text(8), torch.randint(0, 8192, (8, cfg.image_len), generator=g).to(dev)
        step = train_step(model, t8, img, "bf16", 3e-4)
        for _ in range(2):
            step()
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        key = "train_bf16" + ("_compiled" if compiled else "")
        out[key + "_samples_per_s"] = round(8 * steps / (time.perf_counter() - t), 2)
    model = DALLE(cfg).to(dev).eval()
    k = math.ceil(0.1 * 8192)
    for compiled in (False, True):
        s = DalleSampling(top_k=k, compile=compiled)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            t4 = text(4)
            generate_image_tokens(model, t4, settings=s)  # warm-up (compiles)
            sync()
            t = time.perf_counter()
            generate_image_tokens(model, t4, settings=s)
            sync()
        key = "gen_bf16" + ("_compiled" if compiled else "")
        out[key + "_image_tokens_per_s"] = round(4 * cfg.image_len / (time.perf_counter() - t), 1)
    n = 16 if quick else 512
    s = DalleSampling(top_k=k, compile=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        tn = text(1).expand(n, -1)
        generate_image_tokens(model, tn, settings=s)
        sync()
        t = time.perf_counter()
        generate_image_tokens(model, tn, settings=s)
        sync()
    out[f"candidates_{n}_images_per_s"] = round(n / (time.perf_counter() - t), 2)
    return out


def _on(pipe, device: str):
    """Every network of a loaded pipeline moved to ``device`` (tokenizers stay)."""
    import torch

    for value in vars(pipe).values():
        nets = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, list)
            else [value]
        )
        for net in nets:
            if isinstance(net, torch.nn.Module):
                net.to(device)
    return pipe


def check_convert(device: str, quick: bool) -> dict:
    from tessera.cli.main import main as cli
    from tessera.pipelines import load_pipeline

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.karlo_ref import small_karlo
    from helpers.rudalle_ref import small_rudalle

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        d = Path(tmp)
        karlo = small_karlo(d / "karlo-src")
        argv = ["convert", "karlo", str(karlo.folder), "--clip", str(karlo.clip_folder)]
        if cli([*argv, "--out", str(d / "karlo")]) != 0:
            raise RuntimeError("tessera convert karlo failed")
        pipe = _on(load_pipeline(d / "karlo"), device)
        t = time.perf_counter()
        s = pipe.generate(["a red cube"], n=2, seed=0)
        out["karlo"] = {"images": list(s.images.shape), "s": round(time.perf_counter() - t, 2)}
        src = small_rudalle(d / "rudalle-src")
        argv = ["convert", "rudalle", str(src), "--heads", "4", "--image-size", "16"]
        if cli([*argv, "--out", str(d / "rudalle")]) != 0:
            raise RuntimeError("tessera convert rudalle failed")
        pipe = _on(load_pipeline(d / "rudalle"), device)
        t = time.perf_counter()
        s = pipe.generate(["кот"], n=2, seed=0)
        out["rudalle"] = {"images": list(s.images.shape), "s": round(time.perf_counter() - t, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny figures (the CPU dry run)")
    p.add_argument("--parts", default="train,flex,figures,convert")
    args = p.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on the GPU machine, or --device cpu --quick")
    result: dict = {
        "bench": "gpu_check",
        "torch": torch.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    parts = {
        "train": check_train,
        "flex": check_flex,
        "figures": check_figures,
        "convert": check_convert,
    }
    for name in args.parts.split(","):
        result[name] = part(name, parts[name], args.device, args.quick)
    line = json.dumps(result)
    print(line, flush=True)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_check.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
