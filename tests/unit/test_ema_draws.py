"""The EMA's warm-up and the per-batch draws of the training stages."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from tessera.training.data import DrawnBatches, draw_seed, pick_caption
from tessera.training.ema import EMA


def test_a_short_runs_ema_holds_no_trace_of_the_initial_weights() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.fill_(100.0)  # the "random initialisation", far from the trained value
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(30):
        ema.update(model, step)
    # without warm-up 0.999**30 = 97% of the initial weights would remain
    share = (ema.shadow["weight"] - 1.0) / 99.0
    assert share.abs().max() < 1e-8
    assert ema.updates == 30 and ema.decay_at(10**6) == 0.999


def test_ema_without_warmup_is_the_fixed_decay() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model, 0)
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 2), 0.9))


class _Echo(DrawnBatches):
    def make(self, batch, seed):
        rng = random.Random(seed)
        return {"seed": seed, "caption": pick_caption(batch["captions"][0], rng)}


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def __next__(self):
        self.n += 1
        return {"captions": [["one", "two", "three", "four"]]}

    def state_dict(self):
        return {"consumed": self.n}

    def load_state_dict(self, state):
        self.n = state["consumed"]


def test_draws_differ_across_ranks_and_batches_and_resume_exactly() -> None:
    ranks = [_Echo(_Counter(), seed=7, rank=r) for r in (0, 1)]
    seeds = [[next(s)["seed"] for _ in range(20)] for s in ranks]
    assert not set(seeds[0]) & set(seeds[1])  # no rank shares a batch's draws
    assert len(set(seeds[0])) == 20  # nor two micro-batches of one rank
    # every caption of an example is seen, not one chosen forever by a hash
    captions = {next(ranks[0])["caption"] for _ in range(40)}
    assert captions == {"one", "two", "three", "four"}
    saved = ranks[0].state_dict()
    ahead = [next(ranks[0])["seed"] for _ in range(5)]
    resumed = _Echo(_Counter(), seed=7, rank=0)
    resumed.load_state_dict(saved)
    assert [next(resumed)["seed"] for _ in range(5)] == ahead
    assert draw_seed(7, 0, 3) != draw_seed(8, 0, 3)


@pytest.mark.parametrize("stage", ["decoder", "prior", "upsampler"])
def test_diffusion_objectives_draw_from_the_batch_seed(stage) -> None:
    """Two batches with the same data but different seeds get different losses (noise
    levels, noise, drops); the same seed gives the same loss."""
    from tessera.config.presets import preset
    from tessera.training.stages import get_stage

    st = get_stage(stage)
    cfg = preset(stage, "tiny")
    torch.manual_seed(0)
    model = st.build_model(cfg)
    objective = st.objective(cfg)
    g = torch.Generator().manual_seed(0)
    if stage == "upsampler":
        data = {"images": torch.rand(4, 3, cfg.image_size, cfg.image_size, generator=g)}
    else:
        data = {
            "text": torch.randint(3, cfg.vocab_size, (4, cfg.text_length), generator=g),
            "z_i": torch.nn.functional.normalize(torch.randn(4, cfg.clip_dim, generator=g), dim=-1),
            "z_t": torch.nn.functional.normalize(torch.randn(4, cfg.clip_dim, generator=g), dim=-1),
        }
        if stage == "decoder":
            size = cfg.image_size
            data = {
                "images": torch.rand(4, 3, size, size, generator=g),
                "text": data["text"],
                "clip_emb": data["z_i"],
            }
    with torch.no_grad():
        loss = [float(objective(model, {**data, "seed": s}, 0)[0]) for s in (1, 1, 2)]
    assert loss[0] == loss[1] != loss[2]
