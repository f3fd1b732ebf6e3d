"""The server's settings: where it listens, which models it loads, and every limit."""

from __future__ import annotations

import dataclasses

from tessera.errors import ConfigError

__all__ = ["DEFAULT_MODEL", "ServeConfig"]

DEFAULT_MODEL = "dalle"  # the shipped shapes DALL·E pipeline


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Settings of ``tessera serve``; each limit has its own HTTP answer.

    models: shipped names (``dalle``, ``unclip``; resolved by
      :func:`tessera.pipelines.load_pipeline`, served under those names) or pipeline folders
      (served under their folder names).
    max_body_bytes: the largest request body (413 above it), JSON and uploads alike.
    max_image_pixels: width * height cap of an uploaded image, read from its header before
      decoding (400 above it: a decompression bomb never gets decoded).
    image_formats: the Pillow decoders an upload may use (anything else is a 400).
    max_prompt_chars: longer prompts are cut to this, with a warning in the response (and a
      prompt past the model's text context is cut by the model, also with a warning: every
      model alike).
    max_n / max_candidates / max_steps: caps on images returned, samples drawn and (for
      generators that take them) denoising steps; above a cap is a 422 naming it.
    queue_size: requests that may wait per model while one runs; beyond is a 429 with
      ``Retry-After``.
    request_timeout_s: the most a request may take, queueing included (504 after it).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    max_body_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
    max_prompt_chars: int = 300
    max_n: int = 16
    max_candidates: int = 64
    max_steps: int = 250
    queue_size: int = 4
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("serve: give at least one --model")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"serve: a model is named twice in {list(self.models)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be in [0, 65535], got {self.port}")
        for name in ("max_body_bytes", "max_image_pixels", "max_prompt_chars", "max_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_candidates < self.max_n:
            raise ConfigError("serve: max_candidates must be >= max_n")
        if self.max_steps < 1 or self.queue_size < 0 or self.request_timeout_s <= 0:
            raise ConfigError("serve: need max_steps >= 1, queue_size >= 0, request_timeout_s > 0")
        if not self.image_formats:
            raise ConfigError("serve: image_formats must name at least one format")
        object.__setattr__(self, "image_formats", tuple(f.upper() for f in self.image_formats))
