"""The data-pipeline demo (``tessera demo --data``) on the built-in ``shapes`` set.

``make demo`` generates images (:mod:`tessera.apps.demo`); this one shows the data side:
render ``shapes`` examples, export them as a folder of pairs, read them back through the same
folder source real data uses (with bad-sample accounting), train the BPE tokenizer on the
captions, save and reload it as a checkpoint, encode every caption, and check every image
against each of its canonical captions with the shapes checker. Everything lands in
``out_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tessera.config import ShapesConfig, preset
from tessera.errors import DataError

log = logging.getLogger("tessera.apps.data_demo")


def run_data_demo(
    out_dir: str | Path, *, n_train: int = 2000, n_eval: int = 500, size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Run the data pipeline demo; returns (and writes to ``summary.json``) its figures."""
    from tessera import checkpoint
    from tessera.data import DataReport, open_source
    from tessera.data.inspect import make_grid
    from tessera.data.shapes import check_image, export_shapes, parse_prompt
    from tessera.text import TextTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ShapesConfig(size=size, seed=seed)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"shapes_config": cfg.to_dict(), "timings_s": timings}

    # 1. Render and export both splits as folders of NNNNNN.png + NNNNNN.txt.
    t = time.perf_counter()
    for split, n in (("train", n_train), ("eval", n_eval)):
        with tqdm(total=n, desc=f"render {split}", unit="img", leave=False) as bar:
            export_shapes(out / "data" / split, n=n, split=split, config=cfg, progress=bar.update)
    timings["render_export"] = time.perf_counter() - t

    # 2. Read them back through the generic folder source, as any user data would be.
    t = time.perf_counter()
    examples = {}
    for split in ("train", "eval"):
        report = DataReport()
        examples[split] = list(open_source(f"folder:{out / 'data' / split}", report=report))
        report.write(out / f"data_report_{split}.json")
        summary[f"{split}_examples"] = len(examples[split])
        summary[f"{split}_skipped"] = report.n_skipped
    timings["read_back"] = time.perf_counter() - t

    # 3. Train the BPE tokenizer on the train captions; save, reload as a checkpoint, encode.
    t = time.perf_counter()
    train_captions = [c for ex in examples["train"] for c in ex.captions]
    tok = TextTokenizer.train(train_captions, preset("tokenizer", "shapes"))
    tok.save(out / "tokenizer")
    tok = checkpoint.load(out / "tokenizer", kind="tokenizer")
    timings["tokenizer_train"] = time.perf_counter() - t
    t = time.perf_counter()
    eval_captions = [c for ex in examples["eval"] for c in ex.captions]
    batch = tok.encode_batch(eval_captions)
    timings["tokenizer_encode"] = time.perf_counter() - t
    summary["tokenizer"] = {
        "vocab_size": tok.vocab_size,
        "max_length": tok.max_length,
        "eval_captions": len(eval_captions),
        "mean_tokens": round(float(batch.lengths.float().mean()), 2),
        "max_tokens": int(batch.lengths.max()),
        "truncated": batch.truncated,
        "example": {eval_captions[0]: batch.ids[0, : int(batch.lengths[0])].tolist()},
    }

    # 4. Check every eval image (decoded from its PNG) against each canonical caption.
    t = time.perf_counter()
    checked = passed = 0
    for ex in tqdm(examples["eval"], desc="check", unit="img", leave=False):
        for caption in ex.captions:
            try:
                claims = parse_prompt(caption)
            except DataError:
                continue  # a paraphrase: not in canonical form, so not checkable
            checked += 1
            passed += check_image(ex.image, claims).passed
    timings["check"] = time.perf_counter() - t
    summary["checker"] = {
        "image_caption_pairs": checked,
        "passed": passed,
        "pass_rate": round(passed / max(checked, 1), 4),
    }

    grid = make_grid([ex.image for ex in examples["eval"][:32]], cols=8, cell=size)
    grid.save(out / "grid.png")
    with (out / "grid.txt").open("w", encoding="utf-8") as f:
        for i, ex in enumerate(examples["eval"][:32]):
            f.write(f"{i // 8},{i % 8}: {ex.captions[0]}\n")
    summary["files"] = sorted(str(p.relative_to(out)) for p in out.iterdir())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
