"""dVAE encode / decode images/s: tessera vs lucidrains' dalle-pytorch 1.6.6, same run.

Both implementations run in ONE process on the same inputs, interleaved round by round
(A B, then B A, ...), fp32, ``torch.no_grad``, eval mode, ``--threads`` intra-op threads (default
2) and one inter-op thread. Prints one JSON line: images/s per (impl, size, op) (median over
rounds), the tessera/peer ratios (median of the per-round ratios; > 1 means tessera is faster),
parameter counts and the convolution work per image of both models.

What is timed (the call a user makes):
  encode  tessera ``DiscreteVAE.encode(images)`` (map pixels, encoder, argmax) vs
          dalle-pytorch ``DiscreteVAE.get_codebook_indices(images)`` (normalise, encoder, argmax);
          images (B, 3, S, S) in [0, 1].
  decode  tessera ``DiscreteVAE.decode(tokens)`` (one-hot, decoder, sigmoid, unmap) vs
          dalle-pytorch ``DiscreteVAE.decode(tokens)`` (codebook lookup, decoder); the same
          random token grid for both.

"Equal width and depth". The architectures differ: dalle-pytorch's DiscreteVAE is
``num_layers`` stride-2 4x4 convolutions (transposed in the decoder), all ``hidden_dim`` wide,
with ``num_resnet_blocks`` residual blocks at the bottleneck and a ``codebook_dim`` embedding
feeding the decoder; tessera's is the paper's (OpenAI's ``dall-e``): ``group_count`` groups of
``n_blk_per_group`` bottleneck residual blocks whose width doubles per group (``n_hid`` ..
``8 n_hid``), max-pool / nearest-upsample between groups, a one-hot 1x1 convolution into the
decoder. Matched here:
  * width: peer ``hidden_dim`` = tessera ``n_hid`` (the full-resolution width) = ``--n-hid``;
  * depth: the same downsampling (8x: peer ``num_layers=3`` = tessera ``group_count=4``), so the
    same token grid (S/8)^2, and peer ``num_resnet_blocks`` = tessera ``n_blk_per_group``
    (= ``--n-blk``: residual blocks per resolution stage);
  * codebook: the same K (``--vocab``; default as the shared peer benchmark's presets: 1024 at
    <= 64 px, 8192 above); peer ``codebook_dim`` 512 as there; tessera ``n_init = n_hid // 2``
    (the paper's 128 : 256).
Defaults (--n-hid 64 --n-blk 1) are the peer's VAE in ../shared/bench/peer_dalle_pytorch.py.
Because tessera widens with depth, it is the bigger model at equal width and depth: the JSON
reports both parameter counts and the multiply-accumulates per image (conv layers as executed,
counted with forward hooks), so throughput can also be read per unit of work (``gmac_per_s``).

Run with an interpreter that has dalle-pytorch (the peer venv of ../shared/bench/README.md);
tessera is imported from this checkout's ``src/`` (it needs only torch + numpy here):

    $PEERS/bin/python benchmarks/bench_vae.py [--sizes 64,256] [--repeats 7] [--threads 2]

``--no-peer`` times tessera alone (any interpreter with tessera). Contamination guard: a
round (both implementations) during which *other* processes used more than ``--max-foreign``
of the machine's CPU is discarded and re-run after waiting for quiet (up to ``--retries``
times); ``foreign_cpu_frac_max`` / ``_median`` report the kept rounds and
``discarded_rounds`` the re-runs. Above ~0.05 the numbers are contaminated (see the shared
README): with 2 OpenMP threads a competing process slows convolutions far more than its share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

from _common import Contention, wait_quiet

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir():
    sys.path.insert(0, str(SRC))


# ---------------------------------------------------------------------------------- models


def _import_peer():
    """``from dalle_pytorch import DiscreteVAE`` with the shared benchmark's import shims
    (a placeholder ``taming.models.vqgan``; ``pkg_resources`` if setuptools >= 81)."""
    try:
        import taming.models.vqgan
    except Exception:

        def _unavailable(*a, **k):
            raise RuntimeError("taming-transformers is stubbed in this benchmark")

        taming = types.ModuleType("taming")
        models = types.ModuleType("taming.models")
        vqgan = types.ModuleType("taming.models.vqgan")
        vqgan.VQModel = type("VQModel", (), {"__init__": _unavailable})
        vqgan.GumbelVQ = type("GumbelVQ", (), {"__init__": _unavailable})
        taming.models, models.vqgan = models, vqgan
        sys.modules.update(
            {"taming": taming, "taming.models": models, "taming.models.vqgan": vqgan}
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pkg_resources is deprecated"
            import pkg_resources  # noqa: F401
    except Exception:
        import importlib.metadata as md

        pr = types.ModuleType("pkg_resources")
        pr.get_distribution = lambda name: types.SimpleNamespace(version=md.version(name))
        sys.modules["pkg_resources"] = pr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import dalle_pytorch
            from dalle_pytorch import DiscreteVAE
        except ImportError as e:
            raise SystemExit(
                f"cannot import dalle_pytorch ({e}); run this with the peer venv of "
                "../shared/bench/README.md, or pass --no-peer"
            ) from None
    return DiscreteVAE, getattr(dalle_pytorch, "__version__", "?")


def _count_macs(module, call) -> int:
    """Multiply-accumulates of every Conv2d / ConvTranspose2d that ``call()`` runs (as executed)."""
    import torch
    from torch import nn

    total = [0]

    def hook(m, inputs, output):
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * m.out_channels // m.groups * k
        else:
            total[0] += output.numel() * m.in_channels // m.groups * k

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- timing


def _time_calls(fn, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="64,256", help="image sizes, comma-separated")
    p.add_argument("--batch", default="64:16,256:4", help="SIZE:BATCH pairs (default 16 / 4)")
    p.add_argument("--n-hid", type=int, default=64, help="width: n_hid = hidden_dim")
    p.add_argument("--n-blk", type=int, default=1, help="n_blk_per_group = num_resnet_blocks")
    p.add_argument("--vocab", type=int, default=None, help="codebook size (default 1024/8192)")
    p.add_argument("--codebook-dim", type=int, default=512, help="peer codebook_dim")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds per (size, op)")
    p.add_argument("--round-s", type=float, default=0.6, help="target seconds per timed round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peer", action="store_true", help="time tessera only")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="a round during which other processes used more than this share of the CPU is "
        "discarded and re-run after waiting for quiet (default 0.05)",
    )
    p.add_argument("--retries", type=int, default=2, help="re-runs of one contaminated round")
    p.add_argument("--wait-s", type=float, default=20.0, help="longest wait for quiet per retry")
    return p


def build_models(args: argparse.Namespace, size: int, vocab: int, peer_cls) -> dict:
    """{impl: model} at equal width and depth (see the module docstring), both in eval mode."""
    import torch

    from tessera.config.vae import VAEConfig
    from tessera.vae.model import DiscreteVAE

    cfg = VAEConfig(
        image_size=size,
        n_hid=args.n_hid,
        n_blk_per_group=args.n_blk,
        group_count=4,
        vocab_size=vocab,
        n_init=max(4, args.n_hid // 2),
    )
    torch.manual_seed(args.seed)
    models = {"tessera": DiscreteVAE(cfg).eval()}
    if peer_cls is not None:
        torch.manual_seed(args.seed)
        models["dalle_pytorch"] = peer_cls(
            image_size=size,
            num_layers=3,
            num_tokens=vocab,
            codebook_dim=args.codebook_dim,
            hidden_dim=args.n_hid,
            num_resnet_blocks=args.n_blk,
        ).eval()
    return models


def operations(models: dict, images, tokens) -> dict:
    """{impl: {op: (callable, module whose convolutions the op runs)}}."""
    out = {}
    for impl, m in models.items():
        if impl == "tessera":
            out[impl] = {
                "encode": (lambda m=m: m.encode(images), m.encoder),
                "decode": (lambda m=m: m.decode(tokens), m.decoder),
            }
        else:
            out[impl] = {
                "encode": (lambda m=m: m.get_codebook_indices(images), m.encoder),
                "decode": (lambda m=m: m.decode(tokens.flatten(1)), m.decoder),
            }
    return out


class Timer:
    """Interleaved rounds with the contamination guard; keeps per-round images/s."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.foreign: list[float] = []  # per kept round: the worst foreign share in it
        self.discarded = 0

    def rounds(self, fns: dict, batch: int) -> dict[str, list[float]]:
        import torch

        args = self.args
        impls = list(fns)
        iters = {}
        with torch.no_grad():
            for impl in impls:  # warm-up (oneDNN primitive caches) and calibration
                for _ in range(2):
                    fns[impl]()
                t = _time_calls(fns[impl], 1)
                iters[impl] = max(1, round(args.round_s / max(t, 1e-6)))
            per_round: dict[str, list[float]] = {i: [] for i in impls}
            for r in range(args.repeats):
                for attempt in range(args.retries + 1):
                    got, worst = {}, 0.0
                    for impl in impls if r % 2 == 0 else impls[::-1]:
                        with Contention() as c:
                            got[impl] = batch / _time_calls(fns[impl], iters[impl])
                        worst = max(worst, c.foreign or 0.0)
                    if worst <= args.max_foreign or attempt == args.retries:
                        break
                    self.discarded += 1
                    wait_quiet(args.wait_s, args.max_foreign)
                self.foreign.append(worst)
                for impl, v in got.items():
                    per_round[impl].append(v)
        return per_round


def main() -> None:
    args = build_parser().parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    peer_cls, peer_version = (None, None) if args.no_peer else _import_peer()
    batches = {int(k): int(v) for k, v in (kv.split(":") for kv in args.batch.split(","))}
    result: dict = {
        "bench": "vae_encode_decode",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "peer": None if args.no_peer else f"dalle-pytorch {peer_version} DiscreteVAE",
        "config": {"n_hid": args.n_hid, "n_blk": args.n_blk, "downsample": 8},
        "images_per_s": {},
        "ratio_tessera_over_peer": {},
        "params": {},
        "gmac_per_image": {},
        "gmac_per_s": {},
    }
    timer = Timer(args)
    wait_quiet(args.wait_s, args.max_foreign)
    for size in (int(s) for s in args.sizes.split(",")):
        b = batches.get(size, 4)
        vocab = args.vocab or (1024 if size <= 64 else 8192)
        models = build_models(args, size, vocab, peer_cls)
        g = torch.Generator().manual_seed(args.seed + 1)
        images = torch.rand(b, 3, size, size, generator=g)
        grid = size // 8
        tokens = torch.randint(0, vocab, (b, grid, grid), generator=g)
        ops = operations(models, images, tokens)
        key = str(size)
        result["config"][key] = {"batch": b, "vocab_size": vocab, "tokens": f"{grid}x{grid}"}
        for impl, m in models.items():
            extra = 0 if impl == "tessera" else _params(m.codebook)  # the codebook feeds decode
            result["params"].setdefault(
                impl, {"encoder": _params(m.encoder), "decoder": _params(m.decoder) + extra}
            )
            result["gmac_per_image"].setdefault(impl, {})[key] = {
                op: round(_count_macs(mod, fn) / b / 1e9, 4) for op, (fn, mod) in ops[impl].items()
            }
        for op in ("encode", "decode"):
            per_round = timer.rounds({impl: ops[impl][op][0] for impl in ops}, b)
            for impl, values in per_round.items():
                ips = statistics.median(values)
                gmac = result["gmac_per_image"][impl][key][op]
                result["images_per_s"].setdefault(impl, {}).setdefault(key, {})[op] = round(ips, 2)
                result["gmac_per_s"].setdefault(impl, {}).setdefault(key, {})[op] = round(
                    ips * gmac, 1
                )
            if "dalle_pytorch" in per_round:
                ratios = [a / p for a, p in zip(per_round["tessera"], per_round["dalle_pytorch"])]
                result["ratio_tessera_over_peer"].setdefault(key, {})[op] = round(
                    statistics.median(ratios), 3
                )
    if args.no_peer:
        del result["ratio_tessera_over_peer"]
    result["foreign_cpu_frac_max"] = round(max(timer.foreign), 3) if timer.foreign else None
    result["foreign_cpu_frac_median"] = (
        round(statistics.median(timer.foreign), 3) if timer.foreign else None
    )
    result["discarded_rounds"] = timer.discarded
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
