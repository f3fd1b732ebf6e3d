"""Text side of DALL·E: the lower-cased byte-level BPE tokenizer, padding and truncation.

Usage::

    from tessera.text import TextTokenizer
    tok = TextTokenizer.train(captions, TokenizerConfig(vocab_size=512, max_length=32))
    batch = tok.encode_batch(["a small red circle"], train=True, seed=0)  # ids (B, 32) int64
    tok.save("runs/tok"); tok = TextTokenizer.load("runs/tok")

See :mod:`tessera.text.tokenizer` for the pipeline and the decisions behind it.
"""

from tessera.text.tokenizer import (
    BOS,
    CONFIG_FILE,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    EncodedBatch,
    TextTokenizer,
    TokenizerStats,
    build_pipeline,
)

__all__ = [
    "BOS",
    "CONFIG_FILE",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "EncodedBatch",
    "TextTokenizer",
    "TokenizerStats",
    "build_pipeline",
]
