"""``tessera tokenizer train|encode``: train the BPE text tokenizer on a data source's
captions (or a .txt file, one caption per line) and inspect its encodings."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from tessera.cli.data_inspect import positive_int
from tessera.data.sources import DEFAULT_CAPTION_EXAMPLES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the BPE tokenizer on captions",
        description=(
            "Train the lower-cased byte-level BPE tokenizer on the captions of SOURCE and write "
            "DIR/tokenizer.json + DIR/config.json. SOURCE: a .txt file (one caption per line) "
            "or a data source spec: shapes[:train|:eval], folder:DIR, coco:DIR, cub:DIR, "
            "wds:PATTERN."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help=".txt file or data source spec")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--preset", default="dalle", help="tokenizer preset (default: dalle)")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's")
    p.add_argument("--max-length", type=int, default=None, help="override the preset's")
    p.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help=f"examples to read (default: {DEFAULT_CAPTION_EXAMPLES} from a data source; "
        "every line of a .txt file)",
    )
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "encode",
        help="print the token ids and tokens of texts",
        description=(
            "Encode each TEXT with the tokenizer in DIR (inference: no dropout). A text longer "
            "than the tokenizer's max_length is truncated to it, as a model would see it, and "
            "the number of dropped tokens is reported (--no-truncate prints every id)."
        ),
    )
    e.add_argument("dir", metavar="DIR", help="tokenizer directory or tokenizer.json")
    e.add_argument("texts", metavar="TEXT", nargs="+", help="text to encode")
    e.add_argument(
        "--no-truncate", action="store_true", help="print every id, even beyond max_length"
    )
    e.set_defaults(func=run_encode)


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tessera.config import preset
    from tessera.data.sources import iter_captions
    from tessera.text import TextTokenizer

    config = preset("tokenizer", args.preset)
    overrides = {"vocab_size": args.vocab_size, "max_length": args.max_length}
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    captions: list[str] = []
    bar = tqdm(iter_captions(args.source, args.n), unit="caption", desc="reading captions")
    captions.extend(bar)
    bar.close()
    tok = TextTokenizer.train(captions, config)
    tok.save(args.out)
    print(f"trained on {len(captions)} captions: vocabulary {tok.vocab_size} ids")
    for text in itertools.islice(dict.fromkeys(captions), 3):
        ids = tok.encode(text)
        print(f"  {text!r} -> {len(ids)} tokens {ids}")
    print(f"wrote {args.out / 'tokenizer.json'} and {args.out / 'config.json'}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from tessera.text import TextTokenizer

    tok = TextTokenizer.load(args.dir)
    limit = tok.max_length
    for text in args.texts:
        total = len(tok.encode(text, truncate=False))
        ids = tok.encode(text, truncate=not args.no_truncate)  # warns when it truncates
        note = ""
        if total > limit:
            dropped = total - limit
            note = (
                f" (over max_length {limit} by {dropped}; not truncated)"
                if args.no_truncate
                else f" (truncated to max_length {limit}: {dropped} of {total} tokens dropped)"
            )
        print(f"{text!r}: {len(ids)} tokens{note}")
        print(f"  ids:    {ids}")
        print(f"  tokens: {tok.tokens(ids)}")
    return 0
