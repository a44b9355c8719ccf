"""Change-point segmentation of metric trajectories over log-step (the numeric core of phase detection).

A trajectory is a set of captures at training steps t_1 < … < t_n with a metric vector y_i ∈ R^d each.
We model it as piecewise linear in the log-step coordinate

    x = ln(1 + t)        (ln(1+t), not ln t, so that step 0 – the initialisation – is x = 0),

and find the breakpoints with PELT (Killick, Fearnhead & Eckley 2012; our vectorised loop, or
``ruptures.Pelt`` with the same cost) under the cost

    C(s, e) = Σ_c Σ_{i∈[s,e)} (y_ic − a_c − b_c x_i)² / σ_c²        (least squares per channel),

i.e. −2 log-likelihood of a Gaussian segment-wise linear model with channel noise σ_c. Every new segment
adds 2 parameters per channel plus its location, so the BIC penalty (Schwarz 1978) per breakpoint is

    β = (2d + 1) · ln n.

σ_c is estimated robustly from the data (median absolute deviation of the leave-one-out linear
interpolation residuals) with a floor of ``min_effect`` times the channel's standard deviation, so that
an almost noiseless smooth curve is not cut into many pieces by its curvature alone. The cost is
evaluated in O(1) per segment from cumulative sums, for all candidate starts at once.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_MIN_EFFECT = 0.05  # noise floor, in units of each channel's standard deviation
DEFAULT_MIN_SIZE = 3  # captures per segment: a line and one degree of freedom for its error


def log_step(steps: np.ndarray) -> np.ndarray:
    """x = ln(1 + step): the log-step axis used for segmentation and slopes (step 0 maps to 0)."""
    steps = np.asarray(steps, dtype=np.float64)
    if np.any(steps < 0):
        raise ValueError("training steps must be non-negative to place them on the ln(1+step) axis")
    return np.log1p(steps)


def noise_sigma(x: np.ndarray, y: np.ndarray) -> float:
    """Robust noise scale of y(x) for a signal that is locally linear.

    Each interior point is predicted by linear interpolation between its neighbours,
    r_i = y_i − (w y_{i−1} + (1−w) y_{i+1}) with w = (x_{i+1}−x_i)/(x_{i+1}−x_{i−1}); for i.i.d. noise σ,
    Var r_i = σ² (1 + w² + (1−w)²). σ = 1.4826 · median |r_i / √(1 + w² + (1−w)²)| (MAD), which
    ignores the few residuals that sit on a kink.
    """
    if len(y) < 3:
        return 0.0
    dx = x[2:] - x[:-2]
    w = np.where(dx > 0, (x[2:] - x[1:-1]) / np.where(dx > 0, dx, 1.0), 0.5)
    r = y[1:-1] - (w * y[:-2] + (1.0 - w) * y[2:])
    r = r / np.sqrt(1.0 + w**2 + (1.0 - w) ** 2)
    return float(1.4826 * np.median(np.abs(r)))


def ruptures_cost():
    """The ruptures cost class for independent per-channel linear regression on column 0 (= x): the
    ``engine="ruptures"`` reference of :func:`segment` (and of bench/phases.py)."""
    from ruptures.base import BaseCost
    from ruptures.costs import NotEnoughPoints

    class CostPiecewiseLinear(BaseCost):
        """C(s,e) = Σ_c min_{a,b} Σ_i (y_ic − a − b x_i)², from prefix sums (O(1) per segment)."""

        model = "phasescope-piecewise-linear"

        def __init__(self, min_size: int = 2):
            self.signal = None
            self.min_size = min_size

        def fit(self, signal):
            self.signal = signal
            x, y = signal[:, :1], signal[:, 1:]
            cs = lambda a: np.vstack([np.zeros((1, a.shape[1])), np.cumsum(a, axis=0)])  # noqa: E731
            self._n = np.arange(len(x) + 1, dtype=np.float64)
            self._sx, self._sxx = cs(x)[:, 0], cs(x * x)[:, 0]
            self._sy, self._syy, self._sxy = cs(y), cs(y * y), cs(x * y)
            return self

        def error(self, start, end):
            if end - start < self.min_size:
                raise NotEnoughPoints
            n = end - start
            sx = self._sx[end] - self._sx[start]
            sxx = self._sxx[end] - self._sxx[start]
            sy = self._sy[end] - self._sy[start]
            syy = self._syy[end] - self._syy[start]
            sxy = self._sxy[end] - self._sxy[start]
            vxx = sxx - sx * sx / n
            vyy = syy - sy * sy / n
            vxy = sxy - sx * sy / n
            ssr = vyy - (vxy * vxy / vxx if vxx > 1e-12 else 0.0)
            return float(np.maximum(ssr, 0.0).sum())

    return CostPiecewiseLinear


def default_penalty(n: int, n_channels: int) -> float:
    """BIC penalty per breakpoint in noise-normalised units: (2d + 1) · ln n."""
    return (2 * n_channels + 1) * math.log(max(n, 2))


def normalise(x: np.ndarray, Y: np.ndarray, min_effect: float = DEFAULT_MIN_EFFECT) -> np.ndarray:
    """Scale each channel of Y (n, d) by its effective noise σ_c = max(MAD noise, min_effect · std)."""
    Z = np.empty_like(Y, dtype=np.float64)
    for c in range(Y.shape[1]):
        y = Y[:, c] - np.mean(Y[:, c])
        sd = float(np.std(y))
        if sd == 0.0:
            Z[:, c] = 0.0
            continue
        sigma = max(noise_sigma(x, y), min_effect * sd)
        Z[:, c] = y / sigma
    return Z


def segment(
    x: np.ndarray,
    Y: np.ndarray,
    *,
    penalty: float | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    min_effect: float = DEFAULT_MIN_EFFECT,
    engine: str = "numpy",
) -> list[int]:
    """Breakpoints of the piecewise-linear fit of Y (n, d) over x (n,), as ruptures returns them.

    Returns sorted indices [b_1, …, b_k, n]: segment j covers captures [b_{j−1}, b_j) with b_0 = 0.
    ``penalty`` is in noise-normalised units (default :func:`default_penalty`). Trajectories shorter
    than 2·min_size give a single segment. ``engine``: "numpy" (:func:`pelt`, vectorised) or
    "ruptures" (``ruptures.Pelt`` with the same cost; slower, kept as the reference).
    """
    x = np.asarray(x, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n = len(x)
    if n < 2 * min_size:
        return [n]
    if penalty is None:
        penalty = default_penalty(n, Y.shape[1])
    if not penalty > 0:
        raise ValueError(f"penalty must be a positive number, got {penalty!r}")
    Z = normalise(x, Y, min_effect)
    if engine == "ruptures":
        from ruptures import Pelt

        algo = Pelt(custom_cost=ruptures_cost()(min_size=min_size), min_size=min_size, jump=1)
        return [int(b) for b in algo.fit(np.column_stack([x, Z])).predict(pen=penalty)]
    if engine != "numpy":
        raise ValueError(f"engine must be 'numpy' or 'ruptures', got {engine!r}")
    return pelt(x, Z, penalty, min_size)


def pelt(x: np.ndarray, Z: np.ndarray, penalty: float, min_size: int) -> list[int]:
    """PELT (Killick et al. 2012) for the piecewise-linear cost, vectorised over candidate starts.

    F(t) = min_{s ∈ R_t} F(s) + C(s, t) + β, pruning s once F(s) + C(s, t) > F(t) (valid because
    adding a breakpoint never increases the least-squares cost). Same optimum as ruptures' ``Pelt``
    with the cost above (checked in the tests), without its per-step dictionary copies.
    """
    n = len(x)
    cs = lambda a: np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)])  # noqa: E731
    X = x[:, None]
    Sx, Sxx = cs(x), cs(x * x)
    Sy, Syy, Sxy = cs(Z), cs(Z * Z), cs(X * Z)

    def cost(s: np.ndarray, t: int) -> np.ndarray:
        m = (t - s).astype(np.float64)
        sx, sxx = Sx[t] - Sx[s], Sxx[t] - Sxx[s]
        sy, syy, sxy = Sy[t] - Sy[s], Syy[t] - Syy[s], Sxy[t] - Sxy[s]
        vxx = (sxx - sx * sx / m)[:, None]
        vyy = syy - sy * sy / m[:, None]
        vxy = sxy - sx[:, None] * sy / m[:, None]
        fit = np.where(vxx > 1e-12, vxy * vxy / np.where(vxx > 1e-12, vxx, 1.0), 0.0)
        return np.maximum(vyy - fit, 0.0).sum(axis=1)

    F = np.full(n + 1, np.inf)
    F[0] = -penalty
    last = np.zeros(n + 1, dtype=np.int64)
    R = np.array([0], dtype=np.int64)
    for t in range(min_size, n + 1):
        if t - min_size >= min_size:  # a new start becomes admissible
            R = np.append(R, t - min_size)
        R_ok = R[(t - R) >= min_size]
        total = F[R_ok] + cost(R_ok, t)
        j = int(np.argmin(total + penalty))
        F[t] = total[j] + penalty
        last[t] = R_ok[j]
        keep = np.ones(len(R), dtype=bool)
        keep[np.isin(R, R_ok)] = total <= F[t]
        R = R[keep]
    bkps, t = [], n
    while t > 0:
        bkps.append(t)
        t = int(last[t])
    return sorted(bkps)


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Ordinary least squares y ≈ a + b x over the finite points: returns (b, se(b), a).

    se(b) = √(SSR/(m−2) / Σ(x−x̄)²); NaN when m < 3 (with m = 2 the slope is exact but its error unknown).
    """
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    m = len(x)
    if m < 2:
        return math.nan, math.nan, math.nan
    xm, ym = x.mean(), y.mean()
    vxx = float(((x - xm) ** 2).sum())
    if vxx <= 0:
        return math.nan, math.nan, float(ym)
    b = float(((x - xm) * (y - ym)).sum() / vxx)
    a = float(ym - b * xm)
    if m < 3:
        return b, math.nan, a
    ssr = float(((y - a - b * x) ** 2).sum())
    return b, math.sqrt(ssr / (m - 2) / vxx), a
