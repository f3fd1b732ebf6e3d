"""Every random draw uses a generator on the device it draws into (issue 18): a CPU generator
cannot fill a CUDA tensor, so a CUDA model would fail at its first sampled token (and a GPU
training run at its first sample step). Checked without a GPU: a model on the ``meta`` device
must get its generator made for ``meta``, and no sampling/training/app code creates a
device-less ``torch.Generator()`` outside a short allow-list of CPU pixel work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import tessera
from tessera.config.dalle import DalleConfig
from tessera.models.dalle import DALLE
from tessera.nn.rng import generator_for, module_device
from tessera.pipelines import dalle as dalle_pipeline
from tessera.text.tokenizer import EncodedBatch

SRC = Path(tessera.__file__).parent
# packages whose draws land on a model's device
CHECKED = ("pipelines", "sampling", "training", "apps", "cli", "evaluation")
# CPU-only draws on purpose: data loading and pixel work on the loader's CPU images
ALLOWED = {"training/stages/upsampler.py"}  # random crops of the CPU batch (PIXEL_SEED_OFFSET)

TINY = DalleConfig(
    text_vocab=300, text_len=8, image_vocab=64, grid_size=4, d_model=16, n_layers=2, n_heads=2
)


class _Tok:
    vocab_size = 300

    def encode_batch(self, texts: list[str]) -> EncodedBatch:
        ids = torch.full((len(texts), 3), 5, dtype=torch.long)
        return EncodedBatch(ids, torch.full((len(texts),), 3, dtype=torch.long))


class _Stop(Exception):
    pass


def test_generator_for_on_cpu_draws_what_a_default_generator_draws() -> None:
    a = torch.rand(5, generator=generator_for("cpu", 7))
    b = torch.rand(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert generator_for(torch.device("cpu")).device.type == "cpu"


def test_module_device() -> None:
    with torch.device("meta"):
        m = torch.nn.Linear(2, 2)
    assert module_device(m).type == "meta"
    assert module_device(torch.nn.Identity()).type == "cpu"


def test_dalle_pipeline_makes_its_generator_on_the_model_device(monkeypatch) -> None:
    """A model whose parameters live on a non-CPU device (meta stands in for CUDA) gets a
    generator made for that device, before any draw."""
    with torch.device("meta"):
        model = DALLE(TINY)
    seen: list[tuple[torch.device, int | None]] = []

    def record(device, seed=None):
        seen.append((torch.device(device), seed))
        raise _Stop

    monkeypatch.setattr(dalle_pipeline, "generator_for", record)
    pipe = dalle_pipeline.DallePipeline(model=model, vae=None, tokenizer=_Tok())
    with pytest.raises(_Stop):
        pipe.generate(["a red circle"], n=2, seed=3)
    assert seen == [(torch.device("meta"), 3)]


def test_dalle_pipeline_cpu_seeds_are_unchanged() -> None:
    """On the CPU the pipeline draws from the same stream as ``torch.Generator().manual_seed``
    (what it used before the fix): the sampled tokens are identical."""
    from tessera.sampling.sample import generate_image_tokens

    torch.manual_seed(0)
    model = DALLE(TINY).eval()
    text = dalle_pipeline.prepare_text(
        torch.full((2, 3), 5, dtype=torch.long), torch.full((2,), 3), TINY
    )
    old = generate_image_tokens(model, text, generator=torch.Generator().manual_seed(11))
    new = generate_image_tokens(model, text, generator=generator_for(module_device(model), 11))
    assert torch.equal(old, new)


def _devless_generators(path: Path) -> list[int]:
    """Lines that call ``torch.Generator(...)`` with no device (positional or keyword)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name != "Generator":
            continue
        if not node.args and not any(k.arg == "device" for k in node.keywords):
            out.append(node.lineno)
    return out


def test_no_device_less_generators_where_draws_meet_a_model() -> None:
    bad = []
    for pkg in CHECKED:
        for path in sorted((SRC / pkg).rglob("*.py")):
            rel = path.relative_to(SRC).as_posix()
            if rel in ALLOWED:
                continue
            bad += [f"{rel}:{line}" for line in _devless_generators(path)]
    assert not bad, f"torch.Generator() without a device (use tessera.nn.rng.generator_for): {bad}"
    for rel in ALLOWED:  # the allow-list stays honest
        assert _devless_generators(SRC / rel), f"{rel} no longer needs its allow-list entry"
