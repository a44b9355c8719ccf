"""Phase detection: segment RankMe / α-ReQ trajectories into the phases of training and explain them.

    result = detect_phases(ds)            # ds: a run as an xarray Dataset (rankme, alpha over capture_step × probe)
    print(result.summary())               # "model: warmup collapse from step 0 to 40, entropy-seeking from 40 on."
    result.to_records(); result.events(); result.lags(); result.to_dataset()

Method (details and formulas in ``segmentation`` and ``label``; ``detect`` runs it, ``result`` holds it):

1. Per probe, take the captures where RankMe is finite and map steps to x = ln(1 + step) (step 0, the
   initialisation, sits at x = 0; ln step would send it to −∞).
2. Channels: ln RankMe (RankMe changes multiplicatively), α-ReQ, and any further metric asked for
   (ln of positive "size" metrics such as participation_ratio, stable_rank). α may be NaN at some captures
   (too few eigenvalues for the fit range): isolated gaps are filled by linear interpolation in x for
   segmentation only; when α is missing at half of the captures or more, RankMe segments alone.
3. PELT (``ruptures``) finds the piecewise-linear fit over x with a BIC penalty (2d+1)·ln n per
   breakpoint, in units of each channel's robustly estimated noise (``penalty`` overrides it).
4. Each segment is labelled after Li et al. 2025 by the table ``rules.RULES`` — warmup collapse,
   entropy-seeking (RankMe ↑, α ↓ or flat), compression-seeking (RankMe ↓ and α ↑), stable, mixed (the
   slopes match no label) or insufficient-data (< 3 captures) — and neighbours with the same label are
   merged. ``explain()`` (``phasescope phases --explain``) prints the rules and the confidence formula.
5. The model-level trajectory is, at each capture, the median over probes of each probe's ln RankMe and
   α relative to its own median level (plus the median level), treated the same way (probe name
   ``"model"``); a model phase that fewer than half of the probes' own slopes support becomes mixed.
   Events are the steps where a label changes; lags compare when each probe enters a phase and whether
   deeper layers go first (Spearman ρ of onset step against depth).

An optional cross-check, a Gaussian HMM over the same channels with the number of states chosen by BIC
(Hu et al. 2023, "Latent State Models of Training Dynamics"), lives in ``hmm``.
"""

from __future__ import annotations

from .detect import LOG_METRICS, MIN_POINTS, detect_phases, trajectory_phases
from .label import (
    COLLAPSE,
    COMPRESSION,
    DEFAULT_TOL,
    DEFAULT_Z,
    ENTROPY,
    INSUFFICIENT,
    STABLE,
    Segment,
    insufficient,
    label_segments,
)
from .result import MODEL, Event, PhaseResult
from .rules import LABEL_TEXT, LABELS, MIN_CAPTURES, MIXED, RULES, RULES_VERSION, Rule, explain
from .segmentation import DEFAULT_MIN_EFFECT, DEFAULT_MIN_SIZE, log_step, segment
from .stages import stage_summary, stage_table

__all__ = [
    "COLLAPSE",
    "COMPRESSION",
    "DEFAULT_MIN_EFFECT",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_TOL",
    "DEFAULT_Z",
    "ENTROPY",
    "INSUFFICIENT",
    "LABELS",
    "LABEL_TEXT",
    "LOG_METRICS",
    "MIN_CAPTURES",
    "MIN_POINTS",
    "MIXED",
    "MODEL",
    "RULES",
    "RULES_VERSION",
    "STABLE",
    "Event",
    "PhaseResult",
    "Rule",
    "Segment",
    "detect_phases",
    "explain",
    "insufficient",
    "label_segments",
    "log_step",
    "segment",
    "stage_summary",
    "stage_table",
    "trajectory_phases",
]
