"""CLIP converters (tessera.convert.clip) against transformers and open_clip (test-only
references): small random models built and saved by the reference libraries themselves,
converted, and compared on the same inputs; the converted tokenizer against the references'
tokenizers on a corpus. Tolerance 1e-5 (fp32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from helpers import clip_ref
from tessera.checkpoint import load_checkpoint
from tessera.convert.clip import (
    convert_hf_clip,
    convert_open_clip,
    read_hf_tokenizer,
    read_open_clip_tokenizer,
    save_clip,
)
from tessera.errors import CheckpointError, UnsafeCheckpointError

TOL = 1e-5


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _pixels(clip, images: torch.Tensor) -> torch.Tensor:
    """What the references' image processors hand the network: normalised pixels."""
    mean = torch.tensor(clip.config.image_mean)[:, None, None]
    std = torch.tensor(clip.config.image_std)[:, None, None]
    return (images - mean) / std


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    clip_ref.transformers_clip()
    return clip_ref.write_hf_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_clip(tok_dir, tmp_path_factory):
    tf = clip_ref.transformers_clip()
    torch.manual_seed(0)
    cfg = tf.CLIPConfig(
        text_config=clip_ref.small_text_config(),
        vision_config=clip_ref.small_vision_config(),
        projection_dim=32,
    )
    model = tf.CLIPModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hfclip")
    model.save_pretrained(str(folder))
    hf_tok = tf.CLIPTokenizer.from_pretrained(str(tok_dir))
    hf_tok.save_pretrained(str(folder))
    return model, hf_tok, folder


def test_tokenizer_ids_equal_transformers(hf_clip, tok_dir):
    _, hf_tok, _ = hf_clip
    tok = read_hf_tokenizer(tok_dir)
    ref = hf_tok(
        clip_ref.CORPUS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    ours = tok.encode_batch(clip_ref.CORPUS, add_eos=True)
    assert torch.equal(ours.ids, ref.input_ids)
    assert torch.equal(ours.mask, ref.attention_mask.bool())
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (49406, 49407, 49407)


def test_tokenizer_ids_equal_open_clip():
    _, oc_tok = clip_ref.open_clip_modules()
    tok = read_open_clip_tokenizer(clip_ref.open_clip_bpe())
    ref = oc_tok.SimpleTokenizer()(clip_ref.CORPUS)
    assert torch.equal(tok.encode_batch(clip_ref.CORPUS, add_eos=True).ids, ref)


def test_transformers_clipmodel_parity(hf_clip):
    model, _, folder = hf_clip
    clip, tok = convert_hf_clip(folder)
    ids = tok.encode_batch(clip_ref.CORPUS, add_eos=True).ids
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.text_model(input_ids=ids)
        text_embeds = model.text_projection(out.pooler_output)
        vis = model.vision_model(pixel_values=_pixels(clip, images))
        image_embeds = model.visual_projection(vis.pooler_output)
        hidden, features = clip.text_hidden_states(ids)
        # the embeddings Karlo's prior and decoder read, and the normalised ones CLIP scores
        assert _max(features, text_embeds) < TOL
        assert _max(hidden, out.last_hidden_state) < TOL
        assert _max(clip.text_features(ids), text_embeds) < TOL
        assert _max(clip.image_features(images), image_embeds) < TOL
        cos = torch.nn.functional.normalize
        assert _max(clip.encode_text(ids), cos(text_embeds, dim=-1)) < TOL
        assert _max(clip.encode_image(images), cos(image_embeds, dim=-1)) < TOL
        assert _max(clip.logit_scale, model.logit_scale) == 0.0


def test_saved_checkpoint_is_a_tessera_clip(hf_clip, tmp_path):
    _, _, folder = hf_clip
    clip, tok = convert_hf_clip(folder)
    save_clip(tmp_path / "clip", clip, tok, source="test")
    loaded = load_checkpoint(tmp_path / "clip", kind="clip")
    ids = loaded.tokenizer.encode_batch(["a red cube"], add_eos=True).ids
    assert torch.equal(ids, tok.encode_batch(["a red cube"], add_eos=True).ids)
    with torch.no_grad():
        assert _max(loaded.obj.encode_text(ids), clip.encode_text(ids)) < TOL


def test_text_and_vision_folders_legacy_pooling(tok_dir, tmp_path):
    """Karlo's layout: a CLIPTextModelWithProjection whose config keeps the legacy
    eos_token_id 2 (transformers pools at the argmax id) + a separate image tower."""
    tf = clip_ref.transformers_clip()
    torch.manual_seed(2)
    text = tf.CLIPTextModelWithProjection(
        tf.CLIPTextConfig(**clip_ref.small_text_config(legacy_eos=True))
    ).eval()
    vision = tf.CLIPVisionModelWithProjection(
        tf.CLIPVisionConfig(**clip_ref.small_vision_config())
    ).eval()
    text.save_pretrained(str(tmp_path / "text_encoder"))
    vision.save_pretrained(str(tmp_path / "image_encoder"))
    clip, tok = convert_hf_clip(
        tmp_path / "text_encoder", vision=tmp_path / "image_encoder", tokenizer=tok_dir
    )
    ids = tok.encode_batch(clip_ref.CORPUS, add_eos=True).ids
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = text(input_ids=ids)
        hidden, features = clip.text_hidden_states(ids)
        assert _max(features, ref.text_embeds) < TOL
        assert _max(hidden, ref.last_hidden_state) < TOL
        ref_img = vision(pixel_values=_pixels(clip, images)).image_embeds
        assert _max(clip.image_features(images), ref_img) < TOL
    with pytest.raises(CheckpointError, match="only a text encoder"):
        convert_hf_clip(tmp_path / "text_encoder", tokenizer=tok_dir)


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quick_gelu", "gelu"])
def test_open_clip_parity(quick_gelu, tmp_path):
    oc_model, oc_tok = clip_ref.open_clip_modules()
    torch.manual_seed(4)
    model = oc_model.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 128, "layers": 2},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2},
        quick_gelu=quick_gelu,
    ).eval()
    file = tmp_path / "open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    config = {"embed_dim": 32, "quick_gelu": quick_gelu, "text_cfg": {"heads": 2}}
    clip, _ = convert_open_clip(file, tokenizer=clip_ref.open_clip_bpe(), config=config)
    ids = oc_tok.SimpleTokenizer()(clip_ref.CORPUS)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _max(clip.text_features(ids), model.encode_text(ids)) < TOL
        assert _max(clip.image_features(images), model.encode_image(_pixels(clip, images))) < TOL
    with pytest.raises(CheckpointError, match="activation"):
        convert_open_clip(file, tokenizer=clip_ref.open_clip_bpe())


def test_unknown_and_missing_keys_are_one_line(hf_clip, tmp_path):
    model, _, folder = hf_clip
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = tmp_path / "bad"
    bad.mkdir()
    for file in folder.iterdir():
        if file.suffix != ".safetensors":
            (bad / file.name).write_bytes(file.read_bytes())
    extra = dict(sd, **{"text_model.surprise.weight": torch.zeros(2)})
    extra.pop("vision_model.post_layernorm.bias")
    save_file(extra, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        convert_hf_clip(bad)
    msg = str(err.value)
    assert "\n" not in msg and "text_model.surprise.weight" in msg
    (bad / "model.safetensors").unlink()
    del extra["text_model.surprise.weight"]
    save_file(extra, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing key.*vision_model.post_layernorm.bias"):
        convert_hf_clip(bad)


def test_pickled_weights_are_refused(hf_clip, tmp_path):
    _, _, folder = hf_clip
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save({"weights": object()}, bad / "pytorch_model.bin")  # not tensors only
    with pytest.raises(UnsafeCheckpointError, match="pickled"):
        convert_hf_clip(bad, tokenizer=folder)


def test_cli_convert_clip(hf_clip, tmp_path):
    from tessera.cli.main import main

    _, _, folder = hf_clip
    assert main(["convert", "clip", str(folder), "--out", str(tmp_path / "clip")]) == 0
    assert load_checkpoint(tmp_path / "clip", kind="clip").tokenizer is not None
    oc = tmp_path / "missing.safetensors"
    oc.write_bytes(b"")
    assert main(["convert", "clip", str(oc), "--out", str(tmp_path / "x")]) == 2  # one line
