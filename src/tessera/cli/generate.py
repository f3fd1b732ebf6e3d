"""``tessera generate "prompt" ...``: text (+ image prompt) -> PNGs, a grid and a manifest."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images from text with a trained pipeline",
        description=(
            "Sample images for one or more prompts. Writes one PNG per sample, grid.png (a row "
            "per prompt) and manifest.jsonl (prompt, file, seed, sampling settings, scores)."
        ),
    )
    p.add_argument("prompt", nargs="*", help="text prompt(s)")
    p.add_argument("--model", help="pipeline directory (default: the shipped shapes model)")
    p.add_argument("--vae", help="dVAE checkpoint, if not in MODEL/vae")
    p.add_argument("--prompts", help="file with one prompt per line")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 keeps all tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 keeps all)")
    p.add_argument("--threshold", type=float, default=0.0, help="min probability / max prob.")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--image-prompt", help="image whose top rows are kept")
    p.add_argument("--keep-rows", type=int, default=0, help="token rows of the image prompt kept")
    p.add_argument("--batch-size", type=int, default=64, help="streams sampled at once")
    p.add_argument("--clip", help="CLIP checkpoint that reranks each prompt's samples")
    p.add_argument("--candidates", type=int, help="with --clip: samples drawn per prompt (--n)")
    p.add_argument("--keep", type=int, help="with --clip: best samples kept per prompt (all)")
    p.add_argument("--out", default="out/generate", help="output directory")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tessera.errors import ConfigError, DataError
    from tessera.sampling.pipeline import load_pipeline, write_samples
    from tessera.sampling.sample import SamplingConfig

    prompts = list(args.prompt)
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError("give a prompt or --prompts FILE")
    if args.image_prompt and args.keep_rows < 1:
        raise ConfigError("--image-prompt needs --keep-rows R >= 1")
    try:
        settings = SamplingConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            threshold=args.threshold,
            guidance=args.guidance,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    n, keep = _candidates(args)
    if args.model is None:
        from tessera.generation_demo import default_model_dir

        args.model = str(default_model_dir() / "pipeline")
        if not (Path(args.model) / "config.json").is_file():
            raise DataError("no --model given and no shipped model installed at " + args.model)
    pipe = load_pipeline(args.model, vae=args.vae)
    if args.clip:
        from tessera.models.clip import load_scorer

        pipe.reranker = load_scorer(args.clip, batch_size=args.batch_size)
    image = None
    if args.image_prompt:
        from tessera.vae.images import load_images

        _, image = load_images([args.image_prompt], pipe.vae.config.image_size)
    samples = pipe.generate(
        prompts,
        n=n,
        settings=settings,
        seed=args.seed,
        image_prompt=image,
        keep_rows=args.keep_rows,
        batch_size=args.batch_size,
        keep=keep,
    )
    extra = {"image_prompt": args.image_prompt, "keep_rows": args.keep_rows}
    if args.clip:
        extra.update({"clip": args.clip, "candidates": n})
    out = write_samples(args.out, samples, seed=args.seed, settings=settings, extra=extra)
    print(f"wrote {len(samples.prompts)} samples for {len(prompts)} prompt(s) to {out}")
    return 0


def _candidates(args: argparse.Namespace) -> tuple[int, int | None]:
    """(samples drawn per prompt, samples kept per prompt or None for all)."""
    from tessera.errors import ConfigError

    if not args.clip:
        if args.candidates is not None or args.keep is not None:
            raise ConfigError("--candidates and --keep need --clip DIR (a CLIP checkpoint)")
        return args.n, None
    n = args.n if args.candidates is None else args.candidates
    keep = n if args.keep is None else args.keep
    if n < 1:
        raise ConfigError(f"--candidates must be >= 1, got {n}")
    if not 1 <= keep <= n:
        raise ConfigError(f"--keep must be between 1 and --candidates ({n}), got {keep}")
    return n, keep
