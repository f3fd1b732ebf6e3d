"""Zero-shot classification and retrieval of a trained CLIP on ``shapes``; prints one JSON line.

    python benchmarks/eval_clip_shapes.py RUN_DIR/final [--n 1000] [--batch 64] [--threads 2]
        [--seed 0] [--device cpu]

Images are rendered at the model's ``image_size`` (as ``tessera clip train`` renders them) from
the eval split of ``ShapesConfig(seed=--seed)``; seed 0 is the split the training hook's
recall@1 uses. Every prompt is canonical (``tessera.data.shapes.canonical_prompt`` of a scene,
checked with ``parse_prompt``); nothing here is random.

Fields:

- ``classification``: zero-shot accuracy on the first ``n_single`` one-object eval images
  (``--n`` of them). The true prompt is ``a {size} {color} {shape} {where}``; for each
  attribute the candidates are that prompt with only the attribute swapped over all its values
  (``color``: the 6 colours, ``shape``: 3, ``size``: 2, ``position``: the 9 cells' where
  phrases), built by ``canonical_prompt`` on the scene with that attribute changed. An image
  counts as correct when the true prompt has the highest cosine among the candidates (a tie
  with a wrong candidate counts as wrong). ``exact``: the true prompt beats all
  6 * 3 * 2 * 9 = 324 one-object canonical prompts. Each entry holds ``acc``, ``chance``
  (1 / candidates), ``candidates``, and ``acc_seen`` / ``acc_held_out`` (images whose
  colour-shape pair is / is not in ``ShapesConfig.held_out``, the default list: the checkpoint
  does not record what its training held out). ``n_single`` / ``n_single_held_out`` count the
  images; ``scanned`` is how many eval examples were read to find them.
- ``classification["relation"]``: the first ``n`` two-object eval images; the candidates are
  the image's canonical prompt with each of the 4 relations (same objects, same order).
- ``retrieval``: the first ``n_pairs`` (``--pairs``, default 256) eval examples (one- and
  two-object), image
  ``i`` paired with its canonical prompt ``i``. ``i2t_r1`` / ``i2t_r5`` / ``t2i_r1`` /
  ``t2i_r5`` count a retrieved item as correct when its prompt *text* equals the query's true
  prompt (identical canonical prompts are the same text, so retrieving a twin is right);
  ``strict_*`` are the same recalls by index (only item ``i`` is right: ``recall_at_k`` of
  ``tessera.evaluation.retrieval``). In both, a wrong item scoring equal to the best right one
  ranks ahead of it. Each distinct prompt is embedded once, so twins tie exactly and a query
  with a twin always fails ``strict_*_r1``: ``strict_r1_ceiling`` = 1 - ``twinned_queries`` /
  ``n_pairs`` is the most it can reach. ``duplicate_prompts``: ``n_pairs`` minus the number of
  distinct prompts. ``chance_r1`` is 1 / ``n_pairs``.
- ``timing``: ``images_per_s`` / ``texts_per_s`` of embedding alone (rendering and tokenizer
  loading excluded; texts include tokenization) over every image and text embedded,
  ``embed_s``, and ``foreign_cpu_frac``, the share of the machine other processes used during
  the whole evaluation, rendering included (see _common.py; above ~0.05 timings are
  contaminated).
- ``model``: ``image_size``, ``render_size`` (the drawn canvas; a model size the shapes data
  cannot draw renders at 64 px and is resized by ``CLIPScorer``), ``embed_dim``, parameters.
- ``settings``: the command-line arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

from _common import Contention

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="CLIP checkpoint directory (tessera clip train: RUN/final)")
    ap.add_argument("--n", type=int, default=1000, help="images per zero-shot classification")
    ap.add_argument("--pairs", type=int, default=256, help="retrieval candidates (default 256)")
    ap.add_argument("--batch", type=int, default=64, help="images or texts per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="shapes data seed (ShapesConfig.seed)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.n < 1 or args.batch < 1:
        ap.error("--n and --batch must be >= 1")

    import numpy as np
    import torch

    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import (
        CELLS,
        COLORS,
        SHAPES,
        SIZES,
        ShapesSource,
        canonical_prompt,
        parse_prompt,
    )
    from tessera.errors import ConfigError
    from tessera.evaluation.retrieval import recall_at_k
    from tessera.sampling.rerank import load_scorer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    scorer = load_scorer(args.checkpoint, batch_size=args.batch)
    scorer.model.to(args.device)
    mcfg = scorer.model.config
    try:
        shapes_cfg = ShapesConfig(size=mcfg.image_size, seed=args.seed)
    except ConfigError:
        shapes_cfg = ShapesConfig(seed=args.seed)  # CLIPScorer resizes to image_size
    held_out = {tuple(p.split()) for p in shapes_cfg.held_out}
    src = ShapesSource(shapes_cfg, split="eval")  # endless: positions are example indices

    timer = {"images": 0, "texts": 0, "image_s": 0.0, "text_s": 0.0}

    def embed_images(positions: list[int]) -> torch.Tensor:
        """(N, D) embeddings of the images at ``positions``, rendered a batch at a time."""
        out = []
        for s in range(0, len(positions), args.batch):
            chunk = np.stack([src.image(i) for i in positions[s : s + args.batch]])
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div_(255.0)
            t0 = time.perf_counter()
            out.append(scorer.embed_images(x))
            timer["image_s"] += time.perf_counter() - t0
        timer["images"] += len(positions)
        return torch.cat(out)

    def embed_texts(prompts: list[str]) -> torch.Tensor:
        t0 = time.perf_counter()
        emb = scorer.embed_texts(prompts)
        timer["text_s"] += time.perf_counter() - t0
        timer["texts"] += len(prompts)
        return emb

    with Contention() as contention:
        # -- zero-shot classification on one-object scenes ------------------------------------
        singles, scenes = [], []
        for i in itertools.count():
            if len(singles) == args.n:
                break
            scene = src.scene(i)
            if scene.relation is None:
                singles.append(i)
                scenes.append(scene)
        scanned = singles[-1] + 1

        def prompt_of(scene, **change) -> str:
            """The canonical prompt of the one-object ``scene`` with object fields changed."""
            obj = dataclasses.replace(scene.objects[0], **change)
            return canonical_prompt(dataclasses.replace(scene, objects=(obj,)))

        # Every one-object canonical prompt, keyed by (color, shape, size, cell); the other
        # object fields (box geometry) do not enter the prompt.
        axes = {"color": COLORS, "shape": SHAPES, "size": SIZES, "cell": CELLS}
        keys = list(itertools.product(*axes.values()))
        table = [prompt_of(scenes[0], **dict(zip(axes, k))) for k in keys]
        for prompt, (color, shape, size, cell) in zip(table, keys):
            claim = parse_prompt(prompt).objects[0]
            assert (claim.color, claim.shape, claim.size, claim.where) == (
                color,
                shape,
                size,
                cell,
            ), prompt
        where = {k: j for j, k in enumerate(keys)}
        text_emb = embed_texts(table)  # (324, D)
        img_emb = embed_images(singles)  # (n, D)
        sim = img_emb @ text_emb.t()  # (n, 324)

        def correct(row: torch.Tensor, true_j: int, cand: list[int]) -> bool:
            """The true prompt strictly beats every other candidate."""
            others = [j for j in cand if j != true_j]
            return bool((row[true_j] > row[others]).all())

        hits: dict[str, list[bool]] = {name: [] for name in (*axes, "exact")}
        is_held = []
        for r, scene in enumerate(scenes):
            o = scene.objects[0]
            true_key = (o.color, o.shape, o.size, o.cell)
            assert table[where[true_key]] == canonical_prompt(scene)
            is_held.append((o.color, o.shape) in held_out)
            for a, name in enumerate(axes):
                cand = [where[(*true_key[:a], v, *true_key[a + 1 :])] for v in axes[name]]
                hits[name].append(correct(sim[r], where[true_key], cand))
            hits["exact"].append(correct(sim[r], where[true_key], list(range(len(keys)))))

        held = np.array(is_held, dtype=bool)

        def mean(x: np.ndarray) -> float | None:
            return round(float(x.mean()), 4) if x.size else None

        n_cand = {**{k: len(v) for k, v in axes.items()}, "exact": len(keys)}
        classification = {}
        for name, h in hits.items():
            arr = np.array(h, dtype=bool)
            classification["position" if name == "cell" else name] = {
                "acc": mean(arr),
                "acc_seen": mean(arr[~held]),
                "acc_held_out": mean(arr[held]),
                "chance": round(1.0 / n_cand[name], 4),
                "candidates": n_cand[name],
            }

        # -- relation: two-object scenes, the 4 relations between the same two objects ---------
        from tessera.data.shapes import RELATIONS

        doubles, double_scenes = [], []
        for i in itertools.count():
            if len(doubles) == args.n:
                break
            scene = src.scene(i)
            if scene.relation is not None:
                doubles.append(i)
                double_scenes.append(scene)
        rel_prompts = [
            canonical_prompt(dataclasses.replace(sc, relation=r))
            for sc in double_scenes
            for r in RELATIONS
        ]
        rel_emb = embed_texts(rel_prompts).view(len(doubles), len(RELATIONS), -1)
        rel_sim = torch.einsum("nd,nrd->nr", embed_images(doubles), rel_emb)  # (n, 4)
        rel_hits, rel_held = [], []
        for r, sc in enumerate(double_scenes):
            true_j = RELATIONS.index(sc.relation)
            assert rel_prompts[r * len(RELATIONS) + true_j] == canonical_prompt(sc)
            rel_hits.append(correct(rel_sim[r], true_j, list(range(len(RELATIONS)))))
            rel_held.append(any((o.color, o.shape) in held_out for o in sc.objects))
        arr, rheld = np.array(rel_hits, dtype=bool), np.array(rel_held, dtype=bool)
        classification["relation"] = {
            "acc": mean(arr),
            "acc_seen": mean(arr[~rheld]),
            "acc_held_out": mean(arr[rheld]),
            "chance": round(1.0 / len(RELATIONS), 4),
            "candidates": len(RELATIONS),
            "n": len(doubles),
        }

        # -- retrieval over the first n eval pairs --------------------------------------------
        pairs = list(range(args.pairs))
        prompts = [src.prompt(i) for i in pairs]
        distinct = list(dict.fromkeys(prompts))
        index = {p: j for j, p in enumerate(distinct)}
        pid = torch.tensor([index[p] for p in prompts])
        txt = embed_texts(distinct)[pid]  # (n, D): twins share one embedding
        img = embed_images(pairs)
        sim = img @ txt.t()  # (n images, n texts)
        same = pid[:, None] == pid[None, :]  # (n, n) prompt i == prompt j

        def text_recall(s: torch.Tensor, k: int) -> float:
            """Rows are queries: found when fewer than ``k`` wrong items score at least as high
            as the best right one (right: the same prompt text)."""
            best = s.masked_fill(~same, float("-inf")).amax(1)
            wrong_ahead = ((s >= best[:, None]) & ~same).sum(1)
            return round(float((wrong_ahead < k).float().mean()), 4)

        retrieval: dict[str, float | int] = {"n_pairs": args.pairs}
        for k in (1, 5):
            i2t, t2i = recall_at_k(sim, k)
            retrieval[f"i2t_r{k}"] = text_recall(sim, k)
            retrieval[f"t2i_r{k}"] = text_recall(sim.t(), k)
            retrieval[f"strict_i2t_r{k}"] = round(i2t, 4)
            retrieval[f"strict_t2i_r{k}"] = round(t2i, 4)
        twinned = int((same.sum(1) > 1).sum())
        retrieval["duplicate_prompts"] = args.pairs - len(distinct)
        retrieval["twinned_queries"] = twinned
        retrieval["strict_r1_ceiling"] = round(1.0 - twinned / args.pairs, 4)
        retrieval["chance_r1"] = round(1.0 / args.pairs, 6)

    embed_s = timer["image_s"] + timer["text_s"]
    report = {
        "bench": "clip_shapes_eval",
        "checkpoint": args.checkpoint,
        "classification": {
            **classification,
            "n_single": args.n,
            "n_single_held_out": int(held.sum()),
            "scanned": scanned,
        },
        "retrieval": retrieval,
        "timing": {
            "images_per_s": round(timer["images"] / timer["image_s"], 1),
            "texts_per_s": round(timer["texts"] / timer["text_s"], 1),
            "embed_s": round(embed_s, 3),
            "foreign_cpu_frac": (
                None if contention.foreign is None else round(contention.foreign, 3)
            ),
        },
        "model": {
            "image_size": mcfg.image_size,
            "render_size": shapes_cfg.size,
            "embed_dim": mcfg.embed_dim,
            "parameters": sum(p.numel() for p in scorer.model.parameters()),
        },
        "settings": vars(args),
        "device": str(scorer.device),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
