"""The zero-shot composition ablation (issue 27) as a Markdown table, from the JSON rows that
``benchmarks/ablate_composition.py`` prints; prints the table.

    python benchmarks/ablation_table.py benchmarks/results/ablate_composition/*.json

One line per row and guidance: strict pass rate overall, on seen and on held-out pairs, and
colour+shape on held-out pairs, unranked and CLIP-reranked 8 -> 1; training updates and
wall time (with the threads it ran on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def rows(paths: list[Path]) -> list[str]:
    out = [
        "| row | updates | train wall | guidance | unranked: strict / seen / held-out "
        "| held-out colour+shape | rerank 8 → 1: strict / seen / held-out "
        "| held-out colour+shape |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        r = json.loads(p.read_text().strip().splitlines()[-1])
        wall = r.get("train_s")
        threads = r.get("train_threads", r.get("threads"))
        wall_s = "–" if wall is None else f"{wall / 60:.1f} min ({threads} thr)"
        for key in [k for k in r if k.startswith("unranked_g")]:
            g = key.removeprefix("unranked_g")
            u, rr = r[key], r.get(f"rerank8_g{g}")
            buckets = ("strict", "seen", "held_out")
            cells = [
                r["name"],
                str(r.get("steps") or "–"),
                wall_s,
                g,
                " / ".join(_pct(u[k]) for k in buckets),
                _pct(u["color_shape_held_out"]),
                "–" if rr is None else " / ".join(_pct(rr[k]) for k in buckets),
                "–" if rr is None else _pct(rr["color_shape_held_out"]),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", type=Path)
    args = ap.parse_args()
    print("\n".join(rows(args.rows)))


if __name__ == "__main__":
    main()
