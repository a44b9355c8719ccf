"""numpy, torch and jax give the same spectra and metrics, computed on the input's backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from phasescope.spectra import (
    CovarianceAccumulator,
    alpha_req,
    participation_ratio,
    rankme,
    spectrum_metrics,
    stable_rank,
)
from phasescope.spectra.weights import weight_eigenvalues

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")

BACKENDS = {
    "numpy": lambda a: a,
    "torch": lambda a: torch.from_numpy(np.ascontiguousarray(a)),
    "jax": jnp.asarray,
}


def _np(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


@pytest.mark.parametrize("n", [600, 90])  # covariance route and Gram route
def test_backends_agree(n):
    rng = np.random.default_rng(0)
    d = 128
    x = (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.7 + 3.0).astype(np.float32)
    results = {}
    for name, conv in BACKENDS.items():
        acc = CovarianceAccumulator(d, raw_singular_values=True)
        for part in np.array_split(x, 3):
            acc.update(conv(part))
        spec = acc.compute()
        kind = type(conv(x[:1]))
        assert isinstance(spec.eigenvalues, kind) and isinstance(spec.singular_values, kind)
        assert isinstance(spec.mean, kind)
        assert "float64" in str(spec.eigenvalues.dtype)
        ev = spec.eigenvalues
        results[name] = (
            _np(ev),
            spectrum_metrics(spec, fit_range="auto"),
            (rankme(ev), participation_ratio(ev), stable_rank(ev), alpha_req(ev, (5, 60)).alpha),
            _np(weight_eigenvalues(conv(x[:50, :40]))),
        )
    ref = results["numpy"]
    for name in ("torch", "jax"):
        got = results[name]
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-12 * ref[0][0])
        for key, val in ref[1].items():
            assert got[1][key] == pytest.approx(val, rel=1e-5, nan_ok=True), (name, key)
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-5)
        np.testing.assert_allclose(got[3], ref[3], rtol=1e-5, atol=1e-12 * ref[3][0])


def test_mixing_backends_in_one_accumulator_is_a_clear_error():
    acc = CovarianceAccumulator(4).update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="same backend"):
        acc.update(torch.ones(3, 4))


def test_merge_across_backends_converts():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 20))
    a = CovarianceAccumulator(20).update(x[:100])
    b = CovarianceAccumulator(20).update(torch.from_numpy(x[100:]))
    spec = a.merge(b).compute()
    ref = CovarianceAccumulator(20).update(x).compute()
    np.testing.assert_allclose(spec.eigenvalues, ref.eigenvalues, rtol=1e-10)


def test_torch_and_jax_dtypes_accepted():
    x = np.random.default_rng(2).standard_normal((200, 16))
    ref = CovarianceAccumulator(16).update(x.astype(np.float32)).compute().eigenvalues
    for arr in (torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(x).half(), jnp.asarray(x, dtype=jnp.bfloat16)):
        got = _np(CovarianceAccumulator(16).update(arr).compute().eigenvalues)
        np.testing.assert_allclose(got, ref, rtol=0.05)


def test_import_is_light():
    """Importing phasescope.spectra must not import torch or jax (CLI start-up stays fast)."""
    code = (
        "import sys, phasescope.spectra, phasescope.spectra.weights; "
        "print('torch' in sys.modules, 'jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device():  # pragma: no cover - no GPU on the CI machine
    x = torch.randn(500, 64, device="cuda")
    spec = CovarianceAccumulator(64, raw_singular_values=True).update(x).compute()
    assert spec.eigenvalues.is_cuda and spec.singular_values.is_cuda
    ref = CovarianceAccumulator(64).update(x.cpu()).compute().eigenvalues
    np.testing.assert_allclose(spec.eigenvalues.cpu().numpy(), ref.numpy(), rtol=1e-8)


def test_all_nonfinite_input_gives_nan_spectrum_on_the_data_backend():
    spec = CovarianceAccumulator(5, raw_singular_values=True).update(torch.full((4, 5), float("nan"))).compute()
    assert isinstance(spec.eigenvalues, torch.Tensor) and torch.isnan(spec.eigenvalues).all()
    assert spec.n == 0 and spec.n_nonfinite == 4
    assert all(np.isnan(v) for v in spectrum_metrics(spec).values())


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None)  # few shapes: eager jax compiles each op per shape
@given(
    seed=st.integers(0, 2**31),
    n=st.sampled_from([3, 30, 90]),
    d=st.sampled_from([8, 40]),
    offset=st.sampled_from([0.0, 10.0, 1e4]),
)
def test_backends_agree_property(seed, n, d, offset):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 3, d) + offset).astype(np.float32)
    specs = {name: CovarianceAccumulator(d).update(conv(x)).compute() for name, conv in BACKENDS.items()}
    ref = specs["numpy"].eigenvalues
    for name in ("torch", "jax"):
        ev = _np(specs[name].eigenvalues)
        np.testing.assert_allclose(ev, ref, rtol=1e-5, atol=1e-9 * ref[0])
        assert rankme(specs[name]) == pytest.approx(rankme(specs["numpy"]), rel=1e-5)
