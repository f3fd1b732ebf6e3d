"""Weight compatibility with OpenAI's ``dall-e`` package (a test-only dependency).

Their Encoder/Decoder are built at a small width with their own random initialisation,
converted, loaded into tessera's DiscreteVAE with the inferred config, and run on the same
input. The paper-size preset must have exactly their parameter count.
"""

import argparse
import shlex

import pytest
import torch
import torch.nn.functional as F

from helpers.references import missing_reference
from tessera.config.vae import VAEConfig
from tessera.errors import CheckpointError, UnsafeCheckpointError
from tessera.vae.convert import (
    config_from_openai,
    convert_openai_state_dicts,
    load_openai,
    pkl_conversion_command,
    read_openai_weights,
)
from tessera.vae.model import DiscreteVAE
from tessera.vae.pixels import map_pixels

try:
    import dall_e.decoder as dall_e_decoder
    import dall_e.encoder as dall_e_encoder
    import dall_e.utils as dall_e_utils
except ImportError:
    missing_reference("dall-e", module_level=True)

TOL = 1e-5


def _openai_pair(n_blk: int, seed: int = 0, n_init: int = 32):
    torch.manual_seed(seed)
    enc = dall_e_encoder.Encoder(
        n_hid=64, n_blk_per_group=n_blk, vocab_size=512, requires_grad=False
    )
    dec = dall_e_decoder.Decoder(
        n_init=n_init, n_hid=64, n_blk_per_group=n_blk, vocab_size=512, requires_grad=False
    )
    return enc.eval(), dec.eval()


@pytest.fixture(scope="module", params=[1, 2], ids=["1blk", "2blk"])
def pair(request):
    enc, dec = _openai_pair(request.param)
    cfg = config_from_openai(enc.state_dict(), dec.state_dict(), image_size=32)
    model = DiscreteVAE(cfg).eval()
    model.load_state_dict(convert_openai_state_dicts(enc.state_dict(), dec.state_dict()))
    return enc, dec, model, request.param


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------- parity


def test_inferred_config(pair):
    _, _, model, n_blk = pair
    cfg = model.config
    assert (cfg.n_hid, cfg.n_blk_per_group, cfg.group_count) == (64, n_blk, 4)
    assert (cfg.vocab_size, cfg.n_init, cfg.input_channels) == (512, 32, 3)
    assert cfg.image_size == 32 and cfg.grid_size == 4


def test_encoder_logits_agree(pair):
    enc, _, model, _ = pair
    x = dall_e_utils.map_pixels(_images())
    with torch.no_grad():
        theirs, ours = enc(x), model.encoder(x)
    assert ours.shape == theirs.shape == (3, 512, 4, 4)
    assert float(theirs.abs().max()) > 0.1  # not a trivially-zero comparison
    assert _max_abs(ours, theirs) < TOL


def test_decoder_outputs_agree_on_one_hot_and_relaxed_codes(pair):
    _, dec, model, _ = pair
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, 512, (3, 4, 4), generator=g)
    one_hot = F.one_hot(tokens, 512).permute(0, 3, 1, 2).float()
    relaxed = torch.softmax(3 * torch.randn(3, 512, 4, 4, generator=g), dim=1)
    for z in (one_hot, relaxed):
        with torch.no_grad():
            theirs, ours = dec(z), model.decoder(z)
        assert ours.shape == theirs.shape == (3, 6, 32, 32)
        assert float(theirs.abs().max()) > 1e-3
        assert _max_abs(ours, theirs) < TOL


def test_encode_tokens_and_decoded_images_agree(pair):
    enc, dec, model, _ = pair
    images = _images()
    with torch.no_grad():
        their_tokens = enc(dall_e_utils.map_pixels(images)).argmax(1)
        z = F.one_hot(their_tokens, 512).permute(0, 3, 1, 2).float()
        their_images = dall_e_utils.unmap_pixels(torch.sigmoid(dec(z)[:, :3]))
    tokens = model.encode(images)
    assert torch.equal(tokens, their_tokens)
    assert len(torch.unique(tokens)) > 1
    assert _max_abs(model.decode(tokens), their_images) < TOL


def test_relaxed_forward_matches_their_pipeline(pair):
    enc, dec, model, _ = pair
    x = map_pixels(_images(2))
    torch.manual_seed(5)
    with torch.no_grad():
        logits, mu, ln_b = model(x, temperature=1.0)
    torch.manual_seed(5)
    with torch.no_grad():
        their_logits = enc(x)
        out = dec(F.gumbel_softmax(their_logits, tau=1.0, hard=False, dim=1))
    assert _max_abs(logits, their_logits) < TOL
    assert _max_abs(mu, out[:, :3]) < TOL and _max_abs(ln_b, out[:, 3:]) < TOL


# ------------------------------------------------------------------------ parameter count


def test_paper_preset_has_exactly_openais_parameter_count():
    meta = torch.device("meta")
    enc = dall_e_encoder.Encoder(device=meta)  # paper defaults: 256, 2 x 4, 8192
    dec = dall_e_decoder.Decoder(device=meta)  # ... and n_init 128
    with meta:
        ours = DiscreteVAE(VAEConfig())
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters())
    assert sum(p.numel() for p in ours.encoder.parameters()) == n_enc == 53_786_240
    assert sum(p.numel() for p in ours.decoder.parameters()) == n_dec == 43_829_766
    # ... and the same tensor names and shapes, so the converter is a pure renaming.
    state = {k: v.shape for k, v in ours.state_dict().items()}
    converted = convert_openai_state_dicts(enc.state_dict(), dec.state_dict(), config=VAEConfig())
    assert {k: v.shape for k, v in converted.items()} == state
    assert config_from_openai(enc.state_dict(), dec.state_dict()) == VAEConfig()


# ------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def small():
    enc, dec = _openai_pair(1)
    return dict(enc.state_dict()), dict(dec.state_dict())


def test_missing_key_is_named(small):
    enc, dec = small
    enc = dict(enc)
    del enc["blocks.group_2.block_1.id_path.b"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): 'encoder: blocks.group_2"):
        convert_openai_state_dicts(enc, dec)


def test_unexpected_keys_are_named(small):
    enc, dec = small
    extra = {**dec, "blocks.group_1.block_1.res_path.conv_9.w": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): 'decoder: .*conv_9.w'"):
        convert_openai_state_dicts(enc, extra)
    renamed = {k.replace(".w", ".weight"): v for k, v in enc.items()}
    with pytest.raises(CheckpointError, match="not named like the dall-e package"):
        convert_openai_state_dicts(renamed, dec, config=config_from_openai(enc, dec))


def test_shape_mismatch_is_named(small):
    enc, dec = small
    bad = {**enc, "blocks.group_3.block_1.res_path.conv_2.w": torch.zeros(64, 64, 5, 5)}
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv_2.w"):
        convert_openai_state_dicts(bad, dec)


def test_swapped_or_mismatched_halves_are_refused(small):
    enc, dec = small
    with pytest.raises(CheckpointError, match="swapped"):
        config_from_openai(dec, enc)
    _, other_dec = _openai_pair(2)
    with pytest.raises(CheckpointError, match="disagree"):
        config_from_openai(enc, other_dec.state_dict())
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        convert_openai_state_dicts({**enc, "version": 3}, dec)
    with pytest.raises(CheckpointError, match="missing key 'blocks.input.w'"):
        config_from_openai({"foo.w": torch.zeros(1)}, dec)


# ---------------------------------------------------------------------------- loading


def _check_loaded(model: DiscreteVAE, enc, dec) -> None:
    x = dall_e_utils.map_pixels(_images(2))
    with torch.no_grad():
        assert _max_abs(model.encoder(x), enc(x)) < TOL
    assert model.config.image_size == 256 and not model.training


def test_load_openai_from_safetensors_and_weights_only_state_dicts(tmp_path):
    from safetensors.torch import save_file

    enc, dec = _openai_pair(1)
    save_file(enc.state_dict(), str(tmp_path / "encoder.safetensors"))
    save_file(dec.state_dict(), str(tmp_path / "decoder.safetensors"))
    torch.save(enc.state_dict(), tmp_path / "encoder.pt")
    torch.save({"state_dict": dec.state_dict()}, tmp_path / "decoder.pt")
    for suffix in ("safetensors", "pt"):
        model = load_openai(tmp_path / f"encoder.{suffix}", tmp_path / f"decoder.{suffix}")
        _check_loaded(model, enc, dec)


class _Boom:
    """Unpickling this runs code: it must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"blocks.input.w": _Boom(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        read_openai_weights(tmp_path / "evil.pt")
    assert not marker.exists()


def test_pickled_module_gets_the_conversion_command_and_it_works(tmp_path):
    enc, dec = _openai_pair(1)
    torch.save(enc, tmp_path / "encoder.pkl")  # how OpenAI released them: whole modules
    torch.save(dec, tmp_path / "decoder.pkl")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_openai(tmp_path / "encoder.pkl", tmp_path / "decoder.pkl")
    msg = str(e.value)
    command = pkl_conversion_command(tmp_path / "encoder.pkl")
    assert command in msg and "\n" not in msg and "environment you trust" in msg
    # The user's one-time step, in their trusted environment (here: this test's own files),
    # parsed as a shell would parse the printed command line.
    for name in ("encoder", "decoder"):
        argv = shlex.split(pkl_conversion_command(tmp_path / f"{name}.pkl"))
        assert argv[:2] == ["python", "-c"] and len(argv) == 3
        exec(argv[2], {})
    model = load_openai(tmp_path / "encoder.safetensors", tmp_path / "decoder.safetensors")
    _check_loaded(model, enc, dec)


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_openai_weights(tmp_path / "missing.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_openai_weights(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        read_openai_weights(tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_openai_weights(tmp_path / "list.pt")


def test_convert_cli_writes_a_tessera_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    from tessera import checkpoint
    from tessera.cli import vae_convert

    enc, dec = _openai_pair(1)
    save_file(enc.state_dict(), str(tmp_path / "e.safetensors"))
    save_file(dec.state_dict(), str(tmp_path / "d.safetensors"))
    parser = argparse.ArgumentParser(prog="tessera vae")
    vae_convert.register(parser.add_subparsers())
    argv = ["convert-openai", str(tmp_path / "e.safetensors"), str(tmp_path / "d.safetensors")]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "ckpt"), "--image-size", "64"])
    assert args.func(args) == 0
    assert "n_hid=64" in capsys.readouterr().out
    model = checkpoint.load(tmp_path / "ckpt", kind="vae")
    assert model.config.image_size == 64
    x = dall_e_utils.map_pixels(_images(2))
    with torch.no_grad():
        assert _max_abs(model.encoder(x), enc(x)) < TOL
    with pytest.raises(CheckpointError, match="--overwrite"):
        args.func(args)
