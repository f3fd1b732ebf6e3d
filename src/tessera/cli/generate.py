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
    add_sampling_flags(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="DALL·E: token sampling precision (bf16 autocast; default fp32)",
    )
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
    settings = dataclasses.replace(pipe.settings, **_flags(args, pipe.settings, pipe.kind))
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


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """One flag per sampling setting of every pipeline kind, derived from
    :mod:`tessera.config.sampling` (name, type, choices, help); each defaults to the pipeline's
    own settings (stored in its ``model_index.json``)."""
    from tessera.config.sampling import setting_specs, settings_class

    kinds: dict[str, list[str]] = {}
    specs = {}
    for kind in ("dalle", "unclip"):
        for spec in setting_specs(settings_class(kind)):
            kinds.setdefault(spec.name, []).append(kind)
            specs.setdefault(spec.name, spec)
    group = p.add_argument_group("sampling (default: the pipeline's own settings)")
    for name, spec in specs.items():
        where = (
            "DALL·E" if kinds[name] == ["dalle"] else "unCLIP" if kinds[name] == ["unclip"] else ""
        )
        help_ = f"{where + ': ' if where else ''}{spec.help} (built-in default {spec.default})"
        for kind in ("dalle", "unclip"):  # a generic knob that sets another kind's own field
            target = settings_class(kind).aliases.get(name)
            if target and target != name:
                help_ += f"; on {kind}: sets --{target.replace('_', '-')}"
        if spec.type == "bool":
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, help=help_)
        elif spec.type == "choice":
            group.add_argument(spec.flag, choices=spec.choices, help=help_)
        else:
            group.add_argument(spec.flag, type={"int": int, "float": float}[spec.type], help=help_)
    group.set_defaults(**{name: None for name in specs})


def _flags(args: argparse.Namespace, settings: object, kind: str) -> dict[str, object]:
    """The sampling flags given, as fields of the pipeline's settings (a flag of another
    kind's settings is an error). A generic knob (``--guidance``) sets the field the settings'
    ``aliases`` name (unCLIP: ``decoder_guidance``), as the server's fields do."""
    import dataclasses

    from tessera.config.sampling import setting_specs, settings_class
    from tessera.errors import ConfigError

    every = {s.name for k in ("dalle", "unclip") for s in setting_specs(settings_class(k))}
    given = {n: getattr(args, n) for n in every if getattr(args, n, None) is not None}
    mine = {f.name for f in dataclasses.fields(settings)}  # type: ignore[arg-type]
    for generic, target in getattr(settings, "aliases", {}).items():
        if generic in given and target != generic:
            value = given.pop(generic)
            if given.get(target, value) != value:
                flag = "--" + target.replace("_", "-")
                raise ConfigError(f"--{generic} sets {flag} on a {kind} pipeline: give one of them")
            given[target] = value
    wrong = sorted(n for n in given if n not in mine)
    if wrong or (kind != "dalle" and args.image_prompt):
        names = ", ".join("--" + k.replace("_", "-") for k in wrong) or "--image-prompt"
        raise ConfigError(f"{names} do(es) not apply to a {kind} pipeline")
    return given


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
