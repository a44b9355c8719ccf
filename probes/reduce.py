"""The one reducer: a :class:`~phasescope.probes.result.CaptureResult` in, the store rows out.

Live capture (Observatory, Recorder, JAX, HF/Lightning callbacks) and offline analysis
(``phasescope analyze``) both call :meth:`Reducer.reduce`, so their numbers agree by construction:

- per-probe metrics: every registered statistic with a ``per_probe`` rule whose variables the run
  stores (:mod:`phasescope.statistics`: RankMe, α-ReQ, …, linear CKA), computed once, on the host, in
  float64, from the first min(n, d, max_rank) covariance eigenvalues and the probe-sample Gram;
- stored eigenvalues: the first min(n, d, max_rank), NaN past them (what a PCA of the data returns);
- step row: loss/lr/scale and any extra scalars, per-parameter norms and the global norm, update
  ratios, and flags: ``nonfinite`` bits (1 gradient, 2 activation — set by the front-end when it
  captures, 4 loss), ``skipped`` (a GradScaler
  step with non-finite gradients), ``dropped`` (this step's capture dropped by the writer), ``lost``
  (captures or rows of this step lost to a phasescope failure).

The only state is each statistic's per-probe dict (CKA keeps the Gram of the first and of the previous
stored capture), so results must be reduced in step order — the writer thread does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from phasescope.failures import FailureLog
from phasescope.gradients import global_norm, nonfinite
from phasescope.spectra import Spectrum, to_numpy
from phasescope.spectra.weights import WEIGHT_EIGENVALUES
from phasescope.statistics import ProbeInputs, statistics
from phasescope.statistics import names as stat_names

from .result import CaptureResult

NONFINITE_GRAD, NONFINITE_ACT, NONFINITE_LOSS = 1, 2, 4
FLAG_BITS = {"nonfinite": {"gradient": NONFINITE_GRAD, "activation": NONFINITE_ACT, "loss": NONFINITE_LOSS}}
FLAGS = ("nonfinite", "skipped", "dropped", "lost")


@dataclass(frozen=True)
class RunSpec:
    """The run's fixed layout, as the reducer needs it."""

    probes: tuple[str, ...]
    dims: tuple[int, ...]
    max_rank: int
    fit_range: Any = "auto"
    metrics: tuple[str, ...] = field(default_factory=lambda: stat_names("metric"))
    flags: tuple[str, ...] = FLAGS  # the run's flag columns; other flag values are not stored
    weight_rank: int = 0  # the run stores weight ESDs up to this many eigenvalues (0: none)


@dataclass
class StepValues:
    step: int
    scalars: dict[str, float]
    params: dict[str, np.ndarray]
    flags: dict[str, int]


@dataclass
class CaptureValues:
    step: int
    metrics: dict[str, np.ndarray]
    eigenvalues: np.ndarray
    n_samples: np.ndarray
    matrices: dict[str, np.ndarray]
    weight_eigenvalues: np.ndarray | None = None  # (M, ≤ weight_rank) ESDs, when weight spectra ran
    sets: dict[str, np.ndarray] = field(default_factory=dict)  # set stat -> (loss_sets,) float64


class Reducer:
    """``reduce(result)`` → (step values, capture values or None). A probe whose metrics fail gets NaN
    and counts as lost in its step's ``flag_lost``; the failure goes to ``failures`` (stage "metric")."""

    def __init__(self, spec: RunSpec, failures: FailureLog | None = None, *, fresh: bool = True):
        self.spec = spec
        self.failures = failures if failures is not None else FailureLog(strict=True)
        # Every registered per-probe statistic whose variables this run stores, in registration order.
        self._stats = [
            s
            for s in statistics(kind="metric")
            if s.per_probe is not None and any(v.name in spec.metrics for v in s.variables)
        ]
        self._state: dict[str, list[dict]] = {s.name: [{} for _ in spec.probes] for s in self._stats}
        self._fresh = fresh  # False: the run's first capture was reduced by another process (a resume)

    def reduce(self, res: CaptureResult) -> tuple[StepValues, CaptureValues | None]:
        """The step row (always) and the capture row (when ``res.capture``) of one result."""
        if res.event is not None:
            res.event.synchronize()
        cap = self._capture_values(res) if res.capture else None  # may add to res.lost
        return self._step_values(res), cap

    def _step_values(self, res: CaptureResult) -> StepValues:
        scalars: dict[str, float] = {}
        params: dict[str, np.ndarray] = {}
        bits = 0
        for k, v in res.scalars.items():
            if v is not None:
                scalars[k] = float(to_numpy(v)) if not isinstance(v, (int, float)) else float(v)
        if "loss" in scalars and not math.isfinite(scalars["loss"]):
            bits |= NONFINITE_LOSS
        skipped = 0
        if res.grad_norms is not None:
            norms = np.asarray(to_numpy(res.grad_norms), dtype=np.float32)
            params["grad_norm"] = norms
            scalars["grad_norm"] = global_norm(norms, res.present)
            if nonfinite(norms, res.present):
                bits |= NONFINITE_GRAD
                skipped = int("loss_scale" in scalars)
        if res.update_ratios is not None:
            params["update_ratio"] = np.asarray(to_numpy(res.update_ratios), dtype=np.float32)
        for k, v in res.params.items():
            params[k] = np.asarray(to_numpy(v), dtype=np.float32)
        flags = {"nonfinite": bits, "skipped": skipped, "lost": int(res.lost)}
        for k, v in res.flags.items():
            flags[k] = int(v) | (flags.get(k, 0) if k == "nonfinite" else 0)
        flags = {k: v for k, v in flags.items() if k in self.spec.flags}
        return StepValues(res.step, scalars, params, flags)

    def _capture_values(self, res: CaptureResult) -> CaptureValues:
        sp = self.spec
        P, R = len(sp.probes), sp.max_rank
        metrics = {k: np.full(P, np.nan) for k in sp.metrics}
        eig = np.full((P, R), np.nan)
        n_samples = np.zeros(P, dtype=np.int64)
        spectra = res.spectra or [None] * P
        grams = res.grams or [None] * P
        for i in range(P):
            s = host_spectrum(spectra[i])
            if s is not None:
                k = min(R, s.n_components)
                eig[i, :k] = s.eigenvalues[:k]
                n_samples[i] = s.n
            g = None if grams[i] is None else np.asarray(to_numpy(grams[i]), dtype=np.float64)
            inputs = ProbeInputs(s, g, sp.fit_range, R, resumed=not self._fresh, stage=res.stage)
            values: dict[str, float] = {}
            lost = False
            for stat in self._stats:
                per_probe = stat.per_probe
                assert per_probe is not None  # _stats keeps the statistics that have one
                with self.failures.guard("metric", f"{stat.name} of probe {sp.probes[i]!r} at step {res.step}") as done:
                    values.update(per_probe(inputs, self._state[stat.name][i]))
                lost = lost or done.failed
            res.lost += lost
            for name, v in values.items():
                if name in metrics:
                    metrics[name][i] = v
        mats = {k: np.asarray(to_numpy(v), dtype=np.float32) for k, v in res.matrices.items()}
        esd = mats.pop(WEIGHT_EIGENVALUES, None)
        sets = {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in res.sets.items()}
        return CaptureValues(res.step, metrics, eig, n_samples, mats, esd if self.spec.weight_rank else None, sets)


def host_spectrum(s: Spectrum | None) -> Spectrum | None:
    """The spectrum with float64 numpy eigenvalues (one host copy; metrics then run in numpy)."""
    if s is None:
        return None
    sv = s.singular_values
    return replace(
        s,
        eigenvalues=np.asarray(to_numpy(s.eigenvalues), dtype=np.float64),
        singular_values=None if sv is None else np.asarray(to_numpy(sv), dtype=np.float64),
        mean=None,
    )
