"""Shared by the ``tessera serve`` tests: a tiny random-weight pipeline folder, a pipeline
that blocks until released (to fill the queue on purpose), and a real uvicorn server on a
free 127.0.0.1 port in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import torch


def build_tiny_pipeline(out: Path) -> Path:
    """An untrained tiny DALL·E + dVAE + tokenizer + CLIP pipeline folder (32 px, 8x8 grid)."""
    from tessera.config.presets import preset
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource
    from tessera.models.clip import CLIP
    from tessera.models.dalle import DALLE
    from tessera.pipelines.dalle import save_pipeline
    from tessera.text.tokenizer import TextTokenizer
    from tessera.training.stages.vae import STAGE as VAE_STAGE
    from tessera.vae.model import DiscreteVAE

    src = ShapesSource(ShapesConfig(size=32), split="train", n=200)
    tok = TextTokenizer.train([src.prompt(i) for i in range(200)], preset("tokenizer", "tiny"))
    torch.manual_seed(0)
    vae = DiscreteVAE(VAE_STAGE.presets["tiny"]()[0])
    dalle, clip = DALLE(preset("dalle", "tiny")), CLIP(preset("clip", "tiny"))
    return save_pipeline(out, model=dalle, vae=vae, tokenizer=tok, clip=clip, clip_tokenizer=tok)


def build_tiny_unclip_pipeline(out: Path) -> Path:
    """An untrained tiny unCLIP pipeline folder (tokenizer, CLIP, diffusion prior, 32 px
    decoder, no upsampler), with the fewest sampling steps: it answers in a blink."""
    from tessera.config.presets import preset
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource
    from tessera.models.clip import CLIP
    from tessera.models.decoder import Decoder
    from tessera.models.prior import DiffusionPrior
    from tessera.pipelines.unclip import save_unclip_pipeline
    from tessera.text.tokenizer import TextTokenizer

    src = ShapesSource(ShapesConfig(size=32), split="train", n=200)
    tok = TextTokenizer.train([src.prompt(i) for i in range(200)], preset("tokenizer", "tiny"))
    torch.manual_seed(0)
    return save_unclip_pipeline(
        out,
        tokenizer=tok,
        clip=CLIP(preset("clip", "tiny")),
        clip_tokenizer=tok,
        priors={"diffusion": DiffusionPrior(preset("prior", "tiny"))},
        decoder=Decoder(preset("decoder", "tiny")),
        defaults={"prior_steps": 2, "prior_candidates": 1, "decoder_steps": 2},
    )


class FailingPipeline:
    """Wraps a pipeline; ``generate`` raises an unexpected error (a server-side fault)."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def generate(self, *args, **kwargs):
        raise TypeError("boom: an unexpected fault inside the model")


class BlockingPipeline:
    """Wraps a pipeline; ``generate`` waits for ``release`` (and counts its calls)."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        assert self.release.wait(30), "BlockingPipeline was never released"
        return self._pipe.generate(*args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
