"""Known answers and an independent numpy reference for phasescope.spectra's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasescope.spectra import (
    METRIC_INFO,
    METRICS,
    CovarianceAccumulator,
    alpha_req,
    auto_fit_range,
    explained_variance,
    numerical_rank,
    participation_ratio,
    rankme,
    rankme_raw,
    spectrum_metrics,
    stable_rank,
)


# ----------------------------------------------------------------- independent reference (numpy)
def ref_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Centred full SVD → λ = s²/(N − 1)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return s**2 / (x.shape[0] - 1)


def ref_rankme(v: np.ndarray, eps: float = 1e-7) -> float:
    p = v / v.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def ref_alpha(lam: np.ndarray, lo: int = 11, hi: int = 100) -> tuple[float, float, float]:
    """Weighted LS of log λ on −log k, weights 1/k, written as a sqrt-weighted lstsq; R² as in
    Li et al.'s code: indices lo+1 .. (500 if len >= 512 else len − 10)."""
    k = np.arange(lo, hi) + 1.0
    a = np.stack([-np.log(k), np.ones_like(k)], axis=1)
    sw = np.sqrt(1.0 / k)
    (alpha, b), *_ = np.linalg.lstsq(a * sw[:, None], np.log(lam[lo:hi]) * sw, rcond=None)
    end = 500 if len(lam) >= 512 else len(lam) - 10
    kk = np.arange(lo + 1, end) + 1.0
    y = np.log(lam[lo + 1 : end])
    yhat = b - alpha * np.log(kk)
    r2 = 1 - ((y - yhat) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return float(alpha), float(r2), float(b)


def exact_data(lam: np.ndarray, n: int, rng: np.random.Generator, offset: float = 0.0) -> np.ndarray:
    """n × d data whose sample covariance (ddof=1) has exactly the eigenvalues `lam`."""
    d = len(lam)
    z = rng.standard_normal((n, d))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal columns, each orthogonal to 1
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sqrt((n - 1) * lam)) @ v.T + offset


def close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------- known answers
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_exact_power_law_recovers_alpha(alpha):
    rng = np.random.default_rng(1)
    lam = np.arange(1, 513, dtype=np.float64) ** -alpha
    x = exact_data(lam, 600, rng, offset=3.0)
    spec = CovarianceAccumulator(512).update(x).compute()
    fit = alpha_req(spec.eigenvalues)
    assert abs(fit.alpha - alpha) < 0.02 and fit.r2 > 0.99 and fit.reason is None
    assert abs(fit.alpha - alpha) < 1e-8  # the spectrum is exact, so the fit is too
    assert fit.fit_range == (11, 100) and fit.r2_range == (12, 500)
    assert np.allclose(fit.predict([12, 50]), lam[[11, 49]], rtol=1e-8)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_sampled_power_law_recovers_alpha(alpha):
    """Gaussian samples from covariance diag(k^-α) (finite-sample noise, not an exact spectrum)."""
    rng = np.random.default_rng(2)
    d, n = 256, 40000
    x = rng.standard_normal((n, d), dtype=np.float32) * np.arange(1, d + 1, dtype=np.float32) ** (-alpha / 2)
    fit = alpha_req(CovarianceAccumulator(d).update(x).compute().eigenvalues)
    assert abs(fit.alpha - alpha) < 0.02, fit
    assert fit.r2 > 0.99


@pytest.mark.parametrize("r", [8, 40, 100])
def test_isotropic_rank_r_rankme(r):
    rng = np.random.default_rng(3)
    d = 128
    basis, _ = np.linalg.qr(rng.standard_normal((d, r)))
    x = rng.standard_normal((20000, r)) @ basis.T
    spec = CovarianceAccumulator(d).update(x).compute()
    assert abs(rankme(spec.eigenvalues) - r) < 0.01 * r
    assert abs(spectrum_metrics(spec)["rankme"] - r) < 0.01 * r
    assert numerical_rank(spec.eigenvalues) == r


def test_constant_matrix():
    x = np.full((50, 20), 3.5)
    spec = CovarianceAccumulator(20, raw_singular_values=True).update(x).compute()
    # Garrido et al.: the raw matrix has one nonzero singular value -> RankMe 1 (up to ε terms).
    assert abs(rankme_raw(spec.singular_values) - 1) < 1e-4
    assert abs(spectrum_metrics(spec)["rankme_raw"] - 1) < 1e-4
    # Covariance variant: every eigenvalue is 0, the entropy is undefined.
    assert np.all(np.asarray(spec.eigenvalues) == 0)
    assert math.isnan(rankme(spec.eigenvalues))
    # Rank-one centred data gives 1 as well.
    t = np.linspace(-1, 1, 50)[:, None]
    one = CovarianceAccumulator(20).update(t * np.arange(1, 21)).compute()
    assert abs(rankme(one.eigenvalues) - 1) < 1e-4


def test_simple_metric_values():
    lam = np.array([4.0, 2.0, 1.0, 1.0])
    assert participation_ratio(lam) == pytest.approx(64 / 22)
    assert stable_rank(lam) == pytest.approx(2.0)
    assert explained_variance(lam, 1) == pytest.approx(0.5)
    assert explained_variance(lam, 3) == pytest.approx(7 / 8)
    assert numerical_rank(np.array([1.0, 1e-3, 1e-20, 0.0])) == 2
    assert rankme(np.ones(10), eps=0) == pytest.approx(10)


# ----------------------------------------------------------------- α edge cases
def test_alpha_too_few_eigenvalues_is_nan_with_reason():
    fit = alpha_req(np.arange(1, 51, dtype=float) ** -1.0)
    assert math.isnan(fit.alpha) and math.isnan(fit.r2) and math.isnan(fit.intercept)
    assert "only 50 eigenvalues" in fit.reason and "auto" in fit.reason


def test_alpha_non_positive_is_nan_with_reason():
    lam = np.arange(1, 201, dtype=float) ** -1.0
    lam[60:] = 0.0
    fit = alpha_req(lam)
    assert math.isnan(fit.alpha) and "non-positive eigenvalue at index 60" in fit.reason
    assert math.isnan(alpha_req(np.full(200, np.nan)).alpha)


def test_alpha_bad_range_raises():
    with pytest.raises(ValueError, match="fit_range"):
        alpha_req(np.ones(200), fit_range=(50, 10))
    with pytest.raises(ValueError, match="fit_range"):
        alpha_req(np.ones(200), fit_range="sometimes")


@pytest.mark.parametrize(("d", "expected"), [(64, (6, 58)), (32, (3, 29)), (512, (11, 100))])
def test_auto_fit_range_rule_and_small_model_alpha(d, expected):
    lam = np.arange(1, d + 1, dtype=float) ** -1.3
    assert auto_fit_range(lam) == expected
    fit = alpha_req(lam, "auto")
    assert fit.fit_range == expected and abs(fit.alpha - 1.3) < 1e-8 and fit.r2 > 0.999
    m = spectrum_metrics(lam, fit_range="auto")
    assert abs(m["alpha"] - 1.3) < 1e-8
    if d < 110:  # the default range cannot fit d = 64, auto can
        assert math.isnan(spectrum_metrics(lam)["alpha"])


# ----------------------------------------------------------------- reference implementation
def _check_against_reference(x: np.ndarray, raw: bool = True) -> None:
    n, d = x.shape
    # float64 products: this checks the formulas to 1e-8 (float32 products are bounded in
    # test_spectra_accumulator.py's test_float32_products_within_issue_bounds).
    spec = CovarianceAccumulator(d, raw_singular_values=raw, precision="float64").update(x).compute()
    ref = ref_eigenvalues(x)
    k = min(n, d)
    got = np.asarray(spec.eigenvalues, dtype=np.float64)
    top = ref[0]
    assert got.shape == (d,)
    assert np.all(np.abs(got[:k] - ref[:k]) <= 1e-8 * ref[:k] + 1e-12 * top)
    assert np.all(got[k:] == 0)
    assert close(rankme(got[:k]), ref_rankme(ref), 1e-8)
    fit = alpha_req(got[:k])
    if (ref > 1e-12 * top).sum() >= 110:
        a, r2, b = ref_alpha(ref)
        assert close(fit.alpha, a, 1e-8) and close(fit.r2, r2, 1e-8) and close(fit.intercept, b, 1e-8)
    elif k >= 100:  # rank-deficient data: the default range would fit round-off noise
        assert math.isnan(fit.alpha) and "numerical rank" in fit.reason
    if raw:
        # Raw singular values come from eig(XᵀX) (the state is sums), which resolves σ only down
        # to ~√ε·σ₁ ≈ 1.5e-8·σ₁; on rank-deficient float32 data (GPT-2's embedding layer) that
        # moves RankMe_raw by ~2e-8 relative, hence 1e-7 here (1e-8 for everything else).
        s_raw = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
        assert close(rankme_raw(np.asarray(spec.singular_values)[:k]), ref_rankme(s_raw), 1e-7)
        assert close(spectrum_metrics(spec)["rankme_raw"], ref_rankme(s_raw), 1e-7)
    m = spectrum_metrics(spec)
    assert list(m) == list(METRICS) and all(type(v) is float for v in m.values())
    assert close(m["rankme"], ref_rankme(ref), 1e-8)
    assert close(m["participation_ratio"], ref.sum() ** 2 / (ref**2).sum(), 1e-8)
    assert close(m["stable_rank"], ref.sum() / ref[0], 1e-8)


@pytest.mark.parametrize("shape", [(1500, 300), (700, 256), (90, 200)])
def test_reference_random(shape):
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((shape[1], shape[1])) / np.sqrt(shape[1])
    x = (rng.standard_normal(shape) @ mix + rng.standard_normal(shape[1])).astype(np.float32)
    _check_against_reference(x)


@pytest.fixture(scope="module")
def gpt2_hidden_states() -> list[np.ndarray]:
    """Real captured activations: every hidden state of a small GPT-2 built from a config."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    text = (
        "In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep."
    ) * 8
    ids = torch.tensor([[b % 1000 for b in text.encode()][: 64 * 12]]).reshape(12, 64)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return [h.reshape(-1, 128).numpy() for h in out.hidden_states]


def test_reference_gpt2_activations(gpt2_hidden_states):
    for h in gpt2_hidden_states:  # 768 tokens × 128 dims, covariance route
        _check_against_reference(h)
    _check_against_reference(gpt2_hidden_states[-1][:100])  # 100 tokens < 128 dims: Gram route


def test_metric_info_covers_metrics():
    assert set(METRIC_INFO) == set(METRICS)
    for name in ("rankme", "rankme_raw", "alpha", "alpha_r2", "participation_ratio", "stable_rank"):
        assert name in METRICS
    assert math.isnan(spectrum_metrics(np.ones(20))["rankme_raw"])


def test_store_nan_padding_is_ignored_but_interior_nan_is_not():
    lam = np.arange(1, 201, dtype=float) ** -1.1
    padded = np.concatenate([lam, np.full(56, np.nan)])
    assert alpha_req(padded).alpha == pytest.approx(1.1, rel=1e-10)
    assert spectrum_metrics(padded) == spectrum_metrics(lam)
    assert rankme(padded) == rankme(lam)
    holed = lam.copy()
    holed[5] = np.nan
    assert math.isnan(rankme(holed)) and math.isnan(alpha_req(holed).alpha)
    assert all(math.isnan(v) for v in spectrum_metrics(holed).values())


def test_functions_accept_a_spectrum_and_tensors_with_grad():
    torch = pytest.importorskip("torch")
    x = torch.randn(300, 32, requires_grad=True)
    spec = CovarianceAccumulator(32).update(x * 2).compute()
    assert not spec.eigenvalues.requires_grad
    assert rankme(spec) == rankme(spec.eigenvalues)
    # a Spectrum brings its own round-off floor (float32 products here): the stored metrics' α and rank
    m = spectrum_metrics(spec, fit_range="auto")
    assert alpha_req(spec, "auto").alpha == m["alpha"] and numerical_rank(spec) == m["numerical_rank"]
    assert alpha_req(spec.eigenvalues, "auto", rtol=spec.floor_rtol()).alpha == m["alpha"]
