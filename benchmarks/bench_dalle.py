"""Stage-2 transformer: tessera's DALLE vs lucidrains' dalle-pytorch 1.6.6, same config, same run.

For each ``--presets`` name (the shared peer benchmark's presets, ../shared/bench/README.md)
tessera is built at the same shapes -- ``DalleConfig(text_vocab=10000, text_len=64,
image_vocab=<codebook>, grid_size=<image_size / 8>, d_model=256, n_heads=8, n_layers=<depth>)``
-- and measured in this process, while the peer (``peer_dalle_pytorch.py --preset NAME``) runs
in a subprocess with its own interpreter. Ours and theirs are interleaved (train: A B, gen:
A B; the order flips every round) so machine noise hits both alike. ``--threads`` intra-op
threads (default 2), one inter-op thread, fixed seeds (model ``--seed``, data ``--seed + 1``,
sampling ``--seed + 2``). Attention: ``full`` presets -> tessera ``attention="full"``; the
peer's axial preset (row, col, row, row) -> tessera ``sparse`` (the paper's row / column / conv
schedule) and ``row``; ``conv_like`` -> ``conv``. Every variant is executed as dense masked SDPA.

Usage (the peer's interpreter is ``$PEERS/bin/python``, default /tmp/peers-venv/bin/python):

    python benchmarks/bench_dalle.py [--presets s128-d4-full,s128-d8-full,s128-d4-axial]
        [--steps 10] [--warmup 3] [--rounds 1] [--threads 2] [--skip-peer] [--quick]
        [--no-compile] [--no-profile] [--candidates 512] [--no-peak-probe]

``--quick`` is a smoke test (2 steps, 1 warm-up, 1 generation, small scaling grids, 16
candidates, no GEMM probe, no waiting for a quiet machine). ``--no-compile`` keeps eager modes
only; ``--no-profile`` skips the top-op profiles; ``--candidates 0`` skips candidate sampling.

Contamination guard (as bench_vae.py, helpers in _common.py): a (tessera,
peer) pair of one phase during which other processes used more than ``--max-foreign`` of the
machine's CPU is re-run after waiting for quiet, up to ``--retries`` times.

What is timed (tessera):
  train  forward + backward + ``AdamW(lr)`` step on a fixed random batch (``--batch`` 8; text ids
         through ``prepare_text`` with full-length captions, random image tokens): ``--warmup``
         untimed steps (the first compiles in the compiled modes), then ``--steps`` timed ones;
         modes fp32, bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``), fp32_compiled and
         bf16_compiled (``model.compile()``, as ``train.compile=true``). The peer: the same
         with ``Adam``, fp32.
  gen    ``generate_image_tokens`` for ``--gen-batch`` 4 prompts, all image tokens, top-k with
         k = ceil(0.1 * image_vocab) (the peer: ``filter_thres=0.9``): KV cache on in fp32 and
         bf16 autocast, eager and compiled (``DalleSampling(compile=True)``), and off (fp32);
         one warm-up call that samples only the last 4 tokens (and compiles the step).
         The peer: ``generate_images`` as shipped (``default``) and with its KV cache patched in
         (``cache_patched``); its time also includes the dVAE decode of the 4 images.
  profile  top ops by self CPU time of 3 bf16 (compiled) train steps and one bf16 (compiled)
         generate call of each preset's first variant, on graphs compiled afresh with
         inductor's kernel names recorded (not the timed runs).
  candidates  the paper's candidate sampling: one caption x ``--candidates`` (512) samples in
         one batch, bf16 compiled, image tokens only (no dVAE decode, no CLIP), on the first
         preset: images/s.
  scaling  cached sampling at d4, full attention, image vocab 8192, for each ``--scaling-grids``
         side (8,16,32 = 64, 256, 1024 image tokens), fp32 eager and bf16 compiled: seconds per
         token; ``max_over_min`` <= 1.5 is the issue's "flat" target.
  GEMM peak  ``../shared/bench/cpu_gemm_peak.py`` in a subprocess at the start: this machine's
         fp32 / bf16 matmul peak, the denominator of ``mfu_measured_peak`` (``mfu`` uses the
         nominal ``--peak-fp32`` / ``--peak-bf16``, the issue's figures for its machine).

JSON fields (one line on stdout; progress goes to stderr):
  bench, torch, python, threads, cpu_count: identification.
  peer: "dalle-pytorch <version>" (null with --skip-peer or when every peer run failed).
  gemm_peak_probe: {cpu, peak_gflops {float32, bfloat16}} of this machine (null with
    --no-peak-probe / --quick).
  settings: the run's parameters: batch, gen_batch, steps, warmup, rounds, lr, seed, top_k_frac,
    peak_gflops {fp32, bf16} (the MFU denominators), max_foreign, peer_python, peer_script.
  presets.NAME:
    config: the shared shapes (text_vocab, text_len, image_vocab, grid_size, image_len, d_model,
      n_heads, depth), peer_attn_types, tessera_variants, gen_repeats.
    tessera.VARIANT:
      layer_kinds: mask kind per layer.
      params: total, blocks_linear (nn.Linear weights in the blocks), embeddings (the tied
        text + image tables, which are also the output head).
      flops_per_train_step: positions (text_len + image_len - 1, as computed), linear_6NT
        (6 * blocks_linear * positions * batch), head_6NT (the tied head as computed: text logits
        over text_vocab + text_len rows at text_len - 1 positions, image logits over image_vocab
        at image_len positions, x6), attn_12LdT2 (12 * L * d * positions^2 * batch: scores and
        A.V as executed densely, whatever the mask), total.
      train.{fp32,bf16,fp32_compiled,bf16_compiled}: step_s {median, min, max, n};
        first_step_s (compiling included); samples_per_s (median step) and
        samples_per_s_minmax; image_tokens_per_s; tokens_per_s (text + image per sample);
        loss_first / loss_last (first warm-up and last timed step); achieved_gflops (total /
        median step), peak_gflops and mfu (their ratio) for that precision; own_cpu_util;
        mfu_measured_peak; foreign_cpu_frac. With --rounds > 1: the median round, plus
        samples_per_s_rounds. train_best: the fastest mode; mfu_bf16_best,
        mfu_measured_peak_bf16_best: the best bf16 mode's.
      gen.{cached_fp32, cached_bf16, cached_fp32_compiled, cached_bf16_compiled,
        uncached_fp32}: warmup_s (compiling included), batch_s {median, min, max, n} (one
        generate call for the whole batch), image_tokens_per_s (gen_batch * image_len /
        median), ms_per_token_step, foreign_cpu_frac; cached_* also token_match_vs_uncached
        (share of sampled tokens equal to the fp32 uncached run, same seed).
      gen_best_cached: the fastest cached mode; gen_bf16_not_slower_than_fp32: the best bf16
        mode's tokens/s >= the best fp32 mode's.
    profile: {train_bf16_compiled, gen_cached_bf16_compiled}: [{op, self_ms_per_call, share,
      calls_per_call}] (per train step / per generate call).
    peer: the peer's figures (a subset of its JSON): config_matches (its shapes equal ours),
      params.matmul_N, flops_per_train_step (6N_T_plus_attn_as_executed), train {samples_per_s,
      samples_per_s_minmax, step_s, loss_first, loss_last, achieved_gflops_6N_attn, mfu_6N_attn,
      foreign_cpu_frac}, gen.{default, cache_patched} {batch_s, image_tokens_per_s,
      foreign_cpu_frac}, peak_rss_mb {train, gen}; or {"error": ...} when the run failed.
    ratios.VARIANT (tessera / peer, median of the per-round ratios; > 1: tessera is faster):
      train_MODE (samples/s over the peer's fp32 samples/s), train_best; gen_MODE_vs_shipped
      and gen_MODE_vs_cache_patched for each cached MODE (our image tokens/s over the peer's
      default and cache_patched); gen_best_vs_shipped / gen_best_vs_cache_patched.
    goals.VARIANT: targets as booleans. Issue 18: train_5x_best, sample_3x_cache_patched_best,
      sample_bf16_not_slower, mfu_bf16_25pct (nominal peak), mfu_bf16_25pct_of_measured_peak.
      Earlier: train_2x_fp32, train_2x_bf16 (>= 2x); sample_10x_shipped_fp32,
      sample_10x_shipped_best (>= 10x the shipped sampler); sample_2x_cache_patched_fp32,
      sample_2x_cache_patched_best (>= 2x the cache-patched one).
  candidate_sampling: preset, variant, candidates, precision, compiled, batch_s, images_per_s,
    image_tokens_per_s, foreign_cpu_frac.
  sampling_scaling: depth, attention, image_vocab, gen_batch, modes.{fp32, bf16_compiled}:
    per grid side ("8", ...): image_len, batch_s, s_per_token (batch_s / image_len),
    relative_s_per_token (vs the smallest grid; ~1 everywhere = cost linear in the number of
    image tokens), foreign_cpu_frac; max_over_min. flat_within_1_5x.{mode}: max_over_min <= 1.5.
  foreign_cpu_frac_max: the worst foreign share of any kept measurement (ours or the peer's).
  discarded_pairs: contaminated (tessera, peer) pairs that were re-run.
  peak_rss_mb: this process's peak RSS (all presets, tessera only; the peer's is its own).
  wall_s: the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import Contention, wait_quiet

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if SRC.is_dir():
    sys.path.insert(0, str(SRC))

PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_dalle_pytorch.py"
GEMM_PROBE = ROOT.parent / "shared" / "bench" / "cpu_gemm_peak.py"
PEER_PYTHON = os.path.join(os.environ.get("PEERS", "/tmp/peers-venv"), "bin", "python")

TEXT_VOCAB, TEXT_LEN, D_MODEL, N_HEADS = 10000, 64, 256, 8
AXIAL = "axial_row,axial_col,axial_row,axial_row"
# The peer's PRESETS (peer_dalle_pytorch.py; image tokens = (image_size / 2**3)**2):
# name -> (grid side, image vocab, depth, the peer's attn_types, tessera's attention variants).
PRESETS = {
    "s64-d4-full": (8, 1024, 4, "full", ("full",)),
    "s64-d8-full": (8, 1024, 8, "full", ("full",)),
    "s64-d4-full-8k": (8, 8192, 4, "full", ("full",)),
    "s64-d4-axial": (8, 1024, 4, AXIAL, ("sparse", "row")),
    "s64-d4-conv": (8, 1024, 4, "conv_like", ("conv",)),
    "s128-d4-full": (16, 8192, 4, "full", ("full",)),
    "s128-d8-full": (16, 8192, 8, "full", ("full",)),
    "s128-d4-axial": (16, 8192, 4, AXIAL, ("sparse", "row")),
    "s128-d4-conv": (16, 8192, 4, "conv_like", ("conv",)),
    # not a peer preset: the same stream at d 512 (8 heads of 64), for the bf16 MFU target;
    # the peer is given the shapes as flags
    "s128-d8-full-d512": (16, 8192, 8, "full", ("full",)),
}
WIDTH = {"s128-d8-full-d512": 512}  # d_model where not D_MODEL
TRAIN_MODES = ("fp32", "bf16", "fp32_compiled", "bf16_compiled")
GEN_MODES = ("cached_fp32", "cached_bf16", "cached_fp32_compiled", "cached_bf16_compiled")


def log(msg: str) -> None:
    print(f"[bench_dalle] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--presets",
        default="s128-d4-full,s128-d8-full,s128-d4-axial",
        help=f"comma list of {', '.join(PRESETS)}",
    )
    p.add_argument("--steps", type=int, default=None, help="timed train steps (10; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed train steps (3; --quick 1)")
    p.add_argument(
        "--gen-repeats",
        type=int,
        default=None,
        help="timed generate calls per mode (3 if image_len <= 64 else 1, as the peer; --quick 1)",
    )
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds per preset")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--top-k-frac", type=float, default=0.1, help="top_k = ceil(frac * vocab)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peak-fp32", type=float, default=323.0, help="nominal fp32 GEMM peak, GFLOP/s (issue 18)"
    )
    p.add_argument(
        "--peak-bf16", type=float, default=2271.0, help="nominal bf16 GEMM peak, GFLOP/s"
    )
    p.add_argument(
        "--no-peak-probe",
        action="store_true",
        help="skip measuring this machine's GEMM peak (../shared/bench/cpu_gemm_peak.py) in "
        "the run; MFU is then against the nominal peaks only",
    )
    p.add_argument(
        "--scaling-grids",
        default=None,
        help="grid sides for the sampling-cost scaling test (8,16,32; --quick 4,8; '' skips)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="eager only (no torch.compile variants)"
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="candidate sampling: one caption x this many samples, compiled bf16, on the "
        "first preset (512, the paper's; --quick 16; 0 skips)",
    )
    p.add_argument(
        "--no-profile", action="store_true", help="skip the top-ops profiles (train and gen)"
    )
    p.add_argument(
        "--phases", default="train,gen", help="train,gen (default) | train | gen, per preset"
    )
    p.add_argument("--skip-peer", action="store_true", help="time tessera only")
    p.add_argument("--peer-python", default=PEER_PYTHON, help="the peer venv's interpreter")
    p.add_argument("--peer-script", default=str(PEER_SCRIPT))
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds per peer run")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny runs, no waiting")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="a (tessera, peer) pair during which other processes used more than this share "
        "of the CPU is re-run after waiting for quiet (default 0.05)",
    )
    p.add_argument("--retries", type=int, default=None, help="re-runs of a pair (1; --quick 0)")
    p.add_argument("--wait-s", type=float, default=None, help="max wait for quiet (20 s; quick 0)")
    return p


def resolve(args: argparse.Namespace) -> None:
    q = args.quick
    for name, full, quick in (
        ("steps", 10, 2),
        ("warmup", 3, 1),
        ("retries", 1, 0),
        ("wait_s", 20.0, 0.0),
        ("scaling_grids", "8,16,32", "4,8"),
        ("candidates", 512, 16),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if q and args.gen_repeats is None:
        args.gen_repeats = 1
    unknown = [n for n in args.presets.split(",") if n not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")


# ---------------------------------------------------------------------------------- helpers


def summarize(xs: list[float], nd: int = 4) -> dict:
    return {
        "median": round(statistics.median(xs), nd),
        "min": round(min(xs), nd),
        "max": round(max(xs), nd),
        "n": len(xs),
    }


def rnd(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def precision_ctx(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_config(grid: int, vocab: int, depth: int, attention: str, d_model: int = D_MODEL):
    from tessera.config.dalle import DalleConfig

    return DalleConfig(
        text_vocab=TEXT_VOCAB,
        text_len=TEXT_LEN,
        image_vocab=vocab,
        grid_size=grid,
        d_model=d_model,
        n_layers=depth,
        n_heads=N_HEADS,
        attention=attention,
    )


def build_model(cfg, seed: int):
    import torch

    from tessera.models.dalle import DALLE

    torch.manual_seed(seed)
    return DALLE(cfg)


def text_batch(cfg, batch: int, generator):
    """Full-length random captions through prepare_text (as the peer's random text ids)."""
    import torch

    from tessera.models.dalle import prepare_text

    ids = torch.randint(1, cfg.text_vocab, (batch, cfg.text_len - 1), generator=generator)
    return prepare_text(ids, torch.full((batch,), cfg.text_len - 1), cfg)


def train_flops(model, cfg, batch: int) -> dict:
    from torch import nn

    d, t = cfg.d_model, cfg.text_len + cfg.image_len - 1  # the positions that predict
    n_lin = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    head = d * ((cfg.text_len - 1) * cfg.text_table + cfg.image_len * cfg.image_vocab)
    out = {
        "positions": t,
        "linear_6NT": 6 * n_lin * t * batch,
        "head_6NT": 6 * head * batch,
        "attn_12LdT2": 12 * cfg.n_layers * d * t * t * batch,
    }
    out["total"] = sum(v for k, v in out.items() if k != "positions")
    return out


def params(model) -> dict:
    from torch import nn

    n_lin = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    emb = model.text_emb.weight.numel() + model.image_emb.weight.numel()
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "blocks_linear": n_lin,
        "embeddings": emb,
    }


# ----------------------------------------------------------------------------------- tessera


def train_step(model, text, image, precision: str, lr: float):
    """The timed unit: forward (bf16 autocast on the batch's device when ``precision`` is
    bf16) + backward + a fused ``AdamW(lr)`` step, as the trainer's optimizer
    (tessera.training.optim.build_adamw) on plain tensors. Returns a function -> the loss."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    device_type = text.device.type

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(text, image)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def train_setup(cfg, args: argparse.Namespace, precision: str, compiled: bool):
    """(model, step) on the fixed random batch (``--batch``, seeds ``--seed`` / ``+ 1``);
    compiled: ``model.compile()``, as the trainer's ``train.compile`` (the first step
    compiles)."""
    import torch

    model = build_model(cfg, args.seed).train()
    if compiled:
        model.compile(dynamic=False)
    g = torch.Generator().manual_seed(args.seed + 1)
    text = text_batch(cfg, args.batch, g)
    image = torch.randint(0, cfg.image_vocab, (args.batch, cfg.image_len), generator=g)
    return model, train_step(model, text, image, precision, args.lr)


def measure_train(cfg, args: argparse.Namespace, mode: str) -> dict:
    """mode: fp32 | bf16 | fp32_compiled | bf16_compiled."""
    precision, compiled = mode.split("_")[0], mode.endswith("_compiled")
    model, step = train_setup(cfg, args, precision, compiled)
    t0 = time.perf_counter()
    losses = [step().item()]
    first_s = time.perf_counter() - t0
    losses += [step().item() for _ in range(args.warmup - 1)]
    times = []
    with Contention() as c:
        for _ in range(args.steps):
            t = time.perf_counter()
            losses.append(step().item())
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    flops = train_flops(model, cfg, args.batch)["total"]
    peak = args.peak_bf16 if precision == "bf16" else args.peak_fp32
    gflops = flops / med / 1e9
    measured = (args.measured_peak or {}).get(precision)
    return {
        "step_s": summarize(times),
        "samples_per_s": round(args.batch / med, 3),
        "samples_per_s_minmax": [
            round(args.batch / max(times), 3),
            round(args.batch / min(times), 3),
        ],
        "image_tokens_per_s": round(args.batch * cfg.image_len / med, 1),
        "tokens_per_s": round(args.batch * cfg.seq_len / med, 1),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "achieved_gflops": round(gflops, 2),
        "peak_gflops": peak,
        "mfu": round(gflops / peak, 4),  # vs the nominal peak
        "mfu_measured_peak": None if not measured else round(gflops / measured, 4),
        "own_cpu_util": rnd(c.own_cpu / max(c.wall, 1e-9), 2),
        "foreign_cpu_frac": rnd(c.foreign),
        "first_step_s": round(first_s, 2),  # includes compiling in the *_compiled modes
    }


def measure_gen(
    model, cfg, text, args: argparse.Namespace, use_cache: bool, precision: str, compiled=False
):
    """(entry, tokens of the last call) for one sampler setting."""
    import torch

    from tessera.config.sampling import DalleSampling
    from tessera.sampling.sample import generate_image_tokens

    k = math.ceil(args.top_k_frac * cfg.image_vocab)
    settings = DalleSampling(top_k=k, use_cache=use_cache, compile=compiled)
    b, n = text.shape[0], cfg.image_len
    repeats = args.gen_repeats or (3 if n <= 64 else 1)
    with precision_ctx(precision):  # warm-up: prefill + the last 4 tokens (compiles)
        prefix = torch.zeros(b, max(0, n - 4), dtype=torch.long)
        t0 = time.perf_counter()
        generate_image_tokens(model, text, settings=settings, prefix=prefix)
        warm_s = time.perf_counter() - t0
        times = []
        with Contention() as c:
            for _ in range(repeats):
                g = torch.Generator().manual_seed(args.seed + 2)
                t = time.perf_counter()
                out = generate_image_tokens(model, text, settings=settings, generator=g)
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    entry = {
        "batch_s": summarize(times, 3),
        "image_tokens_per_s": round(b * n / med, 2),
        "ms_per_token_step": round(1000 * med / n, 3),
        "top_k": k,
        "foreign_cpu_frac": rnd(c.foreign),
        "warmup_s": round(warm_s, 2),  # includes compiling in the *_compiled modes
    }
    return entry, out


def train_modes(args: argparse.Namespace) -> tuple[str, ...]:
    return TRAIN_MODES[:2] if args.no_compile else TRAIN_MODES


def gen_modes(args: argparse.Namespace) -> tuple[str, ...]:
    return (GEN_MODES[:2] if args.no_compile else GEN_MODES) + ("uncached_fp32",)


def preset_config(pcfg: dict, variant: str):
    return make_config(pcfg["grid"], pcfg["vocab"], pcfg["depth"], variant, pcfg["d_model"])


def tessera_train(pcfg: dict, args: argparse.Namespace) -> dict:
    out = {}
    for variant in pcfg["variants"]:
        cfg = preset_config(pcfg, variant)
        out[variant] = {m: measure_train(cfg, args, m) for m in train_modes(args)}
        log(
            f"  tessera {variant} train samples/s "
            + " ".join(f"{m} {e['samples_per_s']}" for m, e in out[variant].items())
        )
    return out


def tessera_gen(pcfg: dict, args: argparse.Namespace) -> dict:
    import torch

    out = {}
    for variant in pcfg["variants"]:
        cfg = preset_config(pcfg, variant)
        model = build_model(cfg, args.seed).eval()
        text = text_batch(cfg, args.gen_batch, torch.Generator().manual_seed(args.seed + 1))
        res, toks = {}, {}
        for name in gen_modes(args):
            prec = "bf16" if "bf16" in name else "fp32"
            res[name], toks[name] = measure_gen(
                model, cfg, text, args, name.startswith("cached"), prec, name.endswith("compiled")
            )
        for name in res:
            if name != "uncached_fp32":
                same = (toks[name] == toks["uncached_fp32"]).float().mean().item()
                res[name]["token_match_vs_uncached"] = round(same, 4)
        out[variant] = res
        log(
            f"  tessera {variant} gen tok/s "
            + " ".join(f"{m} {e['image_tokens_per_s']}" for m, e in res.items())
        )
    return out


def top_ops(prof, per: int, n: int = 12) -> list[dict]:
    """The ``n`` ops (inductor's generated kernels by name) with the most self CPU time."""
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key[:90],
            "self_ms_per_call": round(e.self_cpu_time_total / 1000 / per, 3),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls_per_call": round(e.count / per, 1),
        }
        for e in rows[:n]
    ]


def profile_preset(pcfg: dict, args: argparse.Namespace) -> dict:
    """What is left: top ops of 3 compiled bf16 train steps and of one compiled bf16 generate
    call (first variant), profiled after their own warm-up (not timed with the figures)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    # fresh graphs whose generated kernels record their own names (the timed runs' graphs
    # are compiled without that hook)
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        out = _profile(pcfg, args)
    torch._dynamo.reset()
    return out


def _profile(pcfg: dict, args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tessera.config.sampling import DalleSampling
    from tessera.sampling.sample import generate_image_tokens

    cfg = preset_config(pcfg, pcfg["variants"][0])
    compiled = not args.no_compile
    _, step = train_setup(cfg, args, "bf16", compiled)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(3):
            step()
    out = {"train_bf16" + ("_compiled" if compiled else ""): top_ops(p, 3)}
    model = build_model(cfg, args.seed).eval()
    text = text_batch(cfg, args.gen_batch, torch.Generator().manual_seed(args.seed + 1))
    k = math.ceil(args.top_k_frac * cfg.image_vocab)
    settings = DalleSampling(top_k=k, compile=compiled)
    with precision_ctx("bf16"):
        generate_image_tokens(model, text, settings=settings)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            generate_image_tokens(model, text, settings=settings)
    out["gen_cached_bf16" + ("_compiled" if compiled else "")] = top_ops(p, 1)
    return out


def candidate_sampling(pcfg: dict, args: argparse.Namespace, n: int) -> dict:
    """The paper's candidate sampling: one caption, ``n`` samples in one batch (image tokens
    only: no dVAE decode, no CLIP reranking), compiled bf16 (eager bf16 too when --no-compile)."""
    import torch

    from tessera.config.sampling import DalleSampling
    from tessera.sampling.sample import generate_image_tokens

    cfg = preset_config(pcfg, pcfg["variants"][0])
    model = build_model(cfg, args.seed).eval()
    text = text_batch(cfg, 1, torch.Generator().manual_seed(args.seed + 1)).expand(n, -1)
    k = math.ceil(args.top_k_frac * cfg.image_vocab)
    settings = DalleSampling(top_k=k, compile=not args.no_compile)
    with precision_ctx("bf16"):
        prefix = torch.zeros(n, cfg.image_len - 4, dtype=torch.long)
        generate_image_tokens(model, text, settings=settings, prefix=prefix)  # warm-up
        with Contention() as c:
            t = time.perf_counter()
            generate_image_tokens(
                model, text, settings=settings, generator=torch.Generator().manual_seed(1)
            )
            wall = time.perf_counter() - t
    return {
        "variant": pcfg["variants"][0],
        "candidates": n,
        "precision": "bf16",
        "compiled": not args.no_compile,
        "batch_s": round(wall, 3),
        "images_per_s": round(n / wall, 2),
        "image_tokens_per_s": round(n * cfg.image_len / wall, 1),
        "foreign_cpu_frac": rnd(c.foreign),
    }


def sampling_scaling(args: argparse.Namespace, vocab: int) -> dict | None:
    import torch

    grids = [int(s) for s in args.scaling_grids.split(",") if s.strip()]
    if not grids:
        return None
    modes = ("fp32",) if args.no_compile else ("fp32", "bf16_compiled")
    out: dict = {
        "depth": 4,
        "attention": "full",
        "image_vocab": vocab,
        "gen_batch": args.gen_batch,
        "cache": True,
        "modes": {},
    }
    for mode in modes:
        base, rows = None, {}
        for grid in grids:
            cfg = make_config(grid, vocab, 4, "full")
            model = build_model(cfg, args.seed).eval()
            text = text_batch(cfg, args.gen_batch, torch.Generator().manual_seed(args.seed + 1))
            prec, compiled = mode.split("_")[0], mode.endswith("_compiled")
            entry, _ = measure_gen(model, cfg, text, args, True, prec, compiled)
            s_tok = entry["batch_s"]["median"] / cfg.image_len
            base = base or s_tok
            rows[str(grid)] = {
                "image_len": cfg.image_len,
                "batch_s": entry["batch_s"]["median"],
                "s_per_token": round(s_tok, 6),
                "relative_s_per_token": round(s_tok / base, 3),
                "foreign_cpu_frac": entry["foreign_cpu_frac"],
            }
            log(f"scaling {mode} grid {grid}: {s_tok * 1000:.3f} ms/token")
        rel = [r["s_per_token"] for r in rows.values()]
        rows["max_over_min"] = round(max(rel) / min(rel), 3)
        out["modes"][mode] = rows
    out["flat_within_1_5x"] = {m: r["max_over_min"] <= 1.5 for m, r in out["modes"].items()}
    return out


# -------------------------------------------------------------------------------------- peer


def gemm_peak(args: argparse.Namespace) -> dict:
    """This machine's fp32 / bf16 GEMM peak from the shared probe, in a fresh process."""
    cmd = [sys.executable, str(GEMM_PROBE), "--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    except (OSError, subprocess.TimeoutExpired, IndexError, json.JSONDecodeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def peer_shape_flags(preset: str) -> list[str]:
    """A named peer preset, or (tessera-only presets) the peer's flags for the same shapes."""
    if preset not in WIDTH:
        return ["--preset", preset]
    grid, vocab, depth, attn, _ = PRESETS[preset]
    d = WIDTH[preset]
    return [
        "--image-size", str(grid * 8), "--vae-layers", "3", "--num-image-tokens", str(vocab),
        "--num-text-tokens", str(TEXT_VOCAB), "--text-seq-len", str(TEXT_LEN),
        "--dim", str(d), "--depth", str(depth), "--heads", str(N_HEADS),
        "--dim-head", str(d // N_HEADS), "--attn-types", attn,
    ]  # fmt: skip


def run_peer(args: argparse.Namespace, preset: str, phase: str, gen_repeats: int) -> dict:
    """The peer's JSON for one phase (a fresh process), or {"error": ...}."""
    cmd = [
        args.peer_python,
        args.peer_script,
        *peer_shape_flags(preset),
        "--phases",
        phase,
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--batch",
        str(args.batch),
        "--gen-batch",
        str(args.gen_batch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--gen-repeats",
        str(gen_repeats),
        "--lr",
        str(args.lr),
        "--peak-gflops",
        str(args.peak_fp32),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
    return json.loads(lines[-1])


def peer_foreign(res: dict) -> float:
    vals = [res.get("train", {}).get("foreign_cpu_frac")]
    vals += [v.get("foreign_cpu_frac") for v in res.get("gen", {}).values() if isinstance(v, dict)]
    return max([v for v in vals if v is not None], default=0.0)


def peer_summary(train: dict | None, gen: dict | None, pcfg: dict) -> dict:
    errors = [r["error"] for r in (train, gen) if r and "error" in r]
    if errors:
        return {"error": " | ".join(errors)}
    src = train or gen or {}
    c = src.get("config", {})
    matches = (
        c.get("image_seq_len") == pcfg["grid"] ** 2
        and c.get("num_image_tokens") == pcfg["vocab"]
        and c.get("depth") == pcfg["depth"]
        and c.get("text_seq_len") == TEXT_LEN
        and c.get("num_text_tokens") == TEXT_VOCAB
        and c.get("dim") == pcfg["d_model"]
        and c.get("heads", 0) * c.get("dim_head", 0) == pcfg["d_model"]
    )
    out: dict = {
        "impl_version": src.get("impl_version"),
        "config_matches": matches,
        "attn_types": c.get("attn_types"),
        "params": {"matmul_N": src.get("params", {}).get("matmul_N")},
        "flops_per_train_step": src.get("flops_per_train_step", {}).get(
            "6N_T_plus_attn_as_executed"
        ),
        "peak_rss_mb": {},
    }
    if train:
        t = train["train"]
        keys = (
            "samples_per_s",
            "samples_per_s_minmax",
            "step_s",
            "loss_first",
            "loss_last",
            "achieved_gflops_6N_attn",
            "mfu_6N_attn",
            "foreign_cpu_frac",
        )
        out["train"] = {k: t.get(k) for k in keys}
        out["peak_rss_mb"]["train"] = train.get("peak_rss_mb")
    if gen:
        keys = ("batch_s", "image_tokens_per_s", "ms_per_token_step", "foreign_cpu_frac")
        out["gen"] = {
            m: {k: v.get(k) for k in keys}
            for m, v in gen["gen"].items()
            if m in ("default", "cache_patched")
        }
        out["peak_rss_mb"]["gen"] = gen.get("peak_rss_mb")
    return out


# -------------------------------------------------------------------------------- the rounds


def ours_foreign(res: dict) -> float:
    vals = [e.get("foreign_cpu_frac") for v in res.values() for e in v.values()]
    return max([v for v in vals if v is not None], default=0.0)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.discarded = 0
        self.foreign: list[float] = []

    def pair(self, r: int, ours, theirs) -> tuple[dict, dict | None]:
        """Run ``ours()`` and ``theirs()`` (A B on even rounds, B A on odd), re-running the
        pair when either saw more than --max-foreign of foreign CPU."""
        args = self.args
        for attempt in range(args.retries + 1):
            got: dict = {}
            jobs = [("ours", ours), ("theirs", theirs)]
            for name, fn in jobs if r % 2 == 0 else jobs[::-1]:
                got[name] = fn() if fn is not None else None
            worst = ours_foreign(got["ours"])
            if got["theirs"] is not None and "error" not in got["theirs"]:
                worst = max(worst, peer_foreign(got["theirs"]))
            if worst <= args.max_foreign or attempt == args.retries:
                break
            self.discarded += 1
            log(f"  foreign CPU {worst:.2f} > {args.max_foreign}: waiting, then re-running")
            wait_quiet(args.wait_s, args.max_foreign)
        self.foreign.append(worst)
        return got["ours"], got["theirs"]


def median_entry(entries: list[dict], key: str) -> dict:
    """The entry of the median round by ``key`` (lower median), with ``key_rounds`` added."""
    if len(entries) == 1:
        return entries[0]
    vals = [e[key] for e in entries]
    order = sorted(range(len(entries)), key=lambda i: vals[i])
    out = dict(entries[order[(len(entries) - 1) // 2]])
    out[key + "_rounds"] = vals
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def med_ratio(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def run_preset(name: str, args: argparse.Namespace, runner: Runner) -> dict:
    grid, vocab, depth, peer_attn, variants = PRESETS[name]
    d_model = WIDTH.get(name, D_MODEL)
    pcfg = {"grid": grid, "vocab": vocab, "depth": depth, "variants": variants, "d_model": d_model}
    n = grid * grid
    gen_repeats = args.gen_repeats or (3 if n <= 64 else 1)
    peer = not args.skip_peer
    trains, gens, p_trains, p_gens = [], [], [], []
    phases = set(args.phases.split(","))
    for r in range(args.rounds):
        if "train" not in phases:
            break
        log(f"{name} round {r + 1}/{args.rounds}: train")
        wait_quiet(args.wait_s, args.max_foreign)
        o, t = runner.pair(
            r,
            lambda: tessera_train(pcfg, args),
            (lambda: run_peer(args, name, "train", gen_repeats)) if peer else None,
        )
        trains.append(o)
        p_trains.append(t)
        if t is not None:
            log(f"  peer train samples/s {t.get('train', {}).get('samples_per_s', t)}")
    for r in range(args.rounds):
        if "gen" not in phases:
            break
        log(f"{name} round {r + 1}/{args.rounds}: gen")
        wait_quiet(args.wait_s, args.max_foreign)
        o, t = runner.pair(
            r,
            lambda: tessera_gen(pcfg, args),
            (lambda: run_peer(args, name, "gen", gen_repeats)) if peer else None,
        )
        gens.append(o)
        p_gens.append(t)
        if t is not None and "gen" in t:
            log(
                "  peer gen tok/s default "
                f"{t['gen']['default']['image_tokens_per_s']} cache_patched "
                f"{t['gen']['cache_patched']['image_tokens_per_s']}"
            )

    out: dict = {
        "config": {
            "text_vocab": TEXT_VOCAB,
            "text_len": TEXT_LEN,
            "image_vocab": vocab,
            "grid_size": grid,
            "image_len": n,
            "d_model": d_model,
            "n_heads": N_HEADS,
            "depth": depth,
            "peer_attn_types": peer_attn,
            "tessera_variants": list(variants),
            "gen_repeats": gen_repeats,
        },
        "tessera": {},
    }
    for v in variants:
        cfg = preset_config(pcfg, v)
        model = build_model(cfg, args.seed)
        entry: dict = {
            "layer_kinds": [b.kind for b in model.blocks],
            "params": params(model),
            "flops_per_train_step": train_flops(model, cfg, args.batch),
            "train": {
                p: median_entry([t[v][p] for t in trains], "samples_per_s")
                for p in (train_modes(args) if trains else ())
            },
            "gen": {
                m: median_entry([g[v][m] for g in gens], "image_tokens_per_s")
                for m in (gen_modes(args) if gens else ())
            },
        }
        tr, g = entry["train"], entry["gen"]
        if tr:
            entry["train_best"] = max(tr, key=lambda m: tr[m]["samples_per_s"])
            entry["mfu_bf16_best"] = max(e["mfu"] for m, e in tr.items() if "bf16" in m)
            if args.measured_peak:
                entry["mfu_measured_peak_bf16_best"] = max(
                    e["mfu_measured_peak"] for m, e in tr.items() if "bf16" in m
                )
        if g:
            cached = [m for m in g if m.startswith("cached")]
            entry["gen_best_cached"] = max(cached, key=lambda m: g[m]["image_tokens_per_s"])

            def best_of(prec: str, g=g, cached=cached) -> float:
                return max(g[m]["image_tokens_per_s"] for m in cached if prec in m)

            entry["gen_bf16_not_slower_than_fp32"] = best_of("bf16") >= best_of("fp32")
        out["tessera"][v] = entry
    if not args.no_profile:
        log(f"{name}: profiling (top ops)")
        out["profile"] = profile_preset(pcfg, args)
    if not peer:
        return out

    ok_t = [t for t in p_trains if "error" not in t]
    ok_g = [g for g in p_gens if "error" not in g]
    pt = _median_peer(ok_t, lambda j: j["train"]["samples_per_s"]) if ok_t else p_trains[0]
    pg = (
        _median_peer(ok_g, lambda j: j["gen"]["cache_patched"]["image_tokens_per_s"])
        if ok_g
        else p_gens[0]
    )
    out["peer"] = peer_summary(pt, pg, pcfg)
    out["ratios"], out["goals"] = {}, {}
    for v in variants:
        rr: dict = {}
        for p in train_modes(args):
            rr[f"train_{p}"] = med_ratio(
                [
                    ratio(t[v][p]["samples_per_s"], pt_.get("train", {}).get("samples_per_s"))
                    for t, pt_ in zip(trains, p_trains)
                ]
            )
        for p in [m.removeprefix("cached_") for m in gen_modes(args) if m.startswith("cached")]:
            for mode, key in (("default", "shipped"), ("cache_patched", "cache_patched")):
                rr[f"gen_{p}_vs_{key}"] = med_ratio(
                    [
                        ratio(
                            g[v][f"cached_{p}"]["image_tokens_per_s"],
                            pg_.get("gen", {}).get(mode, {}).get("image_tokens_per_s"),
                        )
                        for g, pg_ in zip(gens, p_gens)
                    ]
                )
        rr["train_best"] = rr[f"train_{out['tessera'][v]['train_best']}"]
        best = out["tessera"][v]["gen_best_cached"].removeprefix("cached_")
        rr["gen_best_vs_shipped"] = rr[f"gen_{best}_vs_shipped"]
        rr["gen_best_vs_cache_patched"] = rr[f"gen_{best}_vs_cache_patched"]
        out["ratios"][v] = rr

        def at_least(x: float | None, target: float) -> bool | None:
            return None if x is None else x >= target

        out["goals"][v] = {
            # issue 18's targets
            "train_5x_best": at_least(rr["train_best"], 5),
            "sample_3x_cache_patched_best": at_least(rr["gen_best_vs_cache_patched"], 3),
            "sample_bf16_not_slower": out["tessera"][v]["gen_bf16_not_slower_than_fp32"],
            "mfu_bf16_25pct": out["tessera"][v]["mfu_bf16_best"] >= 0.25,
            "mfu_bf16_25pct_of_measured_peak": (
                None
                if not args.measured_peak
                else out["tessera"][v]["mfu_measured_peak_bf16_best"] >= 0.25
            ),
            # the earlier issue's
            "train_2x_fp32": at_least(rr["train_fp32"], 2),
            "train_2x_bf16": at_least(rr["train_bf16"], 2),
            "sample_10x_shipped_fp32": at_least(rr["gen_fp32_vs_shipped"], 10),
            "sample_10x_shipped_best": at_least(rr["gen_best_vs_shipped"], 10),
            "sample_2x_cache_patched_fp32": at_least(rr["gen_fp32_vs_cache_patched"], 2),
            "sample_2x_cache_patched_best": at_least(rr["gen_best_vs_cache_patched"], 2),
        }
    return out


def _median_peer(runs: list[dict], key) -> dict:
    order = sorted(runs, key=key)
    return order[(len(order) - 1) // 2]


def main() -> None:
    args = build_parser().parse_args()
    resolve(args)
    t_start = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    import torch._dynamo

    # every (preset, variant, mode) compiles its own graph of the same functions; dynamo's
    # default of 8 graphs per function would silently run the later ones eagerly
    torch._dynamo.config.recompile_limit = 256

    if not args.skip_peer and not os.path.exists(args.peer_python):
        raise SystemExit(
            f"peer interpreter {args.peer_python} not found: set up the peer venv "
            "(../shared/bench/README.md), pass --peer-python, or --skip-peer"
        )
    presets = args.presets.split(",")
    if set(args.phases.split(",")) != {"train", "gen"} and not args.skip_peer:
        raise SystemExit("--phases train or gen alone needs --skip-peer (ratios need both)")
    args.measured_peak = None
    probe = None
    if not args.no_peak_probe and not args.quick:
        log("GEMM peak probe (this machine, this run)")
        probe = gemm_peak(args)
        if "peak_gflops" in probe:
            args.measured_peak = {
                "fp32": probe["peak_gflops"]["float32"],
                "bf16": probe["peak_gflops"]["bfloat16"],
            }
    result: dict = {
        "bench": "dalle_transformer_vs_dalle_pytorch",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "peer": None,
        "settings": {
            "batch": args.batch,
            "gen_batch": args.gen_batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "lr": args.lr,
            "seed": args.seed,
            "top_k_frac": args.top_k_frac,
            "peak_gflops": {"fp32": args.peak_fp32, "bf16": args.peak_bf16},
            "max_foreign": args.max_foreign,
            "peer_python": None if args.skip_peer else args.peer_python,
            "peer_script": None if args.skip_peer else args.peer_script,
        },
        "gemm_peak_probe": None
        if probe is None
        else {k: probe.get(k) for k in ("cpu", "peak_gflops", "error") if k in probe},
        "presets": {},
    }
    runner = Runner(args)
    for name in presets:
        res = run_preset(name, args, runner)
        result["presets"][name] = res
        version = res.get("peer", {}).get("impl_version")
        if version and result["peer"] is None:
            result["peer"] = f"dalle-pytorch {version}"
    if args.candidates:
        wait_quiet(args.wait_s, args.max_foreign)
        name = presets[0]
        grid, vocab, depth, _, variants = PRESETS[name]
        pcfg = {"grid": grid, "vocab": vocab, "depth": depth, "variants": variants}
        pcfg["d_model"] = WIDTH.get(name, D_MODEL)
        log(f"candidate sampling: {args.candidates} samples of one caption on {name}")
        result["candidate_sampling"] = {"preset": name} | candidate_sampling(
            pcfg, args, args.candidates
        )
        runner.foreign.append(result["candidate_sampling"]["foreign_cpu_frac"] or 0.0)
    wait_quiet(args.wait_s, args.max_foreign)
    scaling = sampling_scaling(args, 8192)  # the codebook
    result["sampling_scaling"] = scaling
    if scaling:
        runner.foreign += [
            v["foreign_cpu_frac"] or 0.0
            for rows in scaling["modes"].values()
            for v in rows.values()
            if isinstance(v, dict)
        ]
    result["foreign_cpu_frac_max"] = rnd(max(runner.foreign)) if runner.foreign else None
    result["discarded_pairs"] = runner.discarded
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
