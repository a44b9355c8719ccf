"""Weight spectra: ESD eigenvalues against numpy SVD, a known power-law tail, batching, a real model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasescope.spectra.weights import esd_power_law, weight_eigenvalues, weight_spectra


def pareto_quantiles(n: int, alpha: float, xmin: float = 1.0) -> np.ndarray:
    """n deterministic quantiles of the density ρ(λ) ∝ λ^(−α), λ ≥ xmin (an exact power law)."""
    u = (np.arange(n) + 0.5) / n
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def ref_mle(lam: np.ndarray, xmin: float) -> float:
    tail = lam[lam >= xmin]
    return 1 + len(tail) / np.sum(np.log(tail / xmin))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_power_law_tail_known_answer(alpha):
    lam = pareto_quantiles(1500, alpha)
    fit = esd_power_law(lam)
    assert abs(fit.alpha - alpha) < 0.05 and fit.reason is None
    assert fit.alpha == pytest.approx(ref_mle(lam, fit.xmin), rel=1e-12)
    # A Marchenko–Pastur bulk below the tail: the KS search must find the tail, not the bulk.
    rng = np.random.default_rng(0)
    bulk = np.linalg.eigvalsh(np.cov(rng.standard_normal((600, 2400)))) * 0.5
    mixed = np.concatenate([bulk[bulk < 0.9], pareto_quantiles(300, alpha, xmin=1.0)])
    fit = esd_power_law(mixed)
    assert abs(fit.alpha - alpha) < 0.25 and fit.xmin >= 0.9


def test_weight_eigenvalues_match_svd_and_batch():
    rng = np.random.default_rng(1)
    ws = rng.standard_normal((3, 70, 30))
    ev = weight_eigenvalues(ws)
    assert ev.shape == (3, 30)
    for i in range(3):
        s = np.linalg.svd(ws[i], compute_uv=False)
        np.testing.assert_allclose(ev[i], s**2, rtol=1e-10)
        np.testing.assert_allclose(weight_eigenvalues(ws[i].T), s**2, rtol=1e-10)  # wide: WWᵀ
    with pytest.raises(ValueError, match="2 dimensions"):
        weight_eigenvalues(np.ones(5))


def test_weight_spectra_known_singular_values_and_stable_rank():
    rng = np.random.default_rng(2)
    m, n, alpha = 700, 400, 3.0
    lam = np.sort(pareto_quantiles(n, alpha))[::-1]
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    heavy = (u * np.sqrt(lam)) @ v.T
    weights = {"heavy": heavy, "heavy_t": heavy.T.copy(), "rand": rng.standard_normal((m, n)), "bias": np.ones(n)}
    out = weight_spectra(weights)
    assert list(out) == ["heavy", "heavy_t", "rand"]  # 1-D parameters skipped, order kept
    h = out["heavy"]
    np.testing.assert_allclose(h.eigenvalues, lam, rtol=1e-9)
    assert abs(h.alpha - alpha) < 0.1
    fro2, two2 = np.linalg.norm(heavy) ** 2, np.linalg.norm(heavy, 2) ** 2
    assert h.stable_rank == pytest.approx(fro2 / two2, rel=1e-9)
    assert h.spectral_norm == pytest.approx(math.sqrt(two2), rel=1e-9)
    assert out["heavy_t"].alpha == pytest.approx(h.alpha, rel=1e-9)
    assert out["rand"].alpha > 5  # a random (Marchenko–Pastur) matrix has no heavy tail


def test_too_few_eigenvalues_is_nan_with_reason():
    fit = esd_power_law(np.array([3.0, 2.0, 1.0]))
    assert math.isnan(fit.alpha) and "only 3" in fit.reason


def test_torch_module_batched():
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    out = weight_spectra(model, select=lambda name: ".h." in name)
    assert len(out) == 8 and all(".h." in k for k in out)  # 4 matrices × 2 blocks
    w = model.transformer.h[1].mlp.c_fc.weight.detach().double().numpy()
    got = out["transformer.h.1.mlp.c_fc.weight"]
    assert isinstance(got.eigenvalues, torch.Tensor) and got.shape == (64, 256)
    ref = np.linalg.svd(w, compute_uv=False) ** 2
    # float32 weights: a float32 Gram product (issue 18), eigenvalues within ~1e-7·λ₁ absolute
    np.testing.assert_allclose(got.eigenvalues.numpy(), ref, rtol=1e-6, atol=1e-7 * ref[0])
    assert np.abs(got.eigenvalues.numpy() - ref).max() > 1e-12 * ref[0]  # the product really was float32
    exact = weight_spectra({"w": torch.from_numpy(w)})["w"]  # float64 weights: float64 products
    np.testing.assert_allclose(exact.eigenvalues.numpy(), ref, rtol=1e-9)
