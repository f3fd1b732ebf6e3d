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
    p.add_argument(
        "prompt",
        nargs="*",
        help="text prompt(s); one longer than the model reads is cut, with a warning "
        "(DALL·E and unCLIP alike, as in tessera serve)",
    )
    p.add_argument(
        "--model",
        default="dalle",
        help="dalle (default: the shipped DALL·E model), unclip (the shipped DALL·E 2 model) or "
        "a pipeline directory of either kind (./dalle for a folder named dalle)",
    )
    p.add_argument("--vae", help="dVAE checkpoint, if not in MODEL/vae")
    p.add_argument("--prompts", help="file with one prompt per line")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random draw: same seed and flags, same images (default 0)",
    )
    # Sampling flags default to the pipeline's own settings (stored in its model_index.json).
    p.add_argument("--temperature", type=float, help="(default: the pipeline's, else 1)")
    p.add_argument("--top-k", type=int, help="0 keeps all tokens (default: the pipeline's)")
    p.add_argument("--top-p", type=float, help="nucleus mass; 1 keeps all (default: pipeline's)")
    p.add_argument("--threshold", type=float, help="min probability / max prob.")
    p.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (1: none); unCLIP: the decoder's, as "
        "--decoder-guidance (default: the pipeline's)",
    )
    # unCLIP flags (default: the pipeline's own settings)
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="DALL·E: compile the per-token step (one-off ~30 s, then ~2-3x faster per token)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="DALL·E: token sampling precision (bf16 autocast; default fp32)",
    )
    p.add_argument("--prior-kind", choices=("diffusion", "ar"), help="unCLIP: which prior")
    p.add_argument("--prior-guidance", type=float, help="unCLIP: the prior's guidance scale")
    p.add_argument("--prior-steps", type=int, help="unCLIP: DDIM steps of the diffusion prior")
    p.add_argument("--decoder-guidance", type=float, help="unCLIP: the decoder's guidance")
    p.add_argument("--decoder-steps", type=int, help="unCLIP: steps of the decoder")
    p.add_argument("--decoder-sampler", choices=("ddim", "ddpm"), help="unCLIP: its sampler")
    p.add_argument("--upsampler-steps", type=int, help="unCLIP: DDIM steps of each upsampler")
    p.add_argument("--image-prompt", help="image whose top rows are kept")
    p.add_argument("--keep-rows", type=int, default=0, help="token rows of the image prompt kept")
    p.add_argument("--batch-size", type=int, default=64, help="streams sampled at once")
    p.add_argument("--clip", help="CLIP checkpoint that reranks (default: the pipeline's own)")
    p.add_argument("--candidates", type=int, help="with a reranker: samples drawn per prompt")
    p.add_argument("--keep", type=int, help="with a reranker: best samples kept per prompt")
    p.add_argument("--out", default="out/generate", help="output directory")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from tessera.errors import ConfigError, DataError
    from tessera.pipelines import load_pipeline, pipeline_kind, write_samples

    prompts = list(args.prompt)
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError("give a prompt or --prompts FILE")
    if args.image_prompt and args.keep_rows < 1:
        raise ConfigError("--image-prompt needs --keep-rows R >= 1")
    options = {k: v for k, v in (("vae", args.vae), ("clip", args.clip)) if v is not None}
    if options and pipeline_kind(args.model) != "dalle":
        raise ConfigError("--vae and --clip apply to DALL·E pipelines only")
    pipe = load_pipeline(args.model, **options)  # shipped names resolve there
    flags = _flags(args, pipe.kind, getattr(pipe, "setting_aliases", {}))
    try:
        settings = dataclasses.replace(
            pipe.settings, **{k: v for k, v in flags.items() if v is not None}
        )
    except (ValueError, ConfigError) as e:
        raise ConfigError(str(e)) from None
    n, keep = _candidates(args, "rerank" in pipe.capabilities)
    if getattr(pipe, "reranker", None) is not None:
        pipe.reranker.batch_size = args.batch_size
    image = None
    if args.image_prompt:
        from tessera.data.images import load_images

        _, image = load_images([args.image_prompt], pipe.image_size)
    extra_args = {} if image is None else {"image_prompt": image, "keep_rows": args.keep_rows}
    if args.precision is not None:
        extra_args["precision"] = args.precision
    samples = pipe.generate(
        prompts,
        n=n,
        settings=settings,
        seed=args.seed,
        batch_size=args.batch_size,
        keep=keep,
        **extra_args,
    )
    extra = {"image_prompt": args.image_prompt, "keep_rows": args.keep_rows}
    if keep is not None:
        extra.update({"clip": args.clip or "pipeline", "candidates": n})
    out = write_samples(args.out, samples, seed=args.seed, settings=settings, extra=extra)
    print(f"wrote {len(samples.prompts)} samples for {len(prompts)} prompt(s) to {out}")
    return 0


def _flags(
    args: argparse.Namespace, kind: str, aliases: dict[str, str] | None = None
) -> dict[str, object]:
    """The sampling flags given, as settings of the pipeline's kind (others are an error).
    ``--guidance`` is the generic knob: it sets the setting the pipeline's ``setting_aliases``
    name (unCLIP: ``decoder_guidance``), as the server's ``guidance`` field does."""
    from tessera.errors import ConfigError

    target = (aliases or {}).get("guidance", "guidance")
    if args.guidance is not None and target != "guidance":
        own = getattr(args, target, None)
        if own is not None and own != args.guidance:
            flag = "--" + target.replace("_", "-")
            raise ConfigError(f"--guidance sets {flag} on a {kind} pipeline: give one of them")
        setattr(args, target, args.guidance)
        args.guidance = None
    dalle = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "threshold": args.threshold,
        "guidance": args.guidance,
        "compile": args.compile,
        "precision": args.precision,
    }
    unclip = {
        "prior_kind": args.prior_kind,
        "prior_guidance": args.prior_guidance,
        "prior_steps": args.prior_steps,
        "decoder_guidance": args.decoder_guidance,
        "decoder_steps": args.decoder_steps,
        "decoder_sampler": args.decoder_sampler,
        "upsampler_steps": args.upsampler_steps,
    }
    mine, other = (dalle, unclip) if kind == "dalle" else (unclip, dalle)
    wrong = [k for k, v in other.items() if v is not None]
    if wrong or (kind != "dalle" and args.image_prompt):
        names = ", ".join("--" + k.replace("_", "-") for k in wrong) or "--image-prompt"
        raise ConfigError(f"{names} do(es) not apply to a {kind} pipeline")
    mine.pop("precision", None)  # an argument of generate(), not a sampling setting
    return mine


def _candidates(args: argparse.Namespace, reranks: bool) -> tuple[int, int | None]:
    """(samples drawn per prompt, samples kept per prompt or None for all)."""
    from tessera.errors import ConfigError

    if args.candidates is None and args.keep is None:
        return args.n, None
    if not reranks:
        raise ConfigError(
            "--candidates and --keep need --clip DIR (a CLIP checkpoint) or a pipeline with one"
        )
    n = args.n if args.candidates is None else args.candidates
    keep = n if args.keep is None else args.keep
    if n < 1:
        raise ConfigError(f"--candidates must be >= 1, got {n}")
    if not 1 <= keep <= n:
        raise ConfigError(f"--keep must be between 1 and --candidates ({n}), got {keep}")
    return n, keep
