"""Labels for segments of a RankMe / α-ReQ trajectory, after Li et al. 2025.

Li, Agrawal, Ghosh, Teru, Santoro, Lajoie, Richards, "Tracing the Representation Geometry of Language
Models from Pretraining to Post-training" (2025) describe three phases of pretraining:

* **warmup / collapse** – at the start, RankMe falls sharply (representations collapse onto few
  directions while the learning rate warms up);
* **entropy-seeking** – RankMe rises and α-ReQ falls: the representation spreads its variance over
  more directions (the eigenspectrum flattens);
* **compression-seeking** – RankMe falls and α-ReQ rises: variance concentrates on the leading
  directions (anisotropic consolidation, a steeper eigenspectrum).

We add **stable** (RankMe moves less than its tolerance, and α does not decide).

Per segment we fit, by least squares over the segment's captures (x = ln(1+step)),
    ln RankMe ≈ a_r + s_r x        (so s_r = d ln RankMe / d ln(1+step): RankMe ∝ (1+step)^{s_r})
    α         ≈ a_α + s_α x        (s_α = dα / d ln(1+step))
and call the changes over the segment Δ_r = s_r·(x_last − x_first) (a log ratio; 0.1 ≈ 10 %) and
Δ_α = s_α·(x_last − x_first). A metric *moves* when |Δ| ≥ its tolerance and |Δ| ≥ z·se(Δ).

Rules, in order (PELT pieces are small; phases are runs of pieces):
1. A piece's direction is RankMe's when its change is significant and ≥ half the tolerance. When RankMe
   is confidently flat (|Δ_r| + z·se < tolerance), α decides if it moves (rising α = compression),
   else the piece is flat. Otherwise (a large but noisy change) the piece is undecided and joins the
   neighbour it leans towards (the next one first), else counts as flat.
2. Rising = entropy-seeking; falling = collapse before the first entropy-seeking phase, compression-
   seeking after it; flat = stable. A stable start followed by the collapse is part of the warmup.
3. Neighbours with equal labels merge; a merged phase whose RankMe moves less than the tolerance
   (and that α did not decide) becomes stable, and labels are merged again.
4. Where RankMe turns (falling → entropy-seeking, entropy-seeking → compression-seeking) the boundary
   moves to the turning point: the new phase starts at the capture of the RankMe minimum (maximum).

Confidence (a heuristic in [0, 1], documented so it can be read): for a moving segment,
erf(|Δ|/(√2 se)) of the deciding metric (the two-sided significance of its slope; 0.5 when se is
unknown) times 1 if α moves the expected way (falling in entropy-seeking, rising in
compression-seeking; collapse is defined by RankMe alone), 0.8 if α is flat or missing, 0.5 if it
moves against; for a stable segment
1 − ½·max(|Δ|/tolerance) over the metrics.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .segmentation import linear_fit

COLLAPSE = "collapse"
ENTROPY = "entropy-seeking"
COMPRESSION = "compression-seeking"
STABLE = "stable"
INSUFFICIENT = "insufficient-data"
LABELS = (COLLAPSE, ENTROPY, COMPRESSION, STABLE, INSUFFICIENT)
LABEL_TEXT = {COLLAPSE: "warmup collapse", ENTROPY: "entropy-seeking", COMPRESSION: "compression-seeking",
              STABLE: "stable", INSUFFICIENT: "insufficient data"}

DEFAULT_TOL = {"rankme": 0.1, "alpha": 0.1}   # |Δ ln RankMe| ≈ 10 %, |Δα| = 0.1
DEFAULT_Z = 2.0


@dataclass
class Segment:
    """One phase of one probe's trajectory (probe "model" is the median over probes).

    Steps are training steps; the segment runs from ``start_step`` (its first capture) to
    ``end_step`` (the first capture of the next segment, or its own last capture when it is the last:
    ``open_end``). Slopes are per unit of ln(1+step): ``slope_rankme`` = d ln RankMe/d ln(1+step),
    ``slope_alpha`` = dα/d ln(1+step). NaN where a metric is unavailable.
    """

    probe: str
    label: str
    start_step: int
    end_step: int
    open_end: bool
    n_points: int
    slope_rankme: float
    slope_rankme_se: float
    slope_alpha: float
    slope_alpha_se: float
    change_rankme: float
    change_alpha: float
    rankme_start: float
    rankme_end: float
    alpha_start: float
    alpha_end: float
    confidence: float
    loss_start: float = math.nan
    loss_end: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def _moves(delta: float, se: float, tol: float, z: float) -> int:
    """-1, 0 or +1: the direction of a change that is both larger than tol and significant."""
    if not math.isfinite(delta) or abs(delta) < tol:
        return 0
    if math.isfinite(se) and abs(delta) < z * se:
        return 0
    return 1 if delta > 0 else -1


def _significance(delta: float, se: float) -> float:
    if not math.isfinite(se):
        return 0.5
    if se == 0:
        return 1.0
    return math.erf(abs(delta) / (math.sqrt(2) * se))


@dataclass
class _Fit:
    s_r: float
    se_r: float
    s_a: float
    se_a: float
    d_r: float
    d_a: float
    se_dr: float
    se_da: float


def _fit(x: np.ndarray, lr: np.ndarray, al: np.ndarray | None) -> _Fit:
    span = float(x[-1] - x[0]) if len(x) else 0.0
    s_r, se_r, _ = linear_fit(x, lr)
    if al is not None and np.isfinite(al).sum() >= 2:
        s_a, se_a, _ = linear_fit(x, al)
        fin = np.isfinite(al)
        span_a = float(x[fin][-1] - x[fin][0])
    else:
        s_a = se_a = math.nan
        span_a = 0.0
    return _Fit(s_r, se_r, s_a, se_a, s_r * span, s_a * span_a, se_r * span, se_a * span_a)


def _direction(f: _Fit, tol: dict, z: float) -> tuple[int, int, int]:
    """(direction, rankme move, alpha move) of one PELT piece, before merging.

    direction +1 = RankMe rising, −1 = falling, 0 = flat, None-like 2·sign = undecided (see module doc).
    A piece's RankMe *trends* when its change is significant and at least half the tolerance (pieces
    are merged into phases afterwards and the full tolerance is applied to the phase).
    """
    mr = _moves(f.d_r, f.se_dr, tol["rankme"], z)
    ma = _moves(f.d_a, f.se_da, tol["alpha"], z)
    trend = _moves(f.d_r, f.se_dr, tol["rankme"] / 2, z)
    if trend:
        return trend, mr, ma
    se = f.se_dr if math.isfinite(f.se_dr) else 0.0
    if abs(f.d_r) + z * se < tol["rankme"]:      # RankMe confidently flat: α alone may decide
        return -ma, mr, ma
    return 2 * (1 if f.d_r > 0 else -1), mr, ma  # undecided, leaning this way


def _confidence(label: str, f: _Fit, mr: int, ma: int, tol: dict) -> float:
    if label == STABLE:
        ratios = [abs(f.d_r) / tol["rankme"]]
        if math.isfinite(f.d_a):
            ratios.append(abs(f.d_a) / tol["alpha"])
        return 1.0 - 0.5 * min(1.0, max(ratios))
    expected_alpha = {COMPRESSION: +1, ENTROPY: -1}.get(label, 0)   # collapse is defined by RankMe alone
    if mr:
        base = _significance(f.d_r, f.se_dr)
        agree = 1.0 if expected_alpha == 0 else 0.8 if ma == 0 else 1.0 if ma == expected_alpha else 0.5
    else:   # α decided, alone or confirming an unsure RankMe move
        base = _significance(f.d_a, f.se_da) * 0.8
        agree = 1.0 if abs(f.d_r) < tol["rankme"] else _significance(f.d_r, f.se_dr) + 0.5 * (1 - _significance(f.d_r, f.se_dr))
    return float(base * agree)


def label_segments(probe: str, steps: np.ndarray, x: np.ndarray, lr: np.ndarray, al: np.ndarray | None,
                   bkps: list[int], *, tol: dict | None = None, z: float = DEFAULT_Z,
                   loss: "callable | None" = None) -> list[Segment]:
    """Label the segments [b_{j−1}, b_j) of one trajectory, then merge neighbours with equal labels.

    ``lr`` is ln RankMe (finite), ``al`` α (may hold NaN, or None), ``loss`` a function step → loss.
    """
    tol = {**DEFAULT_TOL, **(tol or {})}
    bounds = [0] + list(bkps)
    pieces = list(zip(bounds[:-1], bounds[1:]))
    dirs = []
    for s_, e_ in pieces:
        dirs.append(_direction(_fit(x[s_:e_], lr[s_:e_], None if al is None else al[s_:e_]), tol, z)[0])
    # undecided pieces (a noisy stretch, e.g. the bottom of the collapse) join the neighbour they lean
    # towards, the next one first; otherwise they count as flat
    soft = np.zeros(len(lr), dtype=bool)      # captures in undecided pieces: boundaries there are soft
    for i, d in enumerate(dirs):
        if abs(d) == 2:
            soft[pieces[i][0]:pieces[i][1]] = True
            lean = d // 2
            nxt = dirs[i + 1] if i + 1 < len(dirs) else 0
            prv = dirs[i - 1] if i > 0 else 0
            dirs[i] = lean if (nxt == lean or prv == lean) else 0
    labels = _name(dirs)
    # warmup: a flat start (learning rate still tiny) followed by the collapse is part of the warmup phase
    if len(labels) > 1 and labels[0] == STABLE and labels[1] == COLLAPSE:
        labels[0] = COLLAPSE
    merged = _merge(pieces, labels)
    # a merged phase whose RankMe moves less than the tolerance (and α does not decide) is stable
    relabel = []
    for s_, e_, lab in merged:
        f = _fit(x[s_:e_], lr[s_:e_], None if al is None else al[s_:e_])
        d, mr, ma = _direction(f, tol, z)
        flat = abs(f.d_r) < tol["rankme"] and not (abs(d) == 1 and mr == 0 and ma != 0)
        relabel.append(STABLE if lab != STABLE and flat else lab)
    if relabel != [m[2] for m in merged]:
        dirs = [{ENTROPY: 1, STABLE: 0}.get(lab, -1) for lab in relabel]
        labels = _name(dirs)
        if len(labels) > 1 and labels[0] == STABLE and labels[1] == COLLAPSE:
            labels[0] = COLLAPSE
        merged = _merge([(m[0], m[1]) for m in merged], labels)
    merged = _turning_points(merged, x, lr, pieces, soft)
    n = len(steps)
    out = []
    for s, e, lab in merged:
        f = _fit(x[s:e], lr[s:e], None if al is None else al[s:e])
        _, mr, ma = _direction(f, tol, z)
        a_seg = al[s:e] if al is not None else None
        a_fin = a_seg[np.isfinite(a_seg)] if a_seg is not None else np.array([])
        start, end = int(steps[s]), int(steps[e] if e < n else steps[n - 1])
        out.append(Segment(
            probe=probe, label=lab, start_step=start, end_step=end, open_end=e >= n, n_points=e - s,
            slope_rankme=f.s_r, slope_rankme_se=f.se_r, slope_alpha=f.s_a, slope_alpha_se=f.se_a,
            change_rankme=f.d_r, change_alpha=f.d_a,
            rankme_start=float(np.exp(lr[s])), rankme_end=float(np.exp(lr[e - 1])),
            alpha_start=float(a_fin[0]) if len(a_fin) else math.nan,
            alpha_end=float(a_fin[-1]) if len(a_fin) else math.nan,
            confidence=_confidence(lab, f, mr, ma, tol),
            loss_start=loss(start) if loss else math.nan, loss_end=loss(end) if loss else math.nan,
        ))
    return out


def _name(dirs: list[int]) -> list[str]:
    """Directions → labels: rising = entropy-seeking; falling = collapse before the first entropy-seeking
    phase, compression-seeking after it; flat = stable."""
    out, seen_entropy = [], False
    for d in dirs:
        if d > 0:
            seen_entropy = True
            out.append(ENTROPY)
        elif d < 0:
            out.append(COMPRESSION if seen_entropy else COLLAPSE)
        else:
            out.append(STABLE)
    return out


def _merge(pieces: list[tuple[int, int]], labels: list[str]) -> list[tuple[int, int, str]]:
    """Join neighbours with equal labels: a curved rise cut in two is still one entropy-seeking phase."""
    merged: list[tuple[int, int, str]] = []
    for (s, e), lab in zip(pieces, labels):
        if merged and merged[-1][2] == lab:
            merged[-1] = (merged[-1][0], e, lab)
        else:
            merged.append((s, e, lab))
    return merged


def _hinge_ssr(x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float, float]:
    """Least squares y ≈ a + b₁·min(x − x_k, 0) + b₂·max(x − x_k, 0) (two lines meeting at x_k):
    returns (SSR, b₁, b₂)."""
    X = np.column_stack([np.ones_like(x), np.minimum(x - x[k], 0), np.maximum(x - x[k], 0)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(((y - X @ coef) ** 2).sum()), float(coef[1]), float(coef[2])


def _turning_points(merged: list[tuple[int, int, str]], x: np.ndarray, lr: np.ndarray,
                    pieces: list[tuple[int, int]], soft: np.ndarray) -> list[tuple[int, int, str]]:
    """Where RankMe turns (falling → entropy-seeking, entropy-seeking → compression-seeking), put the
    boundary at the vertex of the best continuous two-line (hinge) fit of ln RankMe over the PELT
    pieces on either side of it (widened over undecided pieces), among vertices where the two lines
    do turn, keeping two captures per phase. PELT's pieces are discontinuous lines, which can place
    the cut a capture or two off a rounded (U-shaped) bottom; the hinge puts it at the turn."""
    starts = [p[0] for p in pieces]
    out = list(merged)
    for i in range(len(out) - 1):
        (s, m, a), (_, e, b) = out[i], out[i + 1]
        if b == ENTROPY and a in (COLLAPSE, COMPRESSION):
            turn = -1     # a minimum: falling, then rising
        elif a == ENTROPY and b == COMPRESSION:
            turn = +1
        else:
            continue
        j = int(np.searchsorted(starts, m))             # piece starting at m
        lo_p, hi_p = j - 1, j
        while lo_p > 0 and soft[pieces[lo_p - 1][0]] and pieces[lo_p - 1][0] >= s:
            lo_p -= 1
        while hi_p + 1 < len(pieces) and soft[pieces[hi_p + 1][0]] and pieces[hi_p + 1][1] <= e:
            hi_p += 1
        lo, hi = max(s, pieces[lo_p][0]), min(e, pieces[hi_p][1])
        best = None
        for k in range(max(lo + 1, s + 2), min(hi - 1, e - 2) + 1):
            ssr, b1, b2 = _hinge_ssr(x[lo:hi], lr[lo:hi], k - lo)
            if turn * b1 > 0 > turn * b2 and (best is None or ssr < best[0]):
                best = (ssr, k)
        if best is not None and best[1] != m:
            k = best[1]
            out[i], out[i + 1] = (s, k, a), (k, e, b)
    return out


def insufficient(probe: str, steps: np.ndarray) -> Segment:
    """The single segment of a trajectory too short to segment or label (fewer than 3 captures)."""
    nan = math.nan
    start = int(steps[0]) if len(steps) else 0
    end = int(steps[-1]) if len(steps) else 0
    return Segment(probe, INSUFFICIENT, start, end, True, len(steps), nan, nan, nan, nan, nan, nan,
                   nan, nan, nan, nan, 0.0)
