"""``tessera prior train --kind diffusion|ar`` and ``tessera prior info`` end to end on the tiny
presets (in-process): falling loss, eval records, release checkpoints that reload (the AR
prior's PCA inside its weights), bit-identical resume, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tessera import checkpoint
from tessera.cli.main import main
from tessera.config.presets import preset

STEPS = 16


def _prior(root, kind: str, run: str, steps: int) -> int:
    # the no-dropout tokenizer (BPE dropout draws from the unseedable RNG of ``tokenizers``);
    # the cosine's length is pinned so a shorter first run follows the same learning rates
    argv = ["prior", "train", "--kind", kind, "--preset", "tiny", "--run-dir", str(root / run)]
    argv += ["--clip", str(root / "clip" / "final"), "--tokenizer", str(root / "tok-exact")]
    argv += ["--steps", str(steps), "--checkpoint-every", str(STEPS // 2), "--no-progress"]
    return main([*argv, f"train.sample_every={STEPS // 2}", f"train.lr_decay_steps={STEPS}"])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny tokenizer and CLIP; each prior trained straight through (16 updates) and, in a
    second run directory, stopped half-way and re-run to the end (resuming)."""
    root = tmp_path_factory.mktemp("prior")
    tok = root / "tok"
    argv = ["tokenizer", "train", "shapes", "--n", "200", "--out", str(tok), "--preset", "tiny"]
    assert main(argv) == 0
    argv = ["clip", "train", "--preset", "tiny", "--run-dir", str(root / "clip")]
    assert main([*argv, "--tokenizer", str(tok), "--no-progress"]) == 0
    exact = root / "tok-exact"
    shutil.copytree(tok, exact)
    cfg = json.loads((exact / "config.json").read_text())
    (exact / "config.json").write_text(json.dumps({**cfg, "dropout": 0.0}))
    for kind in ("diffusion", "ar"):
        assert _prior(root, kind, kind, STEPS) == 0
        assert _prior(root, kind, f"{kind}-cut", STEPS // 2) == 0
        assert _prior(root, kind, f"{kind}-cut", STEPS) == 0
    return root


def _metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_loss_falls_and_eval_is_recorded(root, kind) -> None:
    run = root / kind
    records = _metrics(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # diffusion: the x0 MSE (~1 at the start in the sqrt(D)-scaled space); AR: the mean
    # cross-entropy, from about ln(32) = 3.47 (32 buckets) -- 16 tiny updates move it less
    assert last < (first * 0.9 if kind == "diffusion" else first - 0.03), losses
    if kind == "ar":
        k = records[0]["components"]
        assert all(r["components"] == k for r in records) and 1 <= k <= 16
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [STEPS // 2, STEPS]
    assert all(e["n"] == 256 and -1 <= e["cos_z_i"] <= 1 for e in evals)


@pytest.mark.parametrize(("run", "kind"), [("diffusion", "prior"), ("ar", "ar_prior")])
def test_release_checkpoint_reloads_and_samples(root, run, kind) -> None:
    from tessera.sampling.prior import sample_prior

    final = root / run / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / "config.json").read_text())["kind"] == kind
    ck = checkpoint.load_checkpoint(final, kind=kind)
    model = ck.obj.eval()
    assert model.config == preset(kind, "tiny")  # no flags retyped
    weights = load_file(str(final / "model.safetensors"))
    for name, p in model.state_dict().items():
        assert torch.equal(p, weights[name]), name
    if kind == "ar_prior":
        assert model.fitted and int(weights["n_components"]) == model.components
    ids = ck.tokenizer.encode_batch(["a red circle", "a blue square"], add_eos=True).ids
    z_t = torch.nn.functional.normalize(torch.randn(2, model.config.clip_dim), dim=-1)
    z = sample_prior(model, ids, z_t, steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_resume_is_bit_identical(root, kind) -> None:
    a, b = _metrics(root / kind), _metrics(root / f"{kind}-cut")
    summary = json.loads((root / f"{kind}-cut" / "summary.json").read_text())
    assert summary["resumed_from"] == STEPS // 2 and summary["steps_run"] == STEPS // 2
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    for name in ("model.safetensors", "ema.safetensors"):
        ckpt = sorted((root / kind / "checkpoints").iterdir())[-1].name
        wa = load_file(str(root / kind / "checkpoints" / ckpt / name))
        wb = load_file(str(root / f"{kind}-cut" / "checkpoints" / ckpt / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


@pytest.mark.parametrize(("kind", "argv", "message"), [
    ("diffusion", ["model.clip_dim=32"], "prior.clip_dim 32 != the CLIP's embed_dim 16"),
    ("ar", ["model.clip_dim=32"], "ar_prior.clip_dim 32 != the CLIP's embed_dim 16"),
    ("ar", ["--clip", "{root}/nope"], "checkpoint not found"),
    ("diffusion", ["--preset", "nope"], "unknown prior preset 'nope'"),
])  # fmt: skip
def test_bad_input_is_a_one_line_error(root, capsys, kind, argv, message) -> None:
    base = ["prior", "train", "--kind", kind, "--run-dir", str(root / "bad"), "--steps", "1"]
    base += ["--clip", str(root / "clip" / "final"), "--tokenizer", str(root / "tok")]
    code = main([*base, *[a.format(root=root) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err
    assert message in err.splitlines()[-1], err


@pytest.mark.parametrize(("kind", "total"), [("diffusion", 1_326_753_792), ("ar", 1_017_118_784)])
def test_info_prints_json(capsys, kind, total) -> None:
    assert main(["prior", "info", "--preset", "unclip", "--kind", kind]) == 0
    info = json.loads(capsys.readouterr().out)
    parts = info["parameters"]
    assert parts["total"] == total == sum(v for k, v in parts.items() if k != "total")
    assert info["paper_parameters"] == 1_000_000_000
    assert info["relative_difference"] == round(total / 1e9 - 1, 4)
    assert main(["prior", "info", "--preset", "tiny"]) == 0
    assert "paper_parameters" not in json.loads(capsys.readouterr().out)
