"""Throughput of ``TextTokenizer.encode_batch`` on short shapes-like captions (target: >= 100k
captions/s on 2 cores). Prints one JSON line.

    python benchmarks/bench_tokenizer.py [--n 100000] [--batch 1024] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

SIZES = ["small", "large", "tiny", "big", "medium-sized"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "gray"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "ellipse", "cross", "diamond"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "upper", "lower", "center"]
RELATIONS = ["above", "below", "to the left of", "to the right of", "next to"]


def captions(n: int, seed: int) -> list[str]:
    """``n`` deterministic captions of 8-15 words, e.g. "a small red circle in the top left
    corner" (a stand-in for the shapes data set, generated here to keep this script
    independent of it)."""
    rng = random.Random(seed)

    def obj() -> str:
        return f"{rng.choice(['a', 'one'])} {rng.choice(SIZES)} {rng.choice(COLORS)} " + (
            rng.choice(SHAPES)
        )

    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            text = f"{obj()} in the {rng.choice(PLACES)} corner of the image"
        elif kind < 0.8:
            text = f"{obj()} {rng.choice(RELATIONS)} {obj()}"
        else:
            text = f"{obj()} and {obj()} on a {rng.choice(COLORS)} background"
        out.append(text.capitalize() if rng.random() < 0.3 else text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="captions per repeat")
    parser.add_argument("--batch", type=int, default=1024, help="captions per encode_batch call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="RAYON_NUM_THREADS")
    parser.add_argument("--train", action="store_true", help="encode with BPE dropout")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool
    if "tokenizers" in sys.modules:
        raise SystemExit("tokenizers was imported before RAYON_NUM_THREADS was set")

    from tessera.config.text import TokenizerConfig
    from tessera.text import TextTokenizer

    tok = TextTokenizer.train(captions(20_000, seed=0), TokenizerConfig())
    texts = captions(args.n, seed=1)
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    tokens = sum(int(tok.encode_batch(b).lengths.sum()) for b in batches)  # warm-up pass
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for b in batches:
            tok.encode_batch(b, train=args.train)
        rates.append(len(texts) / (time.perf_counter() - t0))
    result = {
        "benchmark": "tokenizer_encode" + ("_train" if args.train else ""),
        "captions_per_s_median": round(statistics.median(rates)),
        "min": round(min(rates)),
        "max": round(max(rates)),
        "batch": args.batch,
        "n": args.n,
        "repeats": args.repeats,
        "threads": args.threads,
        "vocab_size": tok.vocab_size,
        "max_length": tok.max_length,
        "tokens_per_caption": round(tokens / len(texts), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
