"""unCLIP on the CPU: decoder training step vs diffusers' UNet2DConditionModel, and sampling.

1. Training step, one process, same inputs, interleaved per round (A B C, then C B A), AdamW
   zero_grad + forward (fp32 / bf16 autocast) + MSE on the output + backward + step:
   ``ours_unet``: the ``shapes`` decoder's ``UNet`` called directly with ``emb`` (B, 128) and a
   (B, 36, 128) ``context``; ``diffusers_unet``: a ``UNet2DConditionModel`` at the same widths,
   depth, resolution, heads and attention levels, given ``emb`` as ``class_labels`` (identity
   class embedding) and the context as ``encoder_hidden_states``; ``ours_decoder``: the whole
   decoder (caption transformer, CLIP projections, UNet). ``--diffusers-blocks adm`` (default):
   Karlo's unCLIP blocks = our network; ``sd``: DownBlock2D / CrossAttnDownBlock2D (SD).
2. Sampling s per image: ``decode`` (DDIM 25 steps, guidance 3) and ``upsample`` with shapes-64
   / shapes-128 (7 steps), fp32 and ``autocast=True``. Random weights and inputs throughout.
3. ``--profile``: top 10 ops by self CPU time of one ``ours_decoder`` step per precision.

    python benchmarks/bench_unclip.py [--threads 2] [--rounds 5] [--profile] [--out FILE]

JSON (one line): ``params`` (diff_frac = diffusers / ours - 1); ``train_{fp32,bf16}``:
``{ours_unet,diffusers_unet,ours_decoder}_s`` median s per step, ``ratio_unet`` = median over
rounds of diffusers_unet / ours_unet (>= 1: we are faster); ``sample_{fp32,bf16}``:
``{decoder,up64,up128}_s_per_image``; ``profile``; ``notes`` (where diffusers' model differs);
``foreign_cpu_frac``: other processes' share of the CPU meanwhile (> 0.05: contaminated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

from _common import Contention, wait_quiet

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir():
    sys.path.insert(0, str(SRC))

SX = "SimpleCrossAttn"
BLOCKS = {  # down, mid, up blocks; attention_head_dim is the head count for "sd" (legacy name)
    "adm": (("ResnetDownsampleBlock2D",) * 2 + (SX + "DownBlock2D",), "UNetMidBlock2D" + SX,
            (SX + "UpBlock2D",) + ("ResnetUpsampleBlock2D",) * 2),
    "sd": (("DownBlock2D",) * 2 + ("CrossAttnDownBlock2D",), "UNetMidBlock2DCrossAttn",
           ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * 2),
}  # fmt: skip
NOTES = {
    "adm": "diffusers blocks: Karlo's unCLIP set (ResnetDown/UpsampleBlock2D, SimpleCrossAttn*), "
    "not DownBlock2D/CrossAttn*: ADM resblock resampling and GLIDE attention over [context; "
    "pixels], as ours (--diffusers-blocks sd: the SD blocks)",
    "sd": "diffusers blocks: SD's: stride-2 / nearest+3x3 conv resampling, not ADM's resblock "
    "up/down; Transformer2DModel (proj_in, self-attention, separate cross-attention, GEGLU MLP, "
    "proj_out), not one attention over [context; pixels]: more parameters and work",
}
COMMON_NOTES = [
    "emb -> class_labels, class_embed_type='identity' (added to the timestep embedding); "
    "context -> encoder_hidden_states, no mask; flip_sin_to_cos=True, freq_shift=0 (as ours)",
    "init differs (ours zero-inits residual out convs, attention and output projections)",
    "GroupNorm: ours in fp32 under autocast (ADM's GroupNorm32); diffusers' by autocast policy",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--threads", type=int, default=2)
    add("--rounds", type=int, default=5, help="interleaved training rounds")
    add("--steps", type=int, default=1, help="timed steps per model per round")
    add("--warmup", type=int, default=2, help="untimed steps per model")
    add("--batch", type=int, default=48)
    add("--sample-batch", type=int, default=16)
    add("--sample-rounds", type=int, default=3)
    add("--decode-steps", type=int, default=25)
    add("--up-steps", type=int, default=7)
    add("--diffusers-blocks", choices=sorted(BLOCKS), default="adm")
    add("--profile", action="store_true", help="top-10 ops of our decoder step")
    add("--no-sampling", action="store_true", help="skip part 2")
    add("--quick", action="store_true", help="smoke run: tiny batches, no waiting")
    add("--seed", type=int, default=0)
    add("--wait-s", type=float, default=20.0, help="max wait for a quiet machine")
    add("--max-foreign", type=float, default=0.05)
    add("--out", help="also write the JSON line to this file")
    return p


def diffusers_unet(cfg, flavour: str):
    """A UNet2DConditionModel matching our UNetConfig ``cfg`` (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import UNet2DConditionModel
    (down, mid, up), hc = BLOCKS[flavour], cfg.num_head_channels
    widths = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    return UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=widths, layers_per_block=cfg.num_res_blocks,
        down_block_types=down, mid_block_type=mid, up_block_types=up,
        attention_head_dim=tuple(w // hc if flavour == "sd" else hc for w in widths),
        norm_num_groups=cfg.num_groups, cross_attention_dim=cfg.context_dim, freq_shift=0,
        resnet_time_scale_shift="scale_shift", flip_sin_to_cos=True, class_embed_type="identity",
    )  # fmt: skip


def make_step(torch, model, forward, target, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward()
        torch.nn.functional.mse_loss(out.float(), target).backward()
        opt.step()

    return step


def interleaved(fns: dict, rounds: int, reps: int = 1) -> tuple[dict, float | None]:
    """{name: [seconds per call, one per round]}, alternating the order every round."""
    times: dict = {n: [] for n in fns}
    with Contention() as c:
        for r in range(rounds):
            for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                for _ in range(reps):
                    fns[name]()
                times[name].append((time.perf_counter() - t0) / reps)
    return times, None if c.foreign is None else round(c.foreign, 3)


def top_ops(step, n: int = 10) -> list:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 3)} for e in ev[:n]]  # fmt: skip


def sampling(torch, args, decoder, g) -> dict:
    """Part 2: {"sample_fp32": ..., "sample_bf16": ...} seconds per image."""
    from tessera.config.presets import preset
    from tessera.models.upsampler import Upsampler
    from tessera.sampling.unclip import decode, upsample

    sb, dcfg = args.sample_batch, decoder.config
    ups = {k: Upsampler(preset("upsampler", f"shapes-{k}")) for k in (64, 128)}
    clip = torch.randn(sb, dcfg.clip_dim, generator=g)
    text = torch.randint(1, dcfg.vocab_size, (sb, dcfg.text_length), generator=g)
    low = {k: torch.rand(sb, 3, k // 2, k // 2, generator=g) for k in ups}  # 2x upsamplers

    def calls(bf: bool, n_dec: int, n_up: int) -> dict:
        gen = torch.Generator().manual_seed(args.seed + 2)
        out = {"decoder": partial(decode, decoder, clip, text, steps=n_dec, guidance=3.0,
                                  generator=gen, autocast=bf)}  # fmt: skip
        for k, u in ups.items():
            out[f"up{k}"] = partial(upsample, u, low[k], steps=n_up, generator=gen, autocast=bf)
        return out

    result = {}
    for prec in ("fp32", "bf16"):
        for call in calls(prec == "bf16", 2, 2).values():  # warm-up: same shapes, fewer steps
            call()
        fns = calls(prec == "bf16", args.decode_steps, args.up_steps)
        times, foreign = interleaved(fns, args.sample_rounds)
        res = {f"{k}_s_per_image": round(statistics.median(v) / sb, 4) for k, v in times.items()}
        result[f"sample_{prec}"] = res = res | {"foreign_cpu_frac": foreign}
        print(f"sample {prec}: {res}", file=sys.stderr)
    return result


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.batch, args.sample_batch, args.rounds, args.sample_rounds = 4, 2, 2, 1
        args.warmup, args.decode_steps, args.up_steps, args.wait_s = 1, 3, 2, 0.0
    import diffusers
    import torch

    from tessera.config.presets import preset
    from tessera.models.decoder import Decoder

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)  # the weights
    t_start = time.perf_counter()
    dcfg = preset("decoder", "shapes")
    decoder = Decoder(dcfg).train()
    theirs = diffusers_unet(dcfg.unet, args.diffusers_blocks).train()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {"ours_unet": n(decoder.unet), "diffusers_unet": n(theirs), "ours_decoder": n(decoder)}
    params["diff_frac"] = round(params["diffusers_unet"] / params["ours_unet"] - 1, 4)
    result: dict = {
        "bench": "unclip", "torch": torch.__version__, "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "params": params,
        "notes": [NOTES[args.diffusers_blocks], *COMMON_NOTES],
    }  # fmt: skip

    # -- 1. training step -----------------------------------------------------------------
    b, s, u, g = args.batch, dcfg.image_size, dcfg.unet, torch.Generator().manual_seed(args.seed)
    x, target = torch.randn(b, 3, s, s, generator=g), torch.randn(b, 6, s, s, generator=g)
    t = torch.randint(0, dcfg.diffusion.steps, (b,), generator=g)
    emb, clip_emb = torch.randn(b, u.time_embed_dim, generator=g), torch.randn(b, 128, generator=g)
    context = torch.randn(b, dcfg.clip_tokens + dcfg.text_length, u.context_dim, generator=g)
    text = torch.randint(1, dcfg.vocab_size, (b, dcfg.text_length), generator=g)
    drop_clip, drop_text = torch.rand(b, generator=g) < 0.1, torch.rand(b, generator=g) < 0.5
    forwards = {
        "ours_unet": (decoder.unet, lambda: decoder.unet(
            x, t, emb=emb, context=context, context_mask=None)),
        "diffusers_unet": (theirs, lambda: theirs(
            x, t, encoder_hidden_states=context, class_labels=emb).sample),
        "ours_decoder": (decoder, lambda: decoder(
            x, t, clip_emb=clip_emb, text=text, drop_clip=drop_clip, drop_text=drop_text)),
    }  # fmt: skip
    wait_quiet(args.wait_s, args.max_foreign)
    profiles: dict = {}
    for prec in ("fp32", "bf16"):
        bf = prec == "bf16"
        steps = {k: make_step(torch, m, f, target, bf) for k, (m, f) in forwards.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times, foreign = interleaved(steps, args.rounds, args.steps)
        res = {f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()}
        ratios = [a / o for a, o in zip(times["diffusers_unet"], times["ours_unet"], strict=True)]
        res["ratio_unet"] = round(statistics.median(ratios), 3)
        res |= {"ratio_unet_rounds": [round(r, 3) for r in ratios], "foreign_cpu_frac": foreign}
        result[f"train_{prec}"] = res
        print(f"train {prec}: {res}", file=sys.stderr)
        if args.profile:
            profiles[prec] = top_ops(steps["ours_decoder"])
    if not args.no_sampling:  # -- 2. sampling
        result |= sampling(torch, args, decoder, g)
    result |= {"profile": profiles} if profiles else {}
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
