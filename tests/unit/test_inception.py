"""tessera's FID Inception-v3 against torch-fidelity 0.4.0's (a test-only reference).

Both load the same random weights (a ``.pth`` written here: the real file is not downloaded)
and see the same uint8 images; the features must be bit-identical. torch-fidelity's package
``__init__`` imports torchvision (not installed), so its Inception module is imported under a
bare package module registered in ``sys.modules`` for the duration of the test module.
"""

import importlib
import importlib.util
import shutil
import sys
import types

import pytest
import torch

from helpers.eval_fixtures import random_inception_state_dict
from helpers.references import missing_reference
from tessera.errors import CheckpointError
from tessera.evaluation.inception import (
    WEIGHTS_ENV,
    convert_inception,
    load_inception,
    tf1_resize_bilinear,
    weights_sha256,
)


@pytest.fixture(scope="module")
def tfid():
    """torch_fidelity's ``feature_extractor_inceptionv3`` and ``interpolate_compat_tensorflow``
    modules, imported without running the package ``__init__``; sys.modules restored after."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        missing_reference("torch-fidelity")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torch_fidelity"}
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
    try:
        yield types.SimpleNamespace(
            inception=importlib.import_module("torch_fidelity.feature_extractor_inceptionv3"),
            interp=importlib.import_module("torch_fidelity.interpolate_compat_tensorflow"),
        )
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "torch_fidelity"]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(random_inception_state_dict(0), path)
    return path


@pytest.fixture(scope="module")
def ours(weights):
    return load_inception(weights)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _reference(tfid, weights, dtype: str = "float32"):
    return tfid.inception.FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=str(weights),
        feature_extractor_internal_dtype=dtype,
    )


def _fields(f) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return f.pool, f.logits_unbiased, f.logits


def _assert_same(feats, ref) -> None:
    for name, a, b in zip(("pool", "logits_unbiased", "logits"), _fields(feats), ref):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name}: max abs diff {(a - b).abs().max().item():.3g}"


def test_state_dict_keys_match_reference(tfid, weights, ours):
    ref = _reference(tfid, weights)
    ref_sd = ref.state_dict()
    ref_keys = {k for k in ref_sd if not k.endswith("num_batches_tracked")}
    assert set(ours.state_dict()) == ref_keys
    assert all(ours.state_dict()[k].shape == ref_sd[k].shape for k in ref_keys)
    assert "fc.weight" in ref_keys and not any(k.startswith("AuxLogits") for k in ref_keys)


def test_loads_reference_state_dict_with_num_batches_tracked(tfid, weights, tmp_path):
    ref_sd = _reference(tfid, weights).state_dict()
    assert any(k.endswith("num_batches_tracked") for k in ref_sd)
    torch.save(ref_sd, tmp_path / "with_nbt.pth")
    model = load_inception(tmp_path / "with_nbt.pth")
    assert torch.equal(
        model.Mixed_7c.branch_pool.bn.running_var, ref_sd["Mixed_7c.branch_pool.bn.running_var"]
    )


def test_features_bit_identical_to_torch_fidelity(tfid, weights, ours):
    ref = _reference(tfid, weights)
    for images in (_images(2, 64, 1), _images(1, 299, 2)):
        with torch.no_grad():
            feats, expected = ours(images), ref(images)
        assert feats.pool.abs().mean() > 1e-3 and feats.pool.isfinite().all()
        _assert_same(feats, expected)


def test_float64_bit_identical_to_torch_fidelity(tfid, weights):
    # torch-fidelity 0.4.0's text_to_dtype maps "float64" to float32, so its float64 mode is
    # set up by hand here: weights and internal dtype float64, as that option intends.
    ref = _reference(tfid, weights).double()
    ref.feature_extractor_internal_dtype = torch.float64
    images = _images(1, 37, 3)
    with torch.no_grad():
        feats = load_inception(weights, dtype=torch.float64)(images)
        expected = ref(images)
    _assert_same(feats, expected)


@pytest.mark.parametrize(("h", "w", "out"), [(64, 64, 299), (300, 300, 299), (17, 23, 299)])
def test_resize_matches_torch_fidelity(tfid, h, w, out):
    x = torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(h)).float()
    expected = tfid.interp.interpolate_bilinear_2d_like_tensorflow1x(
        x, size=(out, out), align_corners=False
    )
    assert torch.equal(tf1_resize_bilinear(x, out), expected)
    x64 = x.double() / 7
    expected64 = tfid.interp.interpolate_bilinear_2d_like_tensorflow1x(
        x64, size=(out, 41), align_corners=False
    )
    assert torch.equal(tf1_resize_bilinear(x64, (out, 41)), expected64)


def test_resize_definition_small():
    # 2 -> 4: source coordinates 0, 0.5, 1, 1.5 -> the last clamps to the upper neighbour
    x = torch.tensor([[[[0.0, 8.0]]]])
    assert tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 4.0, 8.0, 8.0]


def test_batch_size_independent(ours):
    images = _images(4, 48, 4)
    with torch.no_grad():
        whole = ours(images)
        parts = [ours(images[:2]), ours(images[2:])]
    for name, a, *halves in zip(
        ("pool", "logits_unbiased", "logits"), _fields(whole), *map(_fields, parts)
    ):
        b = torch.cat(halves)
        tol = 1e-5 * b.abs().max().item()
        assert (a - b).abs().max().item() <= tol, name


def test_bf16_autocast_returns_float32(ours):
    images = _images(1, 32, 5)
    with torch.no_grad():
        ref = ours(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = ours(images)
    assert all(t.dtype == torch.float32 for t in _fields(feats))
    cos = torch.nn.functional.cosine_similarity(feats.pool, ref.pool).item()
    assert cos > 0.98


def test_hash_suffix_checked(weights, tmp_path):
    sha = weights_sha256(weights)
    good = tmp_path / f"pt_inception-2015-12-05-{sha[:8]}.pth"
    shutil.copy(weights, good)
    assert load_inception(good).weights_sha256 == sha
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    shutil.copy(weights, bad)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_inception(bad)


def test_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(CheckpointError, match=WEIGHTS_ENV) as e:
        load_inception()
    assert "\n" not in str(e.value) and "--features clip:DIR" in str(e.value)
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(CheckpointError, match=f"not found at {missing}.*--inception PATH"):
        load_inception()


def test_env_var_used(weights, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert load_inception().weights_sha256 == weights_sha256(weights)


def test_wrong_keys_and_shapes_rejected(tmp_path):
    sd = random_inception_state_dict(1)
    del sd["Mixed_6b.branch7x7_2.conv.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing key.*Mixed_6b.branch7x7_2.conv.weight"):
        load_inception(tmp_path / "missing.pth")
    sd = random_inception_state_dict(1)
    sd["fc.weight"] = torch.zeros(1000, 2048)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(sd, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError, match="'fc.weight'.*unexpected.*AuxLogits"):
        load_inception(tmp_path / "shapes.pth")


def test_safetensors_round_trip(weights, ours, tmp_path):
    from safetensors import safe_open

    dst = convert_inception(weights, tmp_path / "inception.safetensors")
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata()["source_sha256"] == weights_sha256(weights)
    converted = load_inception(dst)
    assert converted.weights_sha256 == weights_sha256(dst)
    images = _images(1, 40, 6)
    with torch.no_grad():
        for a, b in zip(_fields(converted(images)), _fields(ours(images))):
            assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="suffix"):
        convert_inception(weights, tmp_path / "inception-6726825d.safetensors")


def test_rejects_non_uint8(ours):
    with pytest.raises(ValueError, match="uint8"):
        ours(torch.zeros(1, 3, 8, 8))
