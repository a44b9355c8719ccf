"""CovarianceAccumulator: streaming, merging, persistence, numerical stability, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from phasescope.errors import PhasescopeError
from phasescope.spectra import CovarianceAccumulator


def two_pass(x: np.ndarray) -> np.ndarray:
    """Two-pass float64 reference: centre first, then the covariance, then its eigenvalues."""
    x = np.asarray(x, dtype=np.float64)
    c = x - x.mean(axis=0)
    return np.linalg.eigvalsh(c.T @ c / (len(x) - 1))[::-1]


def max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize(
    ("dtype", "precision", "tol"),
    [(np.float32, "float64", 1e-6), (np.float64, "auto", 1e-6), (np.float32, "auto", 1e-5)],
)
def test_massive_offset_matches_two_pass(dtype, precision, tol):
    """Mean 1e4 × the spread (LLM 'massive activations'): shifted sums keep 1e-6 relative with float64
    products, 1e-5 with float32 products (float32 data's default: sums of ~550 float32 products)."""
    rng = np.random.default_rng(0)
    d, n = 64, 5000
    spread = np.linspace(1.0, 3.0, d)
    x = (rng.standard_normal((n, d)) * spread + 1e4 * 3.0 * rng.choice([-1, 1], d)).astype(dtype)
    acc = CovarianceAccumulator(d, precision=precision)
    for chunk in np.array_split(x, 9):
        acc.update(chunk)
    spec = acc.compute()
    ref = two_pass(x)
    assert max_rel(spec.eigenvalues, ref) < tol
    # The textbook one-pass formula Σxxᵀ − nμμᵀ fails this test (so the test can fail):
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=0)
    naive = np.linalg.eigvalsh((x64.T @ x64 - n * np.outer(mu, mu)) / (n - 1))[::-1]
    assert max_rel(naive, ref) > 1e-6
    assert np.allclose(np.asarray(spec.mean), x64.mean(axis=0), rtol=1e-12)


def test_streaming_and_chunking_equal_one_pass():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 40)) @ rng.standard_normal((40, 40)) + 5
    one = CovarianceAccumulator(40).update(x).compute()
    tiny_chunks = CovarianceAccumulator(40, chunk_elements=7 * 40)
    for i in range(0, 1000, 33):
        tiny_chunks.update(x[i : i + 33])
    two = tiny_chunks.compute()
    assert two.n == one.n == 1000
    np.testing.assert_allclose(two.eigenvalues, one.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(two.eigenvalues, two_pass(x), rtol=1e-10)


@pytest.mark.parametrize("sizes", [(300, 200, 500), (10, 20, 5), (30, 60, 100), (0, 50, 0)])
def test_merge_equals_one_pass(sizes):
    """Shards in any mode (Gram rows below dim, covariance above) merge to the one-pass result."""
    rng = np.random.default_rng(2)
    d = 64
    parts = [rng.standard_normal((s, d)) * 2 + 100 * i for i, s in enumerate(sizes)]
    x = np.concatenate(parts)
    accs = [CovarianceAccumulator(d, raw_singular_values=True).update(p) for p in parts]
    merged = accs[0]
    for a in accs[1:]:
        merged.merge(a)
    spec = merged.compute()
    full = CovarianceAccumulator(d, raw_singular_values=True).update(x).compute()
    assert spec.n == full.n == len(x) and spec.route == full.route
    k = min(len(x), d)
    ref = two_pass(x)[:k]
    np.testing.assert_allclose(spec.eigenvalues[:k], ref, rtol=1e-9, atol=1e-12 * ref[0])
    np.testing.assert_allclose(spec.singular_values, full.singular_values, rtol=1e-9, atol=1e-9)


def test_gram_route_used_below_dim_and_matches():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 100)) + 50.0
    acc = CovarianceAccumulator(100, raw_singular_values=True).update(x)
    spec = acc.compute()
    assert spec.route == "gram" and spec.n_components == 30
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2 / 29
    np.testing.assert_allclose(spec.eigenvalues[:30], s, rtol=1e-9, atol=1e-12 * s[0])
    assert np.all(spec.eigenvalues[30:] == 0)
    np.testing.assert_allclose(spec.singular_values[:30], np.linalg.svd(x, compute_uv=False), rtol=1e-9)
    acc.update(rng.standard_normal((80, 100)))
    assert acc.compute().route == "covariance"


def test_state_dict_round_trip():
    rng = np.random.default_rng(4)
    for n in (20, 300):  # Gram mode and covariance mode
        x = rng.standard_normal((n, 50))
        acc = CovarianceAccumulator(50).update(x[: n // 2])
        clone = CovarianceAccumulator(50).load_state_dict(acc.state_dict())
        acc.update(x[n // 2 :])
        clone.update(x[n // 2 :])
        np.testing.assert_allclose(clone.compute().eigenvalues, acc.compute().eigenvalues, rtol=1e-12)
    with pytest.raises(ValueError, match="dim"):
        CovarianceAccumulator(10).load_state_dict(acc.state_dict())


def test_reset():
    acc = CovarianceAccumulator(8).update(np.ones((20, 8)))
    acc.reset()
    assert acc.n == 0 and np.all(np.isnan(acc.compute().eigenvalues))


def test_nonfinite_rows_counted_and_excluded():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 16))
    bad = x.copy()
    bad[[3, 50, 199], [0, 7, 15]] = [np.nan, np.inf, -np.inf]
    spec = CovarianceAccumulator(16).update(bad).compute()
    assert spec.n_nonfinite == 3 and spec.n == 197
    np.testing.assert_allclose(spec.eigenvalues, two_pass(np.delete(x, [3, 50, 199], axis=0)), rtol=1e-10)
    empty = CovarianceAccumulator(4).update(np.full((3, 4), np.nan)).compute()
    assert empty.n == 0 and empty.n_nonfinite == 3 and np.all(np.isnan(empty.eigenvalues))


def test_wrong_dims_raise_clear_value_error():
    acc = CovarianceAccumulator(16)
    with pytest.raises(ValueError, match=r"expected samples × 16.*got shape \(10, 15\)"):
        acc.update(np.zeros((10, 15)))
    with pytest.raises(PhasescopeError, match="got shape"):
        acc.update(np.zeros(16))
    with pytest.raises(ValueError, match="real"):
        acc.update(np.zeros((4, 16), dtype=np.complex64))
    with pytest.raises(ValueError, match="dim"):
        CovarianceAccumulator(0)
    with pytest.raises(ValueError, match="merge"):
        acc.merge(CovarianceAccumulator(8))


def test_batch_seq_dim_input_is_flattened():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 25, 12))
    spec = CovarianceAccumulator(12).update(x).compute()
    assert spec.n == 100
    np.testing.assert_allclose(spec.eigenvalues, two_pass(x.reshape(100, 12)), rtol=1e-10)


def test_float32_precision_mode_is_close_and_opt_in():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3000, 96)) * np.arange(1, 97) ** -0.5 + 1e3).astype(np.float32)
    ref = two_pass(x)
    fast = CovarianceAccumulator(96, precision="float32").update(x).compute()
    exact = CovarianceAccumulator(96, precision="float64").update(x).compute()
    assert np.max(np.abs(fast.eigenvalues - ref)) < 1e-6 * ref[0]
    assert max_rel(exact.eigenvalues, ref) < 1e-10
    state = CovarianceAccumulator(96, precision="float32").state_dict()
    assert state["precision"] == "float32"
    with pytest.raises(ValueError, match="precision"):
        CovarianceAccumulator(4, precision="float16")


def _issue18_data(n, d, offset, seed=0, drift=0.0):
    """float32 activations with a power-law spectrum (λ_k ∝ 1/k), a mean `offset` × the largest spread,
    and (``drift``) a mean that moves by `drift` spreads over the rows."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, d + 1) ** -0.5
    x = rng.standard_normal((n, d)) * scale + offset * rng.choice([-1.0, 1.0], d)
    x += drift * np.linspace(0, 1, n)[:, None] * rng.standard_normal(d)
    return x.astype(np.float32)


@pytest.mark.parametrize(("offset", "drift"), [(0.0, 0.0), (1e4, 0.0), (10.0, 3.0)])
def test_float32_products_within_issue_bounds(offset, drift):
    """Issue 18's bounds for float32 data (products in float32, the default): RankMe, α, R² and the top
    100 eigenvalues within 1e-5 relative of a float64 two-pass reference on the same float32 data, with
    a mean 1e4 × the spread, and with a drifting mean (blocks re-centred on their own mean)."""
    from phasescope.spectra import spectrum_metrics

    n, d = 6144, 384
    x = _issue18_data(n, d, offset, drift=drift)
    acc = CovarianceAccumulator(d, chunk_elements=1024 * d, precision="auto")
    for chunk in np.array_split(x, 11):
        acc.update(chunk)
    spec = acc.compute()
    assert (acc.n_recentred > 0) == (drift > 0)  # a drifting mean takes the re-centring path
    ref = two_pass(x)
    assert max_rel(spec.eigenvalues[:100], ref[:100]) < 1e-5
    got, want = spectrum_metrics(spec), spectrum_metrics(np.clip(ref, 0, None))
    for k in ("rankme", "alpha", "alpha_r2"):
        assert abs(got[k] - want[k]) <= 1e-5 * abs(want[k]), k
    # the products really were float32: float64 products agree ~1e3× more closely
    exact = CovarianceAccumulator(d, precision="float64").update(x).compute()
    assert max_rel(exact.eigenvalues[:100], ref[:100]) < 1e-9 < max_rel(spec.eigenvalues[:100], ref[:100])


@pytest.mark.parametrize("d", [16, 64])
def test_float32_products_keep_an_exact_zero_a_zero(d):
    """A LayerNorm output has an exact zero eigenvalue (its mean direction). Float32 products lift it to
    ~1e-10..1e-9·λ₁, above float64's floor d·ε; the spectrum carries the products' ε, so the numerical
    rank, α's fit range and every metric equal those of float64 products (issue 18's 'auto' default)."""
    torch = pytest.importorskip("torch")
    from phasescope.spectra import spectrum_metrics

    g = torch.Generator().manual_seed(d)
    ln = torch.nn.LayerNorm(d)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d, generator=g) * 2 + 0.1)
        ln.bias.copy_(torch.randn(d, generator=g))
        x = torch.randn(6400, d, generator=g) @ (torch.randn(d, d, generator=g) / d**0.5)
        x[:, 0] += 20 * torch.randn(6400, generator=g)  # an outlier direction, as in trained models
        y = ln(x)
    out = {}
    for precision in ("auto", "float64"):
        acc = CovarianceAccumulator(d, precision=precision)
        for b in y.split(400):
            acc.update(b)
        out[precision] = acc.compute()
    fast, exact = out["auto"], out["float64"]
    assert fast.products_eps == 2.0**-23 and exact.products_eps == np.finfo(np.float64).eps
    zero = float(fast.eigenvalues[-1] / fast.eigenvalues[0])
    assert d * np.finfo(np.float64).eps < zero < fast.floor_rtol()  # lifted above float64's floor, not float32's
    got, want = spectrum_metrics(fast, fit_range="auto"), spectrum_metrics(exact, fit_range="auto")
    assert got["numerical_rank"] == want["numerical_rank"] == d - 1
    for k in ("rankme", "alpha", "alpha_r2", "participation_ratio"):
        assert abs(got[k] - want[k]) <= 1e-5 * abs(want[k]), (k, got[k], want[k])
    # without the products' ε the zero would count, and α's range would move with it
    blind = spectrum_metrics(fast.eigenvalues, fit_range="auto")
    assert blind["numerical_rank"] == d and abs(blind["alpha"] - want["alpha"]) > 1e-3
    # the ε travels with the state: merge, state_dict, load_state_dict
    merged = CovarianceAccumulator(d, precision="float64").update(y[:100].double())
    merged.merge(CovarianceAccumulator(d).update(y[100:]))
    assert merged.compute().products_eps == 2.0**-23
    again = CovarianceAccumulator(d, precision="float64").load_state_dict(merged.state_dict())
    assert again.compute().products_eps == 2.0**-23


def test_float32_products_torch_equal_numpy():
    """A torch CPU tensor takes numpy's syrk on the same memory: the same numbers as a numpy array."""
    torch = pytest.importorskip("torch")
    x = _issue18_data(3000, 96, 50.0)
    a = CovarianceAccumulator(96, precision="auto").update(x).compute()
    b = CovarianceAccumulator(96, precision="auto").update(torch.from_numpy(x)).compute()
    np.testing.assert_allclose(np.asarray(a.eigenvalues), b.eigenvalues.numpy(), rtol=1e-12)


def test_spectrum_metrics_method_and_component_cap():
    from phasescope.spectra import rankme, spectrum_metrics

    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 64)) * np.arange(1, 65) ** -0.8
    spec = CovarianceAccumulator(64).update(x).compute()
    assert spec.metrics(fit_range="auto") == spectrum_metrics(spec, fit_range="auto")
    capped = spectrum_metrics(spec, max_components=20)
    assert capped["rankme"] == pytest.approx(rankme(spec.eigenvalues[:20]), rel=1e-12)
    assert rankme(spec.eigenvalues, max_components=20) == capped["rankme"]
    assert capped["rankme"] < spectrum_metrics(spec)["rankme"]


def test_state_is_not_aliased_after_merge_or_load():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    src = CovarianceAccumulator(8).update(x)
    before = np.array(src.compute().eigenvalues)
    state = src.state_dict()
    s2_before = state["s2"].copy()
    empty = CovarianceAccumulator(8).merge(src)  # adopts src's state
    empty.update(y)
    loaded = CovarianceAccumulator(8).load_state_dict(state)
    loaded.update(y)
    src.update(y)  # updating src must not touch the dict handed out earlier
    np.testing.assert_array_equal(state["s2"], s2_before)
    np.testing.assert_allclose(CovarianceAccumulator(8).update(x).compute().eigenvalues, before, rtol=1e-12)
    fresh = CovarianceAccumulator(8).update(x).update(y).compute().eigenvalues
    for acc in (empty, loaded, src):
        np.testing.assert_allclose(acc.compute().eigenvalues, fresh, rtol=1e-10)


def test_outlier_first_batch_pairwise_beats_plain_shift():
    """A first batch far from the rest (a 1e6·σ outlier row) makes a fixed shift K = first batch
    cancel catastrophically; block-centred pairwise merging stays at round-off of the data."""
    rng = np.random.default_rng(10)
    d, n = 16, 20000
    rest = rng.standard_normal((n, d)) * np.linspace(1, 2, d)
    outlier = rest[:1] + 1e6 * rng.standard_normal(d)
    x = np.concatenate([outlier, rest])
    acc = CovarianceAccumulator(d)
    acc.update(outlier)
    acc.update(rest)
    ref = two_pass(x)
    assert max_rel(acc.compute().eigenvalues, ref) < 1e-6
    # The fixed-shift formula with K = the first row (what a pure shifted-sum update does):
    c = x - x[0]
    s1 = c.sum(axis=0)
    shifted = np.linalg.eigvalsh((c.T @ c - np.outer(s1, s1) / len(x)) / (len(x) - 1))[::-1]
    assert max_rel(shifted, ref) > 1e-6


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_small_batches_are_gathered_safely(backend):
    """Small batches are gathered into blocks before their product: `n` counts them at once, and a
    caller that reuses (overwrites) its batch array after update() does not change the result."""
    x = _issue18_data(900, 48, 5.0, seed=3)
    acc = CovarianceAccumulator(48, chunk_elements=400 * 48)
    buf = np.empty((100, 48), dtype=np.float32)
    for i in range(9):
        buf[:] = x[i * 100 : (i + 1) * 100]
        acc.update(buf if backend == "numpy" else pytest.importorskip("torch").from_numpy(buf))
        assert acc.n == (i + 1) * 100
    buf[:] = np.nan  # the batch array is reused after the last update
    spec = acc.compute()
    assert spec.n == 900 and spec.n_nonfinite == 0
    assert max_rel(np.asarray(spec.eigenvalues), two_pass(x)) < 1e-5


@pytest.mark.parametrize("first", [np.float32, np.float64])
def test_gram_to_covariance_fold_keeps_the_products_precision(first):
    """Rows kept while fewer than d have arrived fold in with float32 products when they all came in
    float32 (recovered exactly from their float64 shifted copies), in float64 when any came in float64."""
    x = _issue18_data(700, 256, 30.0, seed=5)
    acc = CovarianceAccumulator(256, precision="auto")
    acc.update(x[:100].astype(first))
    acc.update(x[100:200])
    assert acc.route == "gram"
    acc.update(x[200:300])  # 300 ≥ d: the kept rows fold into the covariance state
    assert acc.route == "covariance"
    # white-box: a float32 fold went through the block path, whose shift is exact in float32
    assert (acc._exact_in == np.float32) == (first is np.float32)
    for i in range(300, 700, 100):
        acc.update(x[i : i + 100])
    spec = acc.compute()
    assert spec.n == 700
    ref = two_pass(x)
    assert max_rel(np.asarray(spec.eigenvalues)[:100], ref[:100]) < 1e-5
