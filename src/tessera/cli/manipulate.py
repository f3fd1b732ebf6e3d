"""``tessera variations | interpolate | textdiff | inpaint``: unCLIP's image manipulations (§3) on
an unCLIP pipeline folder. Each writes one PNG per output image, the inputs resized to the output
size (``input*.png``), a grid/strip PNG with the inputs first, and ``manifest.jsonl``."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    model = "unclip (the shipped shapes unCLIP pipeline, the default) or an unCLIP pipeline folder"
    p = subparsers.add_parser(
        "variations",
        help="unCLIP: variations of an image (invert once, decode with eta > 0)",
        description=(
            "The image is CLIP-embedded (z_i) and DDIM-inverted under the decoder (x_T); the "
            "decoder then samples n times from that x_T with DDIM eta > 0. Writes "
            "variation_NNN.png, input.png, grid.png and manifest.jsonl."
        ),
    )
    p.add_argument("image", help="image file")
    p.add_argument("--n", type=int, default=8, help="variations (default 8)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta in (0, 1] (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decoder's noise (default 0)")
    p.add_argument("--model", default="unclip", help=model)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_variations)

    p = subparsers.add_parser(
        "interpolate",
        help="unCLIP: interpolate between two images (slerp of z_i and x_T)",
        description=(
            "Both images are inverted to (z_i, x_T); frames slerp both from A (theta 0) to B "
            "(theta 1), decoded with eta 0, so the end frames reconstruct the inputs. Writes "
            "frame_NNN.png, input_a.png, input_b.png, strip.png and manifest.jsonl."
        ),
    )
    p.add_argument("image_a", metavar="A", help="first image file")
    p.add_argument("image_b", metavar="B", help="last image file")
    p.add_argument(
        "--steps", "--frames", dest="frames", type=int, default=8, help="frames (default 8)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the upsamplers' noise, all frames (default 0)"
    )
    p.add_argument("--model", default="unclip", help=model)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_interpolate)

    p = subparsers.add_parser(
        "textdiff",
        help="unCLIP: edit an image along a text direction (z_t(to) - z_t(from))",
        description=(
            "z_d = normalise(z_t(TO) - z_t(FROM)); frames decode slerp(z_i, z_d, theta) for "
            "theta from 0 to --max-theta from the image's inverted x_T with eta 0 (theta 0 "
            "reconstructs it). Writes frame_NNN.png, input.png, strip.png, manifest.jsonl."
        ),
    )
    p.add_argument("image", help="image file")
    p.add_argument("--from", dest="from_caption", required=True, help="what the image shows")
    p.add_argument("--to", dest="to_caption", required=True, help="what it should show")
    p.add_argument(
        "--steps", "--frames", dest="frames", type=int, default=5, help="frames (default 5)"
    )
    p.add_argument("--max-theta", type=float, default=0.5, help="last theta (default 0.5)")
    p.add_argument(
        "--seed", type=int, default=0, help="the upsamplers' noise, all frames (default 0)"
    )
    p.add_argument("--model", default="unclip", help=model)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_textdiff)

    p = subparsers.add_parser(
        "inpaint",
        help="unCLIP: repaint the masked region of an image to match a prompt",
        description=(
            "The decoder fills the region the mask marks (white = repaint, black = keep; grey "
            "is thresholded at 50%%; same size as the image) so that the image matches the "
            "prompt, and every upsampler keeps the known pixels (RePaint, no retraining): "
            "pixels outside the mask are the input's, exactly. An empty mask is an error, a "
            "full one is text to image. Writes inpaint_NNN.png (best CLIP score first), "
            "input.png, mask.png, grid.png and manifest.jsonl."
        ),
    )
    p.add_argument("image", help="image file")
    p.add_argument("prompt", help="what the whole image should show")
    p.add_argument("--mask", required=True, help="mask image file: white = repaint")
    p.add_argument("--n", type=int, default=4, help="results, best first (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument(
        "--steps", type=int, default=None, help="decoder steps (default: the pipeline's)"
    )
    p.add_argument(
        "--resample", type=int, default=1, help="RePaint resamplings per jump (default 1: none)"
    )
    p.add_argument("--jump", type=int, default=1, help="RePaint jump length (default 1)")
    p.add_argument("--model", default="unclip", help=model)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_inpaint)


def _pipeline(model: str) -> tuple[Any, str]:
    """The unCLIP pipeline ``model`` names (``unclip``: the shipped one; resolved by
    ``load_pipeline``, as everywhere) or holds; one-line errors."""
    from tessera.errors import CheckpointError, ConfigError
    from tessera.pipelines import load_pipeline, pipeline_kind, resolve_pipeline
    from tessera.pipelines.base import MODEL_INDEX

    path = resolve_pipeline(model)
    if not path.exists():
        raise CheckpointError(f"pipeline checkpoint not found: {path}")
    if not (path / MODEL_INDEX).is_file():
        raise ConfigError(f"{path} is not a pipeline folder (no {MODEL_INDEX}): pass an unCLIP one")
    kind = pipeline_kind(path)
    if kind != "unclip":
        raise ConfigError(f"{model} is a {kind!r} pipeline: image manipulations need unCLIP")
    return load_pipeline(path), str(path)


def _image(path: str, size: int) -> Any:
    """One image file -> (1, 3, size, size) in [0, 1] (shorter side resized, centre crop)."""
    from pathlib import Path

    from tessera.data.image_io import load_image
    from tessera.data.transforms import center_crop, resize_shorter, to_tensor
    from tessera.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"no such image file: {path}")
    return to_tensor(center_crop(resize_shorter(load_image(path), size), size))[None]


# (file name, image (3, S, S) in [0, 1], label under its tile, manifest record)
Entry = tuple[str, Any, str, dict]


def _write(out_dir: str, entries: list[Entry], grid: str, ncol: int, common: dict) -> None:
    """A PNG per entry, the labelled grid (``ncol`` tiles a row) and ``manifest.jsonl``."""
    import json
    from pathlib import Path

    import torch

    from tessera.data.images import grid_png, png_bytes, to_uint8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(torch.stack([e[1] for e in entries]))
    lines = []
    for (name, _, _, rec), px in zip(entries, pixels, strict=True):
        (out / name).write_bytes(png_bytes(px))
        lines.append(json.dumps({"file": name, **rec, **common}))
    labels = [e[2] for e in entries]
    (out / grid).write_bytes(grid_png(list(pixels), ncol, captions=labels))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(entries)} images, {grid} and manifest.jsonl to {out}")


def _settings(pipe: Any, model: str, seed: int, **extra: Any) -> dict:
    s = pipe.settings
    return {
        "model": model,
        "seed": seed,
        "decoder_steps": s.decoder_steps,
        "upsampler_steps": s.upsampler_steps,
        **extra,
    }


def _input(name: str, image: Any, path: str, label: str) -> Entry:
    return (name, image[0], label, {"kind": "input", "image": path})


def _variations(args: argparse.Namespace) -> int:
    import torch

    from tessera.errors import ConfigError
    from tessera.pipelines.manipulations import variations

    if args.n < 1 or not 0 < args.eta <= 1:
        raise ConfigError("--n must be >= 1 and --eta in (0, 1]")
    pipe, model = _pipeline(args.model)
    image = _image(args.image, pipe.image_size)
    gen = torch.Generator(device=pipe.device).manual_seed(args.seed)
    guidance = pipe.settings.decoder_guidance  # variations are samples: the pipeline's scale
    out = variations(pipe, image, n=args.n, eta=args.eta, generator=gen, guidance=guidance)
    entries = [_input("input.png", image, args.image, "input")]
    for i, img in enumerate(out):
        entries.append((f"variation_{i:03d}.png", img, f"#{i}", {"kind": "variation", "index": i}))
    common = _settings(pipe, model, args.seed, eta=args.eta, decoder_guidance=guidance)
    _write(args.out, entries, "grid.png", min(len(entries), 9), common)
    return 0


def _frames(out_dir: str, images: Any, thetas: list[float], inputs: list, common: dict) -> None:
    entries = list(inputs)
    for i, (img, theta) in enumerate(zip(images, thetas, strict=True)):
        rec = {"kind": "frame", "index": i, "theta": round(theta, 6)}
        entries.append((f"frame_{i:03d}.png", img, f"θ={theta:.2f}", rec))
    _write(out_dir, entries, "strip.png", len(entries), common)


def _interpolate(args: argparse.Namespace) -> int:
    import torch

    from tessera.errors import ConfigError
    from tessera.pipelines.manipulations import interpolate

    if args.frames < 2:
        raise ConfigError(f"--steps (frames) must be >= 2, got {args.frames}")
    pipe, model = _pipeline(args.model)
    a, b = _image(args.image_a, pipe.image_size), _image(args.image_b, pipe.image_size)
    out = interpolate(pipe, a, b, frames=args.frames, seed=args.seed)
    inputs = [
        _input("input_a.png", a, args.image_a, "A"),
        _input("input_b.png", b, args.image_b, "B"),
    ]
    common = _settings(pipe, model, args.seed, eta=0.0, decoder_guidance=1.0)
    _frames(
        args.out,
        out,
        torch.linspace(0, 1, args.frames, dtype=torch.float64).tolist(),
        inputs,
        common,
    )
    return 0


def _textdiff(args: argparse.Namespace) -> int:
    import torch

    from tessera.errors import ConfigError
    from tessera.pipelines.manipulations import text_diff

    if args.frames < 2 or not 0 < args.max_theta <= 1:
        raise ConfigError("--steps (frames) must be >= 2 and --max-theta in (0, 1]")
    pipe, model = _pipeline(args.model)
    image = _image(args.image, pipe.image_size)
    out = text_diff(
        pipe,
        image,
        args.from_caption,
        args.to_caption,
        frames=args.frames,
        max_theta=args.max_theta,
        seed=args.seed,
    )
    texts = {"from": args.from_caption, "to": args.to_caption, "max_theta": args.max_theta}
    common = _settings(pipe, model, args.seed, eta=0.0, decoder_guidance=1.0, **texts)
    thetas = torch.linspace(0, args.max_theta, args.frames, dtype=torch.float64).tolist()
    _frames(args.out, out, thetas, [_input("input.png", image, args.image, "input")], common)
    return 0


def _plain(path: str, what: str) -> Any:
    """An image file at its own size -> (1, 3, H, W) in [0, 1]; a one-line error if missing."""
    from pathlib import Path

    from tessera.data.image_io import load_image
    from tessera.data.transforms import to_tensor
    from tessera.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"no such {what} file: {path}")
    return to_tensor(load_image(path))[None]


def _inpaint(args: argparse.Namespace) -> int:
    from tessera.errors import ConfigError
    from tessera.pipelines.manipulations import inpaint

    if args.n < 1 or args.resample < 1 or args.jump < 1:
        raise ConfigError("--n, --resample and --jump must be >= 1")
    pipe, model = _pipeline(args.model)
    image = _plain(args.image, "image")
    mask = _plain(args.mask, "mask").mean(dim=1, keepdim=True)  # (1, 1, H, W) grey
    out = inpaint(
        pipe, image, mask, args.prompt, n=args.n, seed=args.seed, steps=args.steps,
        resample=args.resample, jump=args.jump,
    )  # fmt: skip
    size = pipe.image_size
    entries = [
        _input("input.png", _image(args.image, size), args.image, "input"),
        ("mask.png", _fit_mask(mask, size), "mask", {"kind": "mask", "image": args.mask}),
    ]
    for i, img in enumerate(out.images):
        score = None if out.scores is None else round(float(out.scores[i]), 4)
        rec = {"kind": "inpainting", "index": i, "prompt": args.prompt, "clip_score": score}
        entries.append((f"inpaint_{i:03d}.png", img, f"#{i}", rec))
    extra = {"resample": args.resample, "jump": args.jump, "eta": 1.0}
    _write(args.out, entries, "grid.png", len(entries), _settings(pipe, model, args.seed, **extra))
    return 0


def _fit_mask(mask: Any, size: int) -> Any:
    """The binary mask as a (3, size, size) tile, as inpaint saw it."""
    import torch.nn.functional as F

    m = F.interpolate((mask > 0.5).float(), size=(size, size), mode="area") > 0
    return m.float()[0].expand(3, -1, -1)
