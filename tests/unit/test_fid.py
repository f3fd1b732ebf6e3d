"""Fréchet distance, streaming statistics and Inception Score (reliability.md section 3.3)."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from helpers.references import missing_reference
from tessera.errors import DataError
from tessera.evaluation.fid import (
    FeatureStats,
    Stats,
    frechet_distance,
    inception_score,
    load_stats,
)


def _spd(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return np.cov(x, rowvar=False)


@pytest.fixture(scope="module")
def reference_fid():
    """pytorch-fid's ``calculate_frechet_distance`` without importing torchvision: the module
    imports it (and its Inception) at import time, so both are stubbed for the import."""
    spec = importlib.util.find_spec("pytorch_fid")
    if spec is None or spec.submodule_search_locations is None:
        missing_reference("pytorch-fid")
    saved = {
        k: sys.modules.get(k)
        for k in (
            "torchvision",
            "torchvision.transforms",
            "pytorch_fid",
            "pytorch_fid.inception",
            "pytorch_fid.fid_score",
        )
    }
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    pkg = types.ModuleType("pytorch_fid")
    pkg.__path__ = list(spec.submodule_search_locations)
    inc = types.ModuleType("pytorch_fid.inception")
    inc.InceptionV3 = types.SimpleNamespace(BLOCK_INDEX_BY_DIM={2048: 3})  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": tv.transforms,
            "pytorch_fid": pkg,
            "pytorch_fid.inception": inc,
        }
    )
    sys.modules.pop("pytorch_fid.fid_score", None)
    try:
        import pytorch_fid.fid_score as ref

        yield ref.calculate_frechet_distance
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_diagonal_case_is_analytic() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2, 64), rng.uniform(0.1, 2, 64)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-8)


def test_identity_symmetry_and_mean_shift() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 32, 200), _spd(rng, 32, 200)
    mu = rng.standard_normal(32)
    assert abs(frechet_distance(mu, s1, mu, s1)) < 1e-8
    d12 = frechet_distance(mu, s1, mu + 1, s2)
    assert d12 == pytest.approx(frechet_distance(mu + 1, s2, mu, s1), rel=1e-9)
    shift = rng.standard_normal(32)
    assert frechet_distance(mu, s1, mu + shift, s1) == pytest.approx(shift @ shift, rel=1e-7)


def _eig_fid(mu1, s1, mu2, s2) -> float:  # an independent route: eigenvalues of s1 @ s2
    eig = np.linalg.eigvals(s1 @ s2)
    return float(
        (mu1 - mu2) @ (mu1 - mu2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sqrt(eig.astype(complex)).real.sum()
    )


@pytest.mark.parametrize("n", [400, 20])  # full rank, and rank-deficient (n < d)
def test_agrees_with_eigenvalue_route(n: int) -> None:
    rng = np.random.default_rng(2)
    s1, s2 = _spd(rng, 48, n), _spd(rng, 48, n)
    mu1, mu2 = rng.standard_normal(48), rng.standard_normal(48)
    for method in ("eigh", "sqrtm"):
        ours = frechet_distance(mu1, s1, mu2, s2, method=method)
        assert ours == pytest.approx(_eig_fid(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
@pytest.mark.parametrize("case", ["full", "near_singular", "rank_deficient"])
def test_parity_with_pytorch_fid(reference_fid, case: str, method: str) -> None:
    rng = np.random.default_rng(3)
    d = 64
    if case == "full":
        s1, s2 = _spd(rng, d, 500), _spd(rng, d, 500)
    elif case == "near_singular":  # eigenvalues spanning 12 orders of magnitude
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s1 = (q * np.logspace(-12, 0, d)) @ q.T
        s2 = _spd(rng, d, 500)
    else:
        s1, s2 = _spd(rng, d, 30), _spd(rng, d, 30)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(mu1, s1, mu2, s2, method=method)
    theirs = reference_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_streaming_stats_equal_numpy_in_any_batching() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((257, 16)) * 3 + 5
    for sizes in ([257], [1, 100, 156], [64] * 4 + [1]):
        acc = FeatureStats(16)
        perm = rng.permutation(257)
        start = 0
        for s in sizes:
            acc.update(x[perm[start : start + s]])
            start += s
        st = acc.stats()
        assert st.n == 257
        np.testing.assert_allclose(st.mu, x.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)


def test_stats_round_trip_and_bad_files(tmp_path) -> None:
    rng = np.random.default_rng(5)
    st = Stats(rng.standard_normal(8), _spd(rng, 8, 50), 50)
    path = st.save(tmp_path / "real.npz")
    back = load_stats(path)
    assert back.n == 50 and back.sha256() == st.sha256()
    with pytest.raises(DataError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(DataError, match="do not match"):
        load_stats(tmp_path / "bad.npz")
    # an object array can only be read by unpickling: refused, never executed
    marker = tmp_path / "ran"
    bomb = np.array([_Bomb(marker)], dtype=object)
    np.savez(tmp_path / "obj.npz", mu=bomb, sigma=np.zeros((1, 1)))
    with pytest.raises(DataError, match="not a statistics file"):
        load_stats(tmp_path / "obj.npz")
    assert not marker.exists()
    (tmp_path / "junk.npz").write_bytes(b"PK-not-really-a-zip")
    with pytest.raises(DataError):
        load_stats(tmp_path / "junk.npz")


class _Bomb:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_too_few_images_is_an_error() -> None:
    acc = FeatureStats(4)
    acc.update(np.ones((1, 4)))
    with pytest.raises(DataError, match="at least 2"):
        acc.stats()


def _reference_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """torch-fidelity's formula (log-softmax of logits, chunk boundaries i*N//splits)."""
    lp = logits - logits.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    p = np.exp(lp)
    n = len(p)
    scores = []
    for i in range(splits):
        pc, lc = (
            p[i * n // splits : (i + 1) * n // splits],
            lp[i * n // splits : (i + 1) * n // splits],
        )
        q = pc.mean(0, keepdims=True)
        scores.append(np.exp((pc * (lc - np.log(q))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_formula_and_bounds() -> None:
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((103, 20)) * 4
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    mean, std = inception_score(probs, splits=10)
    ref_mean, ref_std = _reference_is(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-9) and std == pytest.approx(ref_std, rel=1e-7)
    # one-hot on distinct classes, uniform marginal: IS = number of classes per split
    onehot = np.eye(20)[np.arange(200) % 20]
    assert inception_score(onehot, splits=10)[0] == pytest.approx(20.0)
    # identical predictions carry no information: IS = 1
    same = np.tile(probs[:1], (50, 1))
    assert inception_score(same, splits=5)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        inception_score(probs * 2, splits=10)
