"""The VQGAN image tokenizer: parity with diffusers' VQModel and with taming-transformers /
ruDALL-E's GumbelVQ on small random configs, layouts, safety and the training pass."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers.references import missing_reference
from tessera import checkpoint
from tessera.config.presets import preset
from tessera.config.vqgan import VQGANConfig
from tessera.convert.vqgan import config_from_taming, load_vqgan, taming_state_dict
from tessera.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from tessera.vae.vqgan import VQGAN

TOL = 1e-5


def _diffusers():
    if importlib.util.find_spec("diffusers") is None:
        missing_reference("diffusers")
    from diffusers import VQModel

    return VQModel


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (GroupNorm affines and biases too, not only the init's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("attention", [False, True])
def test_diffusers_vqmodel_parity(tmp_path, attention):
    VQModel = _diffusers()
    torch.manual_seed(0)
    if attention:  # attention at the 8 px level of both halves
        down = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
        up = ("AttnUpDecoderBlock2D", "UpDecoderBlock2D")
        widths = (16, 32)
    else:
        down, up, widths = ("DownEncoderBlock2D",) * 3, ("UpDecoderBlock2D",) * 3, (16, 32, 32)
    ref = VQModel(
        down_block_types=down,
        up_block_types=up,
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=8,
        num_vq_embeddings=32,
        vq_embed_dim=4,
        norm_num_groups=8,
        sample_size=16,
    )
    _perturbed(ref, 1).save_pretrained(tmp_path / "vq")
    model = load_vqgan(tmp_path / "vq")
    cfg = model.config
    assert cfg.quantizer == "nearest" and cfg.vocab_size == 32 and cfg.image_size == 16
    assert cfg.attn_resolutions == ((8,) if attention else ())
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = ref.encode(2 * x - 1).latents
        ids = ref.quantize(h)[2][2].view(3, cfg.grid_size, cfg.grid_size)
        assert (model.pre_quant(x) - h).abs().max() < TOL
        assert torch.equal(model.encode(x), ids)  # encode (ids) parity
        shape = (3, cfg.grid_size, cfg.grid_size, cfg.embed_dim)
        q = ref.quantize.get_codebook_entry(ids.flatten(), shape)
        raw = ref.decode(q, force_not_quantize=True).sample
        assert (model.decode_codes(model.quantize.lookup(ids)) - raw).abs().max() < TOL
        assert (model.decode(ids) - (raw.clamp(-1, 1) + 1) / 2).abs().max() < TOL
    # and through a tessera checkpoint (kind "vqgan")
    checkpoint.save(tmp_path / "ck", config=cfg, model=model)
    again = checkpoint.load(tmp_path / "ck", kind="vqgan")
    assert torch.equal(again.encode(x), ids)


def _taming_gumbel(seed: int = 0):
    """ruDALL-E's GumbelVQ on taming's Encoder/Decoder at a small random config."""
    from helpers.rudalle_ref import vae_module

    mod = vae_module()
    torch.manual_seed(seed)
    ddconfig = dict(
        double_z=False,
        z_channels=32,
        resolution=16,
        in_channels=3,
        out_ch=3,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
    )
    return _perturbed(mod.GumbelVQ(ddconfig, n_embed=64, embed_dim=32), seed + 1)


def test_taming_gumbel_parity(tmp_path):
    ref = _taming_gumbel()
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd["loss.discriminator.main.0.weight"] = torch.zeros(1)  # training-only: dropped
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "vqgan.safetensors"))
    model = load_vqgan(tmp_path / "vqgan.safetensors", image_size=16)
    cfg = model.config
    assert (cfg.quantizer, cfg.attn_resolutions, cfg.ch_mult, cfg.grid_size) == (
        "gumbel",
        (8,),
        (1, 2),
        8,
    )
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, (_, _, ids) = ref.encode(2 * x - 1, disable_gumbel_softmax=True)
        assert torch.equal(model.encode(x), ids)
        z = ref.quantize.embed(ids).permute(0, 3, 1, 2)
        raw = ref.decode(z)
        assert (model.decode_codes(model.quantize.lookup(ids)) - raw).abs().max() < TOL
        assert (model.decode(ids) - (raw.clamp(-1, 1) + 1) / 2).abs().max() < TOL


def test_taming_nearest_layout_and_weights_only_ckpt(tmp_path):
    """taming's VQModel layout (VectorQuantizer ``quantize.embedding``) from a Lightning-style
    weights-only checkpoint ``{"state_dict": ...}``."""
    cfg = VQGANConfig(
        image_size=16,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        z_channels=4,
        embed_dim=4,
        vocab_size=16,
        norm_groups=4,
        quantizer="nearest",
    )
    src = _perturbed(VQGAN(cfg), 5)
    sd = {f"{k}": v for k, v in src.state_dict().items()}
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "global_step": torch.tensor(3)}, tmp_path / "last.ckpt")
    model = load_vqgan(tmp_path / "last.ckpt", image_size=16, norm_groups=4)
    assert model.config.replace(perceptual="shapes-clip") == cfg
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.encode(x), src.encode(x))


def test_unknown_keys_are_one_line(tmp_path):
    ref = _taming_gumbel()
    sd = taming_state_dict(ref.state_dict())
    sd["encoder.extra.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_vqgan(tmp_path / "bad.safetensors", image_size=16)
    assert "1 unknown key(s): 'encoder.extra.weight'" in str(e.value)
    assert "\n" not in str(e.value)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "cfg": VQGANConfig}, tmp_path / "x.ckpt")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_vqgan(tmp_path / "x.ckpt")
    assert "never unpickles" in str(e.value) and "\n" not in str(e.value)


def test_config_checks():
    with pytest.raises(ConfigError):
        VQGANConfig(quantizer="gumbel", z_channels=64, embed_dim=32)
    with pytest.raises(ConfigError):
        VQGANConfig(image_size=18, ch_mult=(1, 2, 4))
    assert preset("vqgan", "rudalle").grid_size == 32
    assert config_from_taming(
        VQGAN(preset("vqgan", "tiny")).state_dict(), image_size=32, norm_groups=8
    ).replace(perceptual="shapes-clip") == preset("vqgan", "tiny")


@pytest.mark.parametrize("quantizer", ["nearest", "gumbel"])
def test_training_pass_reaches_every_weight(quantizer):
    cfg = preset("vqgan", "tiny").replace(quantizer=quantizer)
    model = VQGAN(cfg)
    x = torch.rand(2, 3, 32, 32)
    rec, codebook, tokens = model(x, generator=torch.Generator().manual_seed(0))
    assert rec.shape == x.shape and tokens.shape == (2, 8, 8)
    ((rec - (2 * x - 1)).abs().mean() + codebook).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # the gumbel path reads no code table rows except through the straight-through one-hot
    assert no_grad == []
