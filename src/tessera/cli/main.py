"""``tessera`` console entry point: a thin argparse tree; each group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tessera._version import __version__
from tessera.errors import TesseraError

# (group name, help, modules whose ``register(subparsers)`` add the group's commands)
GROUPS: list[tuple[str, str, list[str]]] = [
    ("data", "export, inspect and check image-caption data", ["data_shapes", "data_inspect"]),
    ("tokenizer", "train and use the BPE text tokenizer", ["tokenizer"]),
    ("vae", "stage 1: train and use the discrete VAE (image tokenizer)", ["vae", "vae_convert"]),
    (
        "vqgan",
        "stage 1 (beyond the paper): train and convert the VQGAN image tokenizer",
        ["vqgan"],
    ),
    ("dalle", "stage 2: train and inspect the text-image transformer", ["dalle"]),
    ("clip", "train and use CLIP, the contrastive model that reranks samples", ["clip"]),
    (
        "decoder",
        "unCLIP: train and use the diffusion decoder (CLIP embedding -> image)",
        ["decoder", "decoder_reconstruct"],
    ),
    ("upsampler", "unCLIP: train the diffusion upsamplers", ["upsampler"]),
    ("prior", "unCLIP: train the priors (caption -> CLIP image embedding)", ["prior"]),
    (
        "convert",
        "convert released weights into tessera checkpoints and pipeline folders",
        ["convert_rudalle", "convert_clip", "convert_karlo"],
    ),
    ("eval", "evaluate images from files: FID, IS, CLIP score, caption fidelity", ["eval"]),
]
# Top-level commands: modules whose ``register(subparsers)`` add one command each, or a few
# related ones (``manipulate``: variations, interpolate, textdiff, inpaint).
COMMANDS: list[str] = ["train_all", "generate", "manipulate", "demo", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description=(
            "tessera: DALL·E and DALL·E 2 (unCLIP) text-to-image: data, training, sampling, "
            "serving, evaluation."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tessera {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, modules in GROUPS:
        group = sub.add_parser(name, help=help_text, description=help_text)
        group_sub = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        group.set_defaults(func=lambda args, g=group: _print_help(g))
        for mod in modules:
            importlib.import_module(f"tessera.cli.{mod}").register(group_sub)
    for mod in COMMANDS:
        importlib.import_module(f"tessera.cli.{mod}").register(sub)
    parser.set_defaults(func=lambda args: _print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except TesseraError as e:
        print(f"tessera: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path the user gave: exists, missing, not a directory, no space...
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"tessera: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tessera: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
