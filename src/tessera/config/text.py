"""Config of the BPE text tokenizer (paper: lower-cased BPE, vocab 16384, <= 256 tokens)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tessera.config.base import Config, register_preset
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerConfig(Config):
    """Byte-level BPE trained with HF ``tokenizers``.

    vocab_size: total vocabulary including special tokens (paper: 16384).
    max_length: text context in tokens (paper: 256); longer captions are truncated and counted.
    min_frequency: minimum pair count for a merge during training.
    dropout: BPE dropout used only when encoding for training (paper: 0.1); never at inference.
    pad_token / bos_token / eos_token: the special tokens' text. tessera's own tokenizers hold
      ``<pad>, <bos>, <eos>`` at ids 0, 1, 2; a converted vocabulary (OpenAI CLIP's BPE:
      ``<|endoftext|>`` pads and ends, ``<|startoftext|>`` begins) keeps its own ids.
    add_bos: ``encode_batch`` starts every caption with ``bos_token`` (CLIP's tokenizer does;
      tessera's models read no ``<bos>``).
    """

    kind: ClassVar[str] = "tokenizer"

    vocab_size: int = 16384
    max_length: int = 256
    min_frequency: int = 2
    dropout: float = 0.1
    pad_token: str = "<pad>"
    bos_token: str = "<bos>"
    eos_token: str = "<eos>"
    add_bos: bool = False

    def validate(self) -> None:
        if self.vocab_size < 260:
            raise ConfigError(
                f"tokenizer.vocab_size must be >= 260 (bytes + specials), got {self.vocab_size}"
            )
        if self.max_length < 1:
            raise ConfigError(f"tokenizer.max_length must be >= 1, got {self.max_length}")
        if self.min_frequency < 1:
            raise ConfigError("tokenizer.min_frequency must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"tokenizer.dropout must be in [0, 1), got {self.dropout}")
        if not (self.pad_token and self.bos_token and self.eos_token):
            raise ConfigError("tokenizer.pad_token, bos_token and eos_token must be non-empty")
        if self.max_length < 1 + int(self.add_bos):
            raise ConfigError("tokenizer.max_length must leave room for <bos>")


@register_preset("tokenizer", "dalle")
def _tok_dalle() -> TokenizerConfig:
    return TokenizerConfig()


@register_preset("tokenizer", "shapes")
def _tok_shapes() -> TokenizerConfig:
    return TokenizerConfig(vocab_size=512, max_length=32)


@register_preset("tokenizer", "tiny")
def _tok_tiny() -> TokenizerConfig:
    return TokenizerConfig(vocab_size=300, max_length=16)
