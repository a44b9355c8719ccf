"""Cross-check for phase detection: a Gaussian HMM over the model-level metric vector.

After Hu, Garcia-Jimenez, Boyd-Graber & Marasović (2023), "Latent State Models of Training Dynamics":
the training trajectory is a sequence of observations o_t ∈ R^D, emitted by a hidden Markov chain with
K states and diagonal Gaussian emissions. Here o_t = z-scored [d ln RankMe/dx, dα/dx] of the
model-level (median over probes) trajectory, x = ln(1+step), derivatives by central differences
(``numpy.gradient``): states are directions of the geometry, as phases are. (Adding the levels
[ln RankMe, α] as features made BIC pick extra states that split one phase by level.)

K is chosen by BIC = −2 ln L̂ + p ln n with p = (K − 1) + K(K − 1) + 2KD free parameters (start
probabilities, transitions, diagonal means and variances); each K is fitted from several seeds and the
best likelihood kept. The Viterbi path cuts the trajectory into runs of one state; each run is labelled
by the same rule as the PELT segments, and ``agreement`` is the fraction of captures whose HMM label
equals the PELT label of the model. Needs ``hmmlearn`` (``pip install phasescope[all]``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .label import label_segments
from .segmentation import log_step

MAX_STATES = 5
SEEDS = 4
SLOPES_ONLY = True  # states from directions (d/dx) only; levels too gave spurious extra states


def _features(steps, data) -> tuple:
    """(steps, x, z-scored features, model ln RankMe, model α) over the captures with finite RankMe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rk = data["rankme"]
        lr = np.nanmedian(np.log(np.where(rk > 0, rk, np.nan)), axis=1)
        al = np.nanmedian(data["alpha"], axis=1) if "alpha" in data else None
    steps = np.asarray(steps, dtype=np.float64)
    ok = np.isfinite(lr)
    steps, lr = steps[ok], lr[ok]
    al = None if al is None else al[ok]
    x = log_step(steps)
    cols = [lr]
    if al is not None and np.isfinite(al).sum() >= 3 and np.isfinite(al).mean() > 0.5:
        fin = np.isfinite(al)
        cols.append(np.interp(x, x[fin], al[fin]))
    if len(x) >= 3:
        cols = [np.gradient(c, x) for c in cols] if SLOPES_ONLY else cols + [np.gradient(c, x) for c in cols]
    F = np.column_stack(cols)
    sd = F.std(axis=0)
    F = (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return steps, x, F, lr, al


class _quiet_logs:
    """hmmlearn logs "Model is not converging" through logging; keep the cross-check quiet."""

    def __enter__(self):
        import logging

        self._log = logging.getLogger("hmmlearn")
        self._level = self._log.level
        self._log.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._log.setLevel(self._level)


def n_params(k: int, d: int) -> int:
    """Free parameters of a K-state diagonal Gaussian HMM in D dimensions: (K−1) + K(K−1) + 2KD."""
    return (k - 1) + k * (k - 1) + 2 * k * d


def hmm_phases(
    steps, data: dict, probes: list[str], *, max_states: int = MAX_STATES, pelt_labels: list[str] | None = None
) -> dict:
    """Fit Gaussian HMMs with 1…max_states states, keep the BIC-best, return its segments as a dict."""
    try:
        from hmmlearn.hmm import GaussianHMM
    except ImportError:
        return {"error": "hmmlearn is not installed; pip install 'phasescope[all]' for the HMM cross-check"}
    steps, x, F, lr, al = _features(steps, data)
    n, d = F.shape
    if n < 8:
        return {"error": f"only {n} captures; the HMM cross-check needs at least 8"}
    bic, models = {}, {}
    for k in range(1, min(max_states, n // 4) + 1):
        best = None
        for seed in range(SEEDS):
            m = GaussianHMM(
                n_components=k,
                covariance_type="diag",
                n_iter=200,
                tol=1e-4,
                random_state=seed,
                min_covar=1e-3,
                implementation="log",
            )
            with warnings.catch_warnings(), _quiet_logs():
                warnings.simplefilter("ignore")
                try:
                    m.fit(F)
                    ll = m.score(F)
                except (ValueError, np.linalg.LinAlgError):
                    continue
            if math.isfinite(ll) and (best is None or ll > best[0]):
                best = (ll, m)
        if best is not None:
            bic[k] = -2 * best[0] + n_params(k, d) * math.log(n)
            models[k] = best[1]
    if not bic:
        return {"error": "the HMM did not converge for any number of states"}
    k = min(bic, key=bic.get)
    states = models[k].predict(F)
    bkps = [i for i in range(1, n) if states[i] != states[i - 1]] + [n]
    segs = label_segments("model", steps.astype(np.int64), x, lr, al, bkps)
    # label per capture, HMM vs PELT, for the agreement score
    out = {
        "method": "gaussian-hmm-bic",
        "n_states": int(k),
        "bic": {int(j): float(b) for j, b in bic.items()},
        "states": [int(s) for s in states],
        "capture_steps": [int(s) for s in steps],
        "segments": [
            {
                "label": s.label,
                "start_step": s.start_step,
                "end_step": s.end_step,
                "open_end": s.open_end,
                "n_points": s.n_points,
            }
            for s in segs
        ],
    }
    if pelt_labels is not None and len(pelt_labels) == n:
        hmm_labels = []
        for s in segs:
            hmm_labels += [s.label] * s.n_points
        out["agreement"] = float(np.mean([a == b for a, b in zip(hmm_labels, pelt_labels)]))
    return out
