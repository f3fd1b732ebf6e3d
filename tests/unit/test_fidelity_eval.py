"""Caption fidelity over a manifest: the checker's verdicts, claims, buckets and skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tessera.config.shapes import ShapesConfig
from tessera.data.shapes import ShapesSource, parse_prompt
from tessera.errors import DataError
from tessera.evaluation.fidelity import CLAIMS, fidelity_prompts, score_manifest, score_pairs
from tessera.evaluation.manifest import Entry, ImageSet, read_manifest, write_manifest


def _write_set(tmp_path, n: int = 24, *, swap: bool = False):
    src = ShapesSource(ShapesConfig(), split="eval", n=n)
    entries = []
    for i in range(n):
        prompt = src.prompt((i + 1) % n if swap else i)
        f = tmp_path / "img" / f"{i:03d}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(src.image(i)).save(f)
        entries.append(Entry(file=f, prompt=prompt, extra={"seed": i}))
    return write_manifest(tmp_path / "manifest.jsonl", entries), src


def test_rendered_images_pass_their_own_prompts(tmp_path) -> None:
    manifest, _ = _write_set(tmp_path)
    metrics, records = score_manifest(manifest)
    assert metrics["strict"] == 1.0 and metrics["n"] == 24 == len(records)
    assert metrics["n_seen"] + metrics["n_held_out"] == 24
    for claim in CLAIMS:
        assert metrics[claim] in (1.0, None)
    assert metrics["count"] == 1.0 and metrics["color_shape"] == 1.0
    assert all(r["passed"] for r in records)


def test_swapped_prompts_fail_and_claims_are_counted(tmp_path) -> None:
    manifest, _ = _write_set(tmp_path, swap=True)
    metrics, _ = score_manifest(manifest)
    assert metrics["strict"] < 0.3
    assert metrics["count"] < 1.0 or metrics["color_shape"] < 1.0


def test_skips_are_counted_not_fatal(tmp_path) -> None:
    manifest, _ = _write_set(tmp_path, n=6)
    lines = manifest.read_text().splitlines()
    (tmp_path / "img" / "000.png").write_bytes(b"not an image")
    extra = [
        json.dumps({"prompt": "a red circle", "file": "img/missing.png"}),
        json.dumps({"prompt": "a photo of a cat", "file": "img/001.png"}),
        json.dumps({"file": "img/002.png"}),
    ]
    manifest.write_text("\n".join(lines + extra) + "\n")
    metrics, _ = score_manifest(manifest)
    assert metrics["n"] == 5  # 6 - the corrupt one
    skipped = metrics["skipped"]
    assert skipped["prompt_not_canonical"] == 1 and skipped["prompt_missing"] == 1
    assert sum(skipped.values()) == 4


def test_bad_manifests_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle", "file": "x.png"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        read_manifest(bad)
    bad.write_text('{"prompt": "a red circle"}\n')
    with pytest.raises(DataError, match="needs a string 'file'"):
        read_manifest(bad)
    with pytest.raises(DataError, match="not found"):
        ImageSet(tmp_path / "missing_dir")


def test_balanced_prompts_have_the_requested_held_out_share() -> None:
    cfg = ShapesConfig()
    held = set(cfg.held_out)
    prompts = fidelity_prompts(40, held_out_share=0.5)
    n_held = sum(
        any(f"{o.color} {o.shape}" in held for o in parse_prompt(p).objects) for p in prompts
    )
    assert len(prompts) == 40 and n_held == 20
    assert fidelity_prompts(10) == [
        ShapesSource(cfg, split="eval", n=10).prompt(i) for i in range(10)
    ]
    with pytest.raises(DataError):
        fidelity_prompts(4, held_out_share=1.5)


def test_score_pairs_buckets_held_out_pairs() -> None:
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    m = score_pairs([("a green triangle", white), ("a red circle", white)])
    assert m["n_held_out"] == 1 and m["n_seen"] == 1 and m["strict"] == 0.0
    assert m["claims_held_out"]["count"] == 0.0
