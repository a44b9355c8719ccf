"""Property tests (hypothesis): merge exactness, rotation and scale invariance."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from phasescope.spectra import CovarianceAccumulator, alpha_req, rankme, spectrum_metrics

SETTINGS = settings(max_examples=40, deadline=None)


def data(seed: int, n: int, d: int, offset: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1) ** -rng.uniform(0.2, 1.5)
    return rng.standard_normal((n, d)) * scales + offset * rng.standard_normal(d)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(2, 160),
    d=st.integers(1, 48),
    offset=st.sampled_from([0.0, 1.0, 1e3]),
    cuts=st.lists(st.floats(0, 1), max_size=5),
    chunk=st.integers(1, 64),
)
def test_merge_of_any_split_equals_one_pass(seed, n, d, offset, cuts, chunk):
    x = data(seed, n, d, offset)
    idx = sorted({int(c * n) for c in cuts})
    parts = np.split(x, idx)
    one = CovarianceAccumulator(d, raw_singular_values=True).update(x).compute()
    accs = [CovarianceAccumulator(d, raw_singular_values=True, chunk_elements=chunk * d).update(p) for p in parts]
    merged = accs[0]
    for a in accs[1:]:
        merged.merge(a)
    spec = merged.compute()
    assert spec.n == one.n == n
    scale = float(one.eigenvalues[0]) + 1e-300
    np.testing.assert_allclose(spec.eigenvalues, one.eigenvalues, rtol=1e-8, atol=1e-10 * scale)
    np.testing.assert_allclose(spec.mean, one.mean, rtol=1e-10, atol=1e-10 * (1 + offset))
    sv_scale = float(one.singular_values[0])
    np.testing.assert_allclose(spec.singular_values, one.singular_values, rtol=1e-7, atol=1e-7 * sv_scale)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(20, 300), d=st.integers(2, 40))
def test_rotation_invariance(seed, n, d):
    x = data(seed, n, d, 5.0)
    q, _ = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((d, d)))
    a = CovarianceAccumulator(d).update(x).compute().eigenvalues
    b = CovarianceAccumulator(d).update(x @ q).compute().eigenvalues
    np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-10 * a[0])
    assert abs(rankme(b) - rankme(a)) <= 1e-7 * rankme(a)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3))
def test_scale_and_shift_invariance_of_rankme_and_alpha(seed, scale, shift):
    x = data(seed, 400, 160, 1.0)
    a = CovarianceAccumulator(160).update(x).compute()
    b = CovarianceAccumulator(160).update(x * scale + shift).compute()
    np.testing.assert_allclose(
        b.eigenvalues, a.eigenvalues * scale**2, rtol=1e-7, atol=1e-9 * scale**2 * a.eigenvalues[0]
    )
    ma, mb = spectrum_metrics(a), spectrum_metrics(b)
    for key in ("rankme", "alpha", "alpha_r2", "participation_ratio", "stable_rank"):
        assert abs(mb[key] - ma[key]) <= 1e-7 * abs(ma[key]), key
    fa, fb = alpha_req(a.eigenvalues), alpha_req(b.eigenvalues)
    assert abs((fb.intercept - fa.intercept) - 2 * np.log(scale)) < 1e-7  # log λ shifts by log s²
