"""WeightWatcher's per-layer ESD metrics, replicated from weightwatcher 0.7.7 so numbers compare exactly.

Martin & Mahoney 2021, "Implicit self-regularization in deep neural networks: evidence from random matrix
theory and implications for learning" (JMLR 22:165) and "Predicting trends in the quality of
state-of-the-art neural networks without access to training or testing data" (Nat. Commun. 12:4122);
"correlation traps" (randomised ESDs) as defined by the weightwatcher package. Pure functions of a weight
matrix's eigenvalues λ_i = σ_i² (any order) or of the weight arrays themselves; numpy on the host.

What weightwatcher 0.7.7 does by default (line numbers are those of ``weightwatcher/weightwatcher.py``,
``RMT_Util.py``, ``WW_powerlaw.py`` and ``constants.py`` in the 0.7.7 wheel):

* No normalisation of dense layers: ``analyze(glorot_fix=...)`` writes ``params[GLOROT_FIT]`` (l. 3564)
  while ``apply_normalize_Wmats`` reads ``params[GLOROT_FIX]``, so the Glorot fix never runs, and
  ``normalize`` (1/√N) was removed in 0.6.5. λ are the plain σ² of W (l. 2837), so ``log_norm`` is
  log10 ‖W‖_F² — not divided by N.
* Conv2D layers are scaled by √(1/2) before everything (``conv2d_norm=True``, l. 2889-2891), so their
  λ are σ²/2. WeightWatcher reads torch weights as float32 on CPU (``torch_T_to_np``, RMT_Util l. 126)
  and float16 on CUDA (RMT_Util l. 202); the SVD runs in float64 (scipy) on CPU.
* The power-law fit sees only λ > 1e-5, an absolute floor (``EVALS_THRESH``, constants l. 190; used at
  l. 4296); the norm metrics and the MP fit see every eigenvalue.
* Layers are skipped if M·rf < 8 or N > 50,000 (``layer_supported``, l. 1735-1743).

The quantities (WeightWatcher's column names in quotes):

* ``alpha`` — power-law exponent of the ESD tail, ρ(λ) ∝ λ^(−α) for λ ≥ λ_min, from WeightWatcher's own
  fit (``WWFit``, WW_powerlaw l. 33-94; not the ``powerlaw`` package, which is used only with
  ``pl_package="powerlaw"``): every λ_i but the largest is tried as λ_min (tails of ≥ 2 points),
  α̂_i = 1 + n_i / Σ_{j≥i} log(λ_j/λ_i), and the winner minimises the one-sided KS distance
  D_i = max_{k<n_i} |1 − (λ_{i+k}/λ_i)^(1−α̂_i) − k/n_i| (empirical CDF only just below each point); α̂ ≤ 1
  gives D = 1. Fewer than 20 points above the floor switch to ``fit_powerlaw_smallN`` (WW_powerlaw
  l. 96-170): the bias-corrected α = 1 + (n−1)/Σ log(λ/λ_min) over tails of ≥ 8 points; its own
  D − 0.868/√n objective is overridden by ``WWFit.__init__`` (l. 56-60), which takes argmin D. ``sigma`` =
  (α−1)/√n_tail; ``num_pl_spikes`` = #{λ ≥ λ_min} (l. 4331). ``fix_fingers`` is off by default.
* ``log_norm`` = log10 Σλ, ``log_spectral_norm`` = log10 λ_max, ``alpha_weighted`` = α·log10 λ_max,
  ``log_alpha_norm`` = log10 Σ λ^α, ``stable_rank`` = Σλ/λ_max (``apply_norm_metrics``, l. 4568-4609).
* MP fit (``mp_fit``, l. 4739-4834; ``fit_density_with_range`` and ``resid_mp``, RMT_Util l. 757-869):
  λ are rescaled to mean 1 (``W_scale`` = √(n_λ/Σλ)); σ is found by ``scipy.optimize.brute`` over
  0.05 s₀ … 2 s₀ in steps of 0.01 s₀, s₀ = √λ_max/(1 + 1/√Q), then ``fmin`` (Nelder–Mead), minimising the
  squared gap between the MP density and a linear-kernel KDE (bandwidth 0.1, 1000 points on
  [0, λ_max + 0.5], points with density ≤ 0.01 dropped; σ values whose MP support misses the KDE's peak
  cost 1000 per point). Q = N/M; for Q = 1 the quarter-circle law is fitted to the singular values.
  λ₊ = σ²(1 + 1/√Q)² (``bulk_max``, back in the input's units), ``mp_softrank`` = λ₊/λ_max, and
  ``num_spikes`` counts rescaled λ above λ₊ + √TW with TW = Q^(−1/2) λ₊^(2/3) M^(−2/3) (Tracy–Widom).
* Correlation traps (``apply_random_esd``, l. 2971-3021; ``random_eigenvalues``, l. 4079-4123): every
  weight matrix's elements are shuffled (5 replicas when there are < 100 eigenvalues, else 1), the pooled
  randomised ESD gets its own MP fit, and ``num_traps`` = its ``num_spikes``. Then one more shuffle gives
  ``rand_distance`` (Jensen–Shannon distance between the sorted ESD and the sorted randomised ESD, each
  normalised to sum 1 as a probability vector over ranks, RMT_Util l. 1078), ``ww_softrank`` =
  max λ_rand/λ_max and ``ww_maxdist`` = λ_max − max λ_rand.
* Conv2D (``conv2D_Wmats``, l. 1258-1336): one matrix W[:, :, i, j] per kernel position (i over kh,
  then j over kw), transposed to N ≥ M; their eigenvalues are pooled into one ESD of M·kh·kw values
  (``combined_eigenvalues``, l. 2784-2857), rf = kh·kw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError

NAN = float("nan")

#: WeightWatcher's absolute eigenvalue floor for the power-law fit (constants.EVALS_THRESH).
EVALS_FLOOR = 1e-5
#: below this many eigenvalues above the floor WeightWatcher switches to its small-N fit (SMALL_N_CUTOFF).
SMALL_N = 20
#: KDE bandwidth of WeightWatcher's MP fit (``mp_fit``: ``bw = 0.1``).
MP_BANDWIDTH = 0.1
#: √(1/2): WeightWatcher's default ``conv2d_norm`` scale of Conv2D weights.
CONV2D_NORM = math.sqrt(1 / 2.0)

RngLike = int | np.random.Generator | np.random.RandomState | None


# ---------------------------------------------------------------------------------------------- helpers


def _host64(x: Any) -> np.ndarray:
    """A float64 numpy copy/view of a numpy array, list or torch tensor (torch is never imported here)."""
    if hasattr(x, "detach"):  # a torch tensor (bfloat16 has no numpy dtype): float → float64 is exact
        x = x.detach().cpu()
        a = (x.double() if x.is_floating_point() else x).numpy()
    else:
        a = np.asarray(x)
    if a.dtype.kind in "cb":
        raise PhasescopeError(f"weights must be real numbers, got dtype {a.dtype}; pass a real floating-point array")
    return a.astype(np.float64, copy=False)


def _evals(eigenvalues: Any) -> np.ndarray:
    """Ascending float64 eigenvalues (WeightWatcher's order: its sums run in this order)."""
    lam = _host64(eigenvalues)
    if lam.ndim != 1:
        raise PhasescopeError(f"expected a 1-D vector of eigenvalues, got shape {lam.shape}; pass λ = σ² of one matrix")
    return np.sort(lam)


def _bad(lam: np.ndarray) -> str | None:
    if lam.size == 0:
        return "no eigenvalues"
    if not np.all(np.isfinite(lam)):
        return "non-finite eigenvalues"
    if lam[-1] <= 0:
        return "all eigenvalues are zero"
    return None


# ------------------------------------------------------------------------------------------ power law


@dataclass(frozen=True)
class WWPowerLaw:
    """WeightWatcher's power-law fit of an ESD tail: ρ(λ) ∝ λ^(−alpha) for λ ≥ xmin.

    ``ks_distance`` is WeightWatcher's ``D`` (one-sided KS), ``n_tail`` its ``num_pl_spikes``, ``sigma`` its
    standard error (α−1)/√n_tail; ``small_n`` says the small-N estimator (< 20 points above the floor) ran.
    """

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    sigma: float
    small_n: bool = False
    reason: str | None = None


def esd_power_law_ww(eigenvalues: Any, *, floor: float = EVALS_FLOOR) -> WWPowerLaw:
    """WeightWatcher 0.7.7's ``alpha``/``xmin``/``D``: its ``WWFit`` on the eigenvalues above `floor`.

    Clauset–Shalizi–Newman MLE, α̂_i = 1 + n_i / Σ_{j≥i} log(λ_j/λ_i), with λ_min = λ_i chosen to minimise
    the one-sided KS distance D_i = max_k |1 − (λ_{i+k}/λ_i)^(1−α̂_i) − k/n_i| over every λ_i but the
    largest (tails of ≥ 2 points; α̂ ≤ 1 gives D = 1; ties keep the smallest λ_min). With fewer than 20
    eigenvalues above `floor` (1e-5, absolute) it uses WeightWatcher's small-N estimator: α = 1 +
    (n−1)/Σ log(λ/λ_min) over tails of ≥ 8 points, λ_min again by the smallest D (see the module doc).
    Compare phasescope's `spectra.weights.esd_power_law`: two-sided KS and tails of ≥ 10 points. NaN with a
    reason if fewer than 2 eigenvalues lie above `floor` (WeightWatcher reports α = −1, "failed") or if no
    tail gives α > 1 (WeightWatcher then reports the degenerate α, e.g. 0).
    """
    lam = _evals(eigenvalues)
    if lam.size and not np.all(np.isfinite(lam)):
        return WWPowerLaw(NAN, NAN, NAN, 0, NAN, False, "non-finite eigenvalues")
    data = lam[lam > floor]
    n = data.size
    if n < 2:
        return WWPowerLaw(NAN, NAN, NAN, 0, NAN, False, f"{n} eigenvalues above the floor {floor:g}, need ≥ 2")
    log_data = np.log(data, dtype=np.float64)
    if n < SMALL_N:
        i, alpha, d, sigma = _small_n_fit(data, log_data)
    else:
        alphas = np.zeros(n - 1, dtype=np.float64)
        for i in range(n - 1):  # the same expression as WWFit, so α is bit-identical (and ties break alike)
            m = float(n - i)
            with np.errstate(divide="ignore", invalid="ignore"):
                alphas[i] = 1 + m / (np.sum(log_data[i:]) - m * log_data[i])
        ds = _ks_one_sided(data, alphas)
        sigmas = (alphas - 1) / np.sqrt(n - np.arange(n - 1))
        i = int(np.argmin(ds))
        alpha, d, sigma = float(alphas[i]), float(ds[i]), float(sigmas[i])
    xmin = float(data[i])
    n_tail = int(np.count_nonzero(lam >= xmin))
    if not (math.isfinite(alpha) and alpha > 1):  # WeightWatcher reports this α (0, ≤ 1 or inf) as a success
        reason = f"no valid power-law tail (degenerate eigenvalues; WeightWatcher reports alpha={alpha:g})"
        return WWPowerLaw(NAN, xmin, NAN, n_tail, NAN, n < SMALL_N, reason)
    return WWPowerLaw(alpha, xmin, d, n_tail, sigma, n < SMALL_N, None)


def _ks_one_sided(data: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """D_i of WWFit.fit_power_law_standard for every candidate i (row chunks keep memory ≤ ~32 MB)."""
    n = data.size
    ds = np.ones(n - 1, dtype=np.float64)
    idx = np.arange(n)
    chunk = max(1, 4_000_000 // n)
    for s in range(0, n - 1, chunk):
        rows = np.arange(s, min(s + chunk, n - 1))
        a = alphas[rows]
        m = (n - rows).astype(np.float64)
        k = idx[None, :] - rows[:, None]
        with np.errstate(all="ignore"):
            ratio = data[None, :] / data[rows][:, None]
            dev = np.abs(1 - ratio ** (-a[:, None] + 1) - k / m[:, None])
        dev = np.where(k >= 0, dev, -np.inf)
        ds[rows] = np.where(a > 1, dev.max(axis=1), 1.0)
    return ds


def _small_n_fit(data: np.ndarray, log_data: np.ndarray) -> tuple[int, float, float, float]:
    """WWFit.fit_powerlaw_smallN (k_min = 8, no prior) followed by WWFit.__init__'s own choice.

    The small-N routine picks λ_min by J = D − 0.868/√n, but ``WWFit.__init__`` (WW_powerlaw l. 56-60)
    then re-selects i = argmin D over its arrays, so J never decides: candidates with tails < 8 points,
    Σ log ≤ 1e-12 or α ≤ 1 keep D = 1, and σ comes from the α array as it was before the fallback (l. 154).
    Returns (i, α, D, σ) of WeightWatcher's final choice.
    """
    n = data.size
    alphas = np.zeros(n - 1, dtype=np.float64)
    ds = np.ones(n - 1, dtype=np.float64)
    any_valid = False
    for i in range(n - 1):
        m_int = n - i
        if m_int < 8:
            continue
        m = float(m_int)
        s = np.sum(log_data[i:]) - m * log_data[i]
        if s <= 1e-12:
            continue
        a = 1.0 + (m - 1.0) / s
        alphas[i] = a
        if a <= 1.0:
            continue
        f_fit = 1.0 - (data[i:] / data[i]) ** (1.0 - a)
        ds[i] = float(np.max(np.abs(np.arange(m_int, dtype=np.float64) / m - f_fit)))
        any_valid = True
    sigmas = (alphas - 1.0) / np.sqrt(n - np.arange(n - 1))
    if not any_valid:  # no candidate survived: the whole sample is the tail
        m = float(n)
        s = np.sum(log_data) - m * log_data[0]
        if s > 1e-12:
            a = 1.0 + (m - 1.0) / s
            alphas[0] = a
            f_fit = 1.0 - (data / data[0]) ** (1.0 - a)
            ds[0] = float(np.max(np.abs(np.arange(n, dtype=np.float64) / m - f_fit)))
    i = int(np.argmin(ds))
    return i, float(alphas[i]), float(ds[i]), float(sigmas[i])


# ----------------------------------------------------------------------------------------- norm metrics


def log_norm(eigenvalues: Any) -> float:
    """WeightWatcher's ``log_norm`` = log10 Σλ = log10 ‖W‖_F² (no 1/N; Conv2D λ carry the 1/2 of
    ``conv2d_norm``). NaN for an empty, non-finite or all-zero spectrum."""
    lam = _evals(eigenvalues)
    return NAN if _bad(lam) else float(np.log10(np.sum(lam)))


def log_spectral_norm(eigenvalues: Any) -> float:
    """WeightWatcher's ``log_spectral_norm`` = log10 λ_max = 2·log10 ‖W‖₂. NaN for a degenerate spectrum."""
    lam = _evals(eigenvalues)
    return NAN if _bad(lam) else float(np.log10(np.max(lam)))


def alpha_weighted(eigenvalues: Any, alpha: float | None = None) -> float:
    """WeightWatcher's ``alpha_weighted`` = α·log10 λ_max (Martin & Mahoney 2021, Nat. Commun.'s α̂).

    `alpha` defaults to WeightWatcher's own fit (`esd_power_law_ww`). NaN for a degenerate spectrum or α."""
    return esd_norm_metrics(eigenvalues, alpha=alpha).alpha_weighted


def log_alpha_norm(eigenvalues: Any, alpha: float | None = None) -> float:
    """WeightWatcher's ``log_alpha_norm`` = log10 Σ_i λ_i^α, the log of the Schatten-2α norm to the 2α,
    over every eigenvalue (no floor). `alpha` defaults to `esd_power_law_ww`'s. NaN when undefined."""
    return esd_norm_metrics(eigenvalues, alpha=alpha).log_alpha_norm


@dataclass(frozen=True)
class ESDNormMetrics:
    """WeightWatcher's norm columns of one layer's ESD (``apply_norm_metrics``); see the module doc."""

    norm: float  # Σλ = ‖W‖_F²
    log_norm: float  # log10 Σλ
    spectral_norm: float  # λ_max = ‖W‖₂²
    log_spectral_norm: float  # log10 λ_max
    alpha: float
    alpha_weighted: float  # α·log10 λ_max
    log_alpha_norm: float  # log10 Σ λ^α
    stable_rank: float  # Σλ / λ_max
    reason: str | None = None


def esd_norm_metrics(eigenvalues: Any, *, alpha: float | None = None, floor: float = EVALS_FLOOR) -> ESDNormMetrics:
    """All of WeightWatcher's norm metrics of one ESD; `alpha` defaults to ``esd_power_law_ww(λ, floor)``.

    Every eigenvalue counts (WeightWatcher's 1e-5 floor applies to the power-law fit only). NaN fields with
    a reason for an empty, non-finite or all-zero spectrum (WeightWatcher gives −inf there), and the α
    fields are NaN when α is (WeightWatcher would use its failure value α = −1).
    """
    lam = _evals(eigenvalues)
    bad = _bad(lam)
    if bad:
        return ESDNormMetrics(NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, bad)
    reason = None
    if alpha is None:
        fit = esd_power_law_ww(lam, floor=floor)
        alpha, reason = fit.alpha, fit.reason
    alpha = float(alpha)
    norm = float(np.sum(lam))
    top = float(np.max(lam))
    lsn = float(np.log10(top))
    if math.isfinite(alpha):
        aw, lan = alpha * lsn, float(np.log10(np.sum(lam**alpha)))
    else:
        aw, lan = NAN, NAN
        reason = reason or "alpha is NaN"
    return ESDNormMetrics(norm, float(np.log10(norm)), top, lsn, alpha, aw, lan, norm / top, reason)


# ---------------------------------------------------------------------------------------- MP fit


@dataclass(frozen=True)
class MPFit:
    """WeightWatcher's Marchenko–Pastur fit of one ESD (``mp_fit``).

    ``sigma_mp`` is in the rescaled units (mean eigenvalue 1, WeightWatcher's ``sigma_mp``; in the input's
    units the fitted σ² is ``sigma_mp**2 / w_scale**2``); the bulk edges
    are in the input's units (its ``bulk_max``/``bulk_min``); ``w_scale`` is its ``W_scale`` = √(n_λ/Σλ).
    ``bulk_max_tw`` is the spike threshold λ₊ + √TW (input units); ``num_spikes`` counts λ above it.
    """

    sigma_mp: float
    bulk_max: float
    bulk_min: float
    bulk_max_tw: float
    num_spikes: int
    mp_softrank: float
    w_scale: float
    q: float
    reason: str | None = None


def _linear_kde(points: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """sklearn's KernelDensity(kernel="linear") density: Σ_i max(0, 1 − |x − x_i|/h) / (n h)."""
    out = np.empty(grid.size)
    step = max(1, 4_000_000 // max(points.size, 1))
    for s in range(0, grid.size, step):
        g = grid[s : s + step]
        out[s : s + step] = np.maximum(0.0, 1.0 - np.abs(g[:, None] - points[None, :]) / bandwidth).sum(axis=1)
    return out / (points.size * bandwidth)


def _mp_residual(xde: np.ndarray, yde: np.ndarray, n_bad: int, q: float) -> Callable[[Any], float]:
    """``resid_mp(..., allresid=False)`` with the KDE precomputed (it does not depend on σ)."""
    x_peak = xde[np.argmax(yde)]
    x_top = np.max(xde)
    tail = np.zeros(n_bad)

    def resid(sigma: Any) -> float:
        with np.errstate(all="ignore"):
            if q == 1:
                ymp = np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - xde**2))
                r = ymp - yde
            else:
                y = 1 / q
                b = np.power(sigma * (1 + np.sqrt(1 / q)), 2)
                a = np.power(sigma * (1 - np.sqrt(1 / q)), 2)
                ymp = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * xde * y)) * np.sqrt((b - xde) * (xde - a)))
                off = np.any((b < x_peak) | (b > x_top) | (a > x_peak))  # MP support misses the KDE's peak
                r = np.zeros(len(yde)) + 1000 if off else ymp - yde
            return float(np.sum(np.concatenate((r, tail)) ** 2))

    return resid


def mp_fit(eigenvalues: Any, n: int, m: int, *, bandwidth: float = MP_BANDWIDTH) -> MPFit:
    """WeightWatcher 0.7.7's Marchenko–Pastur fit (``mp_fit``) of the ESD of an n × m matrix (n ≥ m usually;
    for Conv2D, the per-position matrix, whose kh·kw ESDs are pooled in `eigenvalues`).

    λ are rescaled to mean 1; σ minimises Σ (ρ_MP(x; σ, Q) − KDE(x))² (see the module doc: grid search over
    0.05 s₀ … 2 s₀, then Nelder–Mead, as ``scipy.optimize.brute`` does); for Q = n/m = 1 the quarter-circle
    law is fitted to the singular values instead. Deterministic. Then

        λ₊ = σ²(1 + 1/√Q)²,   λ₋ = σ²(1 − 1/√Q)²,   mp_softrank = λ₊ / λ_max,
        num_spikes = #{λ > λ₊ + √TW},   TW = Q^(−1/2) λ₊^(2/3) m^(−2/3)   (rescaled units),

    with λ₊, λ₋ reported in the input's units. NaN fields with a reason for an empty, non-finite or all-zero
    ESD, or when the KDE nowhere exceeds 0.01 (WeightWatcher reports −1 there).
    """
    from scipy import optimize  # type: ignore[import-untyped]

    if not (int(n) > 0 and int(m) > 0):
        raise PhasescopeError(f"mp_fit needs the matrix shape n, m > 0, got n={n}, m={m}; pass W.shape")
    lam = np.clip(_evals(eigenvalues), 0.0, None)  # round-off negatives of a PSD spectrum
    q = int(n) / int(m)
    bad = _bad(lam)
    if bad:
        return MPFit(NAN, NAN, NAN, NAN, 0, NAN, NAN, q, bad)
    w_scale = np.sqrt(lam.shape[0]) / np.sqrt(np.sum(lam))
    to_plot = (w_scale * w_scale) * lam
    lambda_max = np.max(to_plot)
    s0 = np.sqrt(np.max(to_plot) / np.square(1 + 1.0 / np.sqrt(q)))  # calc_sigma
    to_fit = np.sqrt(to_plot) if q == 1 else to_plot
    xde = np.linspace(0, np.max(to_fit) + 0.5, 1000)
    yde = _linear_kde(to_fit, xde, bandwidth)
    good = yde > 0.01
    if not np.any(good):
        return MPFit(NAN, NAN, NAN, NAN, 0, NAN, float(w_scale), q, "the ESD's density is nowhere above 0.01")
    resid = _mp_residual(xde[good], yde[good], int(np.count_nonzero(yde < 0.01)), q)
    out = optimize.brute(resid, (slice(0.05 * s0, 2.0 * s0, 0.01 * s0),), full_output=True)
    s1 = float(np.asarray(out[0]).ravel()[0])
    bulk_max = (s1 * (1 + 1 / np.sqrt(q))) ** 2
    bulk_min = (s1 * (1 - 1 / np.sqrt(q))) ** 2
    tw = 1 / np.sqrt(q) * np.power(bulk_max, 2 / 3) * np.power(int(m), -2 / 3)
    edge_tw = bulk_max + np.sqrt(tw)
    s2 = w_scale * w_scale
    return MPFit(
        sigma_mp=s1,
        bulk_max=float(bulk_max / s2),
        bulk_min=float(bulk_min / s2),
        bulk_max_tw=float(edge_tw / s2),
        num_spikes=int(np.count_nonzero(to_plot > edge_tw)),
        mp_softrank=float(bulk_max / lambda_max),
        w_scale=float(w_scale),
        q=q,
    )


def mp_softrank(eigenvalues: Any, n: int, m: int) -> float:
    """WeightWatcher's ``mp_softrank`` = λ₊/λ_max from `mp_fit` (> 1 is possible: λ_max inside the bulk)."""
    return mp_fit(eigenvalues, n, m).mp_softrank


# ------------------------------------------------------------------------------------ weight arrays


def _matrices(w: Any) -> np.ndarray:
    mats = _host64(w)
    if mats.ndim == 2:
        mats = mats[None]
    if mats.ndim != 3 or 0 in mats.shape:
        raise PhasescopeError(
            f"expected one weight matrix (a, b) or a stack (k, a, b), got shape {mats.shape}; "
            "for a Conv2D weight pass conv2d_matrices(w)"
        )
    return mats


def pooled_eigenvalues(matrices: Any) -> np.ndarray:
    """Descending eigenvalues λ = σ² of a weight matrix (a, b), or of a stack (k, a, b) pooled into one ESD
    of k·min(a, b) values (WeightWatcher's ``combined_eigenvalues``); float64 SVD, as WeightWatcher's."""
    mats = _matrices(matrices)
    sv = np.linalg.svd(mats, compute_uv=False)
    return np.sort((sv * sv).ravel())[::-1]


def conv2d_matrices(w: Any, *, conv2d_norm: bool = True) -> np.ndarray:
    """The kh·kw matrices WeightWatcher analyses for a Conv2D weight (out, in, kh, kw) (``conv2D_Wmats``).

    Slice k = i·kw + j is W[:, :, i, j], transposed when out < in so that every slice is N × M with N ≥ M;
    shape (kh·kw, N, M), float64. With `conv2d_norm` (WeightWatcher's default) they are scaled by √(1/2),
    so their λ are σ²/2. Pool their ESDs with `pooled_eigenvalues`. PyTorch layout (channels first) only.
    """
    a = _host64(w)
    if a.ndim != 4:
        raise PhasescopeError(f"a Conv2D weight has shape (out, in, kh, kw), got {a.shape}; pass module.weight")
    out, cin, kh, kw = a.shape
    mats = np.ascontiguousarray(a.transpose(2, 3, 0, 1).reshape(kh * kw, out, cin))
    if out < cin:
        mats = np.ascontiguousarray(mats.transpose(0, 2, 1))
    return mats * CONV2D_NORM if conv2d_norm else mats


def ww_conv2d_dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(N, M, rf) WeightWatcher 0.7.7 records for a PyTorch Conv2D weight of `shape` (out, in, kh, kw).

    rf = kh·kw. Normally N = max(out, in), M = min(out, in), but ``conv2D_Wmats`` swaps N and M once per
    transposed slice (l. 1286-1288), so when out < in and kh·kw is even it keeps N = out < M = in, and when
    out + in < kh + kw (l. 1316-1334) it keeps N = out, M = in: then its Q = N/M < 1 and its TW term use
    these. Pass the result to `mp_fit`/`randomized_esd` to reproduce WeightWatcher's numbers exactly.
    """
    if len(shape) != 4:
        raise PhasescopeError(f"a Conv2D weight has shape (out, in, kh, kw), got {tuple(shape)}")
    out, cin, kh, kw = (int(s) for s in shape)
    rf = kh * kw
    if out < cin and out + cin >= kh + kw and rf % 2 == 1:
        return cin, out, rf
    return out, cin, rf


@dataclass(frozen=True)
class RandomizedESD:
    """WeightWatcher's randomised-ESD columns (``apply_random_esd`` and ``apply_mp_fit(random=True)``).

    ``eigenvalues``: the pooled randomised ESD of all replicas, descending. ``num_traps`` = ``mp.num_spikes``
    (WeightWatcher's ``num_traps``/``rand_num_spikes``); ``mp`` carries ``rand_sigma_mp``,
    ``rand_mp_softrank``, ``rand_W_scale``, ``rand_bulk_max``, ``rand_bulk_min``.
    """

    eigenvalues: np.ndarray
    num_traps: int
    mp: MPFit
    max_rand_eval: float
    rand_distance: float
    ww_softrank: float
    ww_maxdist: float
    replicas: int
    reason: str | None = None


def _rng(rng: RngLike) -> np.random.Generator | np.random.RandomState:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator | np.random.RandomState):
        return rng
    if isinstance(rng, int | np.integer):
        return np.random.default_rng(int(rng))
    raise PhasescopeError(f"rng must be an int seed, a numpy Generator or RandomState, got {type(rng).__name__}")


def _shuffled_evals(mats: np.ndarray, gen: np.random.Generator | np.random.RandomState) -> np.ndarray:
    out = []
    for w in mats:  # random_eigenvalues: shuffle the flattened matrix in its own layout, then SVD
        flat = w.flatten()
        gen.shuffle(flat)
        sv = np.linalg.svd(flat.reshape(w.shape), compute_uv=False)
        out.append(sv * sv)
    return np.concatenate(out)


def randomized_esd(
    matrices: Any,
    *,
    rng: RngLike = 0,
    replicas: int | None = None,
    dims: tuple[int, int] | None = None,
    distance: bool = True,
) -> RandomizedESD:
    """Correlation traps à la WeightWatcher 0.7.7 (``randomize=True``) for a weight matrix or a stack of them
    (e.g. `conv2d_matrices`), analysed in the orientation given (the shuffle permutes the C-order elements).

    Each matrix's elements are permuted at random and its ESD recomputed, `replicas` times (WeightWatcher:
    5 if the layer has < 100 eigenvalues, else 1), pooled; `mp_fit` of that randomised ESD with the layer's
    `dims` = (N, M) (default: max and min of a matrix's shape) gives ``num_traps``, the randomised eigenvalues
    beyond λ₊ + √TW: large single elements ("traps") survive shuffling and stick out of the MP bulk. With
    `distance`, one more shuffle of every matrix gives ``rand_distance`` = √JS(p, q) (natural log; p, q the
    ascending ESD and randomised ESD, each normalised to sum 1), ``ww_softrank`` = max λ_rand/λ_max and
    ``ww_maxdist`` = λ_max − max λ_rand. `rng`: an int seed (default 0) or a numpy Generator; a
    ``RandomState`` is drawn from exactly as WeightWatcher draws from ``np.random``, in its order (replicas,
    then the distance shuffle), so ``np.random.mtrand._rand`` reproduces a seeded ``analyze()``.
    """
    mats = _matrices(matrices)
    gen = _rng(rng)
    n, m = dims if dims is not None else (max(mats.shape[1:]), min(mats.shape[1:]))
    n_comp = int(m) * mats.shape[0]
    reps = (5 if n_comp < 100 else 1) if replicas is None else int(replicas)
    if reps < 1:
        raise PhasescopeError(f"replicas must be ≥ 1, got {replicas}")
    rand = np.sort(np.concatenate([_shuffled_evals(mats, gen) for _ in range(reps)]))
    fit = mp_fit(rand, n, m)
    dist = soft = maxdist = NAN
    if distance:
        lam = np.sort(pooled_eigenvalues(mats))
        rand1 = np.sort(_shuffled_evals(mats, gen))
        if lam[-1] > 0:
            from scipy import stats

            mid = (lam + rand1) / 2
            dist = float(np.sqrt((stats.entropy(lam, mid) + stats.entropy(rand1, mid)) / 2))
            soft = float(np.max(rand1) / np.max(lam))
            maxdist = float(np.max(lam) - np.max(rand1))
    return RandomizedESD(
        eigenvalues=rand[::-1],
        num_traps=fit.num_spikes,
        mp=fit,
        max_rand_eval=float(np.max(rand)),
        rand_distance=dist,
        ww_softrank=soft,
        ww_maxdist=maxdist,
        replicas=reps,
        reason=fit.reason,
    )


def correlation_traps(matrices: Any, *, rng: RngLike = 0, dims: tuple[int, int] | None = None) -> int:
    """WeightWatcher's ``num_traps`` of a weight matrix (or stack): see `randomized_esd` (no distance draw)."""
    return randomized_esd(matrices, rng=rng, dims=dims, distance=False).num_traps


# ------------------------------------------------------------------------------------------ one layer


def ww_layer_metrics(w: Any, *, fit_mp: bool = True, randomize: bool = True, rng: RngLike = 0) -> dict[str, Any]:
    """One row of ``WeightWatcher.analyze(mp_fit=fit_mp, randomize=randomize)`` for one weight, by
    WeightWatcher's column names: a dense weight (a, b) as stored (Linear, HF Conv1D, Embedding) or a Conv2D
    weight (out, in, kh, kw) (scaled by √(1/2), pooled, with `ww_conv2d_dims`). Missing fits are NaN.
    WeightWatcher's layer filters (skip if M·rf < 8 or N > 50,000) are not applied here.

    WeightWatcher reads torch weights as float32 (on CPU); pass float32 weights to match it bit for bit.
    """
    a = _host64(w)
    if a.ndim == 4:
        mats = conv2d_matrices(a)
        n, m, rf = ww_conv2d_dims(a.shape)
    elif a.ndim == 2:
        mats, (n, m), rf = a[None], (max(a.shape), min(a.shape)), 1
    else:
        raise PhasescopeError(f"expected a dense (a, b) or Conv2D (out, in, kh, kw) weight, got shape {a.shape}")
    lam = pooled_eigenvalues(mats)
    pl = esd_power_law_ww(lam)
    norms = esd_norm_metrics(lam, alpha=pl.alpha)
    row: dict[str, Any] = {
        "N": n,
        "M": m,
        "rf": rf,
        "Q": n / m,
        "num_evals": int(lam.size),
        "alpha": pl.alpha,
        "xmin": pl.xmin,
        "D": pl.ks_distance,
        "sigma": pl.sigma,
        "num_pl_spikes": pl.n_tail,
        "norm": norms.norm,
        "log_norm": norms.log_norm,
        "spectral_norm": norms.spectral_norm,
        "log_spectral_norm": norms.log_spectral_norm,
        "alpha_weighted": norms.alpha_weighted,
        "log_alpha_norm": norms.log_alpha_norm,
        "stable_rank": norms.stable_rank,
    }
    if fit_mp:
        f = mp_fit(lam, n, m)
        row |= {
            "num_spikes": f.num_spikes,
            "sigma_mp": f.sigma_mp,
            "mp_softrank": f.mp_softrank,
            "W_scale": f.w_scale,
            "bulk_max": f.bulk_max,
            "bulk_min": f.bulk_min,
        }
    if randomize:
        r = randomized_esd(mats, rng=rng, dims=(n, m))
        row |= {
            "max_rand_eval": r.max_rand_eval,
            "rand_distance": r.rand_distance,
            "ww_softrank": r.ww_softrank,
            "ww_maxdist": r.ww_maxdist,
            "num_traps": r.num_traps,
            "rand_num_spikes": r.num_traps,
            "rand_sigma_mp": r.mp.sigma_mp,
            "rand_mp_softrank": r.mp.mp_softrank,
            "rand_W_scale": r.mp.w_scale,
            "rand_bulk_max": r.mp.bulk_max,
            "rand_bulk_min": r.mp.bulk_min,
        }
    return row
