"""``tessera serve``: the local web demo and JSON API (needs the ``[serve]`` extra)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a web demo and JSON API for the loaded models (pip install -e '.[serve]')",
        description=(
            "Serve a web page and a JSON API (documented at /docs) that generate images with "
            "the loaded pipelines. Binds 127.0.0.1 unless --host says otherwise; makes no "
            "external requests. Every limit below has its own HTTP answer."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME_OR_DIR",
        help="dalle or unclip (the shipped DALL·E and DALL·E 2 pipelines, served under those "
        "names) or a pipeline folder (served under its folder name); repeatable, e.g. "
        "--model dalle --model unclip (default: dalle)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="413 above (default: 4 MiB)"
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        help="uploads: 400 above (default: 4096 x 4096)",
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=300,
        help="longer prompts are cut, with a warning in the answer (default: 300)",
    )
    p.add_argument(
        "--max-n", type=int, default=16, help="images per request (422 above; default: 16)"
    )
    p.add_argument(
        "--max-candidates", type=int, default=64, help="samples drawn (422 above; default: 64)"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=250,
        help="denoising steps, unCLIP (422 above; default: 250)",
    )
    p.add_argument(
        "--queue-size", type=int, default=4, help="waiting requests per model (429; default: 4)"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (504; default: 120)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tessera.apps.serve import DEFAULT_MODEL, ServeConfig, require_dependencies, serve

    require_dependencies()
    config = ServeConfig(
        host=args.host,
        port=args.port,
        models=tuple(args.model or [DEFAULT_MODEL]),
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        max_prompt_chars=args.max_prompt_chars,
        max_n=args.max_n,
        max_candidates=args.max_candidates,
        max_steps=args.max_steps,
        queue_size=args.queue_size,
        request_timeout_s=args.timeout,
    )
    serve(config, log_level="debug" if getattr(args, "verbose", False) else "info")
    return 0
