"""The FSDP memory plan (``tessera.training.plan``) against hand-computed numbers, and the
``tessera dalle info --plan fsdp`` print-out for the paper's 12B transformer."""

from __future__ import annotations

import pytest

from tessera.cli.main import main
from tessera.training.plan import GIB, TransformerShape, activation_bytes, fsdp_memory

TOY = TransformerShape(
    params=1000, root_params=100, block_params=200, n_layers=4, d_model=8, positions=10, logits=50
)


def test_toy_plan_by_hand() -> None:
    p = fsdp_memory(TOY, gpus=4, gpu_mem_gib=1, precision="bf16", micro_batch=2,
                    activation_checkpointing=False)  # fmt: skip
    assert p.sharded_state == 1000 * 20 / 4 == 5000  # master 4 + grad 4 + Adam 8 + EMA 4
    assert p.gathered_params == 2 * (100 + 2 * 200) == 1000
    assert p.unsharded_grads == 4 * (100 + 200) == 1200
    # per block 16 d T x 2 bytes = 2560; 4 blocks; head 50 logits x (2 + 4 + 4) = 500
    assert p.activations == 2 * (4 * 2560 + 500) == 21480
    assert p.total == 5000 + 1000 + 1200 + 21480 and p.fits
    ac = fsdp_memory(TOY, gpus=4, gpu_mem_gib=1, precision="bf16", micro_batch=2)
    # block inputs 4 x 10 x 8 x 2 = 640, one block recomputed 2560, head 500
    assert ac.activations == 2 * (640 + 2560 + 500) == 7400
    no_ema = fsdp_memory(TOY, gpus=4, gpu_mem_gib=1, ema=False)
    assert no_ema.sharded_state == 1000 * 16 / 4


def test_fp32_and_limits() -> None:
    assert activation_bytes(TOY, compute_bytes=4, activation_checkpointing=False) == (
        4 * 16 * 8 * 10 * 4 + 50 * 8
    )
    p = fsdp_memory(TOY, gpus=1, gpu_mem_gib=1e-6, precision="fp32")
    assert p.gathered_params == 4 * 500 and not p.fits
    with pytest.raises(ValueError):
        fsdp_memory(TOY, gpus=0, gpu_mem_gib=1)
    with pytest.raises(ValueError):
        fsdp_memory(TOY, gpus=1, gpu_mem_gib=1, precision="int8")


def test_dalle_12b_plan_numbers(capsys) -> None:
    """12,195,290,880 parameters (d 3968, 64 layers; the root holds 99,811,072, a block
    188,991,872), 1279 input positions, fp16 compute, EMA on (the preset's recipe)."""
    assert main(["dalle", "info", "--preset", "dalle-12b", "--plan", "fsdp", "--gpus", "8",
                 "--gpu-mem", "80"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "parameters: 12195290880" in out
    state = 12_195_290_880 * 20 / 8 / GIB  # 28.39 GiB
    no_ac = (64 * 1279 * 16 * 3968 * 2 + (255 * 16640 + 1024 * 8192) * 10) / GIB  # 9.80
    ac = (64 * 1279 * 3968 * 2 + 16 * 1279 * 3968 * 2 + (255 * 16640 + 1024 * 8192) * 10) / GIB
    gathered = 2 * (99_811_072 + 2 * 188_991_872) / GIB  # 0.89
    grads = 4 * (99_811_072 + 188_991_872) / GIB  # 1.08
    assert f"{state:8.2f} GiB" in out and f"{no_ac:8.2f} GiB" in out and f"{ac:8.2f} GiB" in out
    assert f"{state + gathered + grads + ac:8.2f} GiB of 80: fits" in out  # 31.23
    assert main(["dalle", "info", "--preset", "dalle-12b", "--plan", "fsdp", "--gpus", "8",
                 "--gpu-mem", "16"]) == 0  # fmt: skip
    assert "does NOT fit" in capsys.readouterr().out  # 8-way sharding of fp32 state: 28 GiB
