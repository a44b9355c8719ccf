"""Labels for segments of a RankMe / α-ReQ trajectory, after Li et al. 2025.

Li, Agrawal, Ghosh, Teru, Santoro, Lajoie, Richards, "Tracing the Representation Geometry of Language
Models from Pretraining to Post-training" (2025) describe three phases of pretraining: warmup collapse
(RankMe falls early), entropy-seeking (RankMe rises, α falls) and compression-seeking (RankMe falls
*and* α rises: anisotropic consolidation). The rules that name a phase — the table ``RULES``, the
tolerances, the minimum captures and the confidence formula — live in ``rules.py`` (printed by
``phasescope phases --explain``); this module finds the phases and applies them.

Two stages:

1. **Boundaries.** PELT pieces (small) get a direction each, on ln RankMe fitted over the piece
   (x = ln(1+step); a change Δ = slope·(x_last − x_first)): a piece's RankMe *trends* when its change
   is significant (|Δ| ≥ z·se) and ≥ half the tolerance. When RankMe is confidently flat
   (|Δ_r| + z·se < tolerance) α's move gives the direction, else the piece is flat. A large but noisy
   change leaves the piece undecided: it joins the neighbour it leans towards (the next one first), else
   counts as flat. Pieces are named (rising = entropy-seeking; falling = collapse before the first rise,
   compression after it; flat = stable), neighbours with equal names merge, and where RankMe turns the
   boundary moves to the turning point (the vertex of the best two-line fit: the new phase starts at the
   capture of the RankMe minimum / maximum), always leaving every phase ``MIN_CAPTURES`` captures.
   Trajectories too short for the change-point search to cut twice (< 3·MIN_CAPTURES captures, e.g. an
   offline sweep of 4–8 checkpoints) are also cut where RankMe turns by more than the tolerance on
   both sides (25.3 → 2.5 → 4.6 → 4.7 is a fall, then a rise — never one falling line).
2. **Labels.** Every phase is labelled afresh by the first matching row of ``RULES`` on its own fit,
   over its captures *and* the next phase's first capture (a phase runs from its start step to its end
   step inclusive): insufficient-data (< MIN_CAPTURES), collapse, entropy-seeking, compression-seeking,
   stable, else mixed. A stable first phase followed by the collapse is part of the warmup. Neighbours
   with equal labels merge and are labelled again until nothing changes. Each segment stores the rule
   that decided it (``rule``), the captures it was fitted over (``n_fit``) and the confidence of
   ``rules.CONFIDENCE_TEXT``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

from . import rules as R
from .rules import (
    COLLAPSE,
    COMPRESSION,
    DEFAULT_TOL,
    DEFAULT_Z,
    ENTROPY,
    INSUFFICIENT,
    MIN_CAPTURES,
    MIXED,
    STABLE,
)
from .segmentation import linear_fit
from .sparse import sparse_spans


@dataclass
class Segment:
    """One phase of one probe's trajectory (probe "model" is the median over probes).

    Steps are training steps; the segment runs from ``start_step`` (its first capture) to
    ``end_step`` (the first capture of the next segment, or its own last capture when it is the last:
    ``open_end``). Slopes are per unit of ln(1+step): ``slope_rankme`` = d ln RankMe/d ln(1+step),
    ``slope_alpha`` = dα/d ln(1+step), fitted over the ``n_fit`` captures from ``start_step`` to
    ``end_step`` inclusive (``n_points`` counts the segment's own captures: they sum to the trajectory's);
    ``rankme_start``/``rankme_end`` are RankMe at those two steps. NaN where a metric is unavailable.
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
    n_fit: int = 0  # captures the slopes are fitted over: its own + the next phase's first
    rule: str = ""  # which rule of rules.RULES decided the label, with the changes it saw
    probes_agree: float = math.nan  # model level: fraction of probes whose own slopes satisfy the rule
    stage: str = ""  # the training stage the phase lies in (``obs.stage``); "" in runs without stages

    def to_dict(self) -> dict:
        return asdict(self)


def _moves(delta: float, se: float, tol: float, z: float) -> int:
    """-1, 0 or +1: the direction of a change that is both larger than tol and significant."""
    if not math.isfinite(delta) or abs(delta) < tol:
        return 0
    if math.isfinite(se) and abs(delta) < z * se:
        return 0
    return 1 if delta > 0 else -1


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
    if abs(f.d_r) + z * se < tol["rankme"]:  # RankMe confidently flat: α alone may decide
        return -ma, mr, ma
    return 2 * (1 if f.d_r > 0 else -1), mr, ma  # undecided, leaning this way


def label_segments(
    probe: str,
    steps: np.ndarray,
    x: np.ndarray,
    lr: np.ndarray,
    al: np.ndarray | None,
    bkps: list[int],
    *,
    tol: dict | None = None,
    z: float = DEFAULT_Z,
    loss: callable | None = None,
    risen: bool = False,
) -> list[Segment]:
    """Label the segments [b_{j−1}, b_j) of one trajectory, then merge neighbours with equal labels.

    ``lr`` is ln RankMe (finite), ``al`` α (may hold NaN, or None), ``loss`` a function step → loss.
    ``risen``: the trajectory continues a training whose RankMe has already risen (a stage after the
    first), so no fall in it is the warmup collapse.
    """
    tol = {**DEFAULT_TOL, **(tol or {})}
    bounds = [0, *list(bkps)]
    pieces = list(itertools.pairwise(bounds))
    dirs = []
    for s_, e_ in pieces:
        dirs.append(_direction(_fit(x[s_:e_], lr[s_:e_], None if al is None else al[s_:e_]), tol, z)[0])
    # undecided pieces (a noisy stretch, e.g. the bottom of the collapse) join the neighbour they lean
    # towards, the next one first; otherwise they count as flat
    soft = np.zeros(len(lr), dtype=bool)  # captures in undecided pieces: boundaries there are soft
    for i, d in enumerate(dirs):
        if abs(d) == 2:
            soft[pieces[i][0] : pieces[i][1]] = True
            lean = d // 2
            nxt = dirs[i + 1] if i + 1 < len(dirs) else 0
            prv = dirs[i - 1] if i > 0 else 0
            dirs[i] = lean if (nxt == lean or prv == lean) else 0
    labels = _name(dirs, risen)
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
        labels = _name(dirs, risen)
        if len(labels) > 1 and labels[0] == STABLE and labels[1] == COLLAPSE:
            labels[0] = COLLAPSE
        merged = _merge([(m[0], m[1]) for m in merged], labels)
    merged = _turning_points(merged, x, lr, pieces, soft)
    spans = [(s_, e_) for s_, e_, _ in merged]
    if len(lr) < 3 * MIN_CAPTURES:  # too short for PELT to cut twice: cut where RankMe turns
        spans = sparse_spans(spans, lr, tol["rankme"])
    spans = _refine(spans, [p[0] for p in pieces], x, lr, al, tol, z, risen)
    return [
        _segment(probe, steps, x, lr, al, s_, e_, lab, rule, conf, loss)
        for s_, e_, lab, rule, conf in _final_labels(spans, x, lr, al, tol, z, risen)
    ]


def _refine(
    spans: list[tuple[int, int]], cuts: list[int], x, lr, al, tol: dict, z: float, risen: bool = False
) -> list[tuple[int, int]]:
    """Split a phase at one of its inner change points when the rules name the two sides differently
    (neither side mixed or insufficient): pieces that the boundary stage merged because each trended the
    same way at half the tolerance — e.g. the end of a rise and a plateau — are told apart on the full
    rules. A mixed side is split off only where α turns (rises beyond its tolerance on one side, falls on
    the other): α climbing while RankMe re-expands and then falling while RankMe goes on rising is two
    phases, not one entropy-seeking phase whose fitted α slope its endpoints contradict. Both sides need
    2·MIN_CAPTURES captures (the rounded bottom of a turn is not a stable phase); the cut kept is the one
    with the most confident pair of sides."""
    out: list[tuple[int, int]] = []
    after_rise = risen
    work = list(spans)
    while work:
        s, e = work.pop(0)
        f, n_fit = _phase_fit(s, e, x, lr, al)
        best = None
        for c in cuts:
            if not s < c < e:
                continue
            fl, nl = _phase_fit(s, c, x, lr, al)
            fr, nr = _phase_fit(c, e, x, lr, al)
            la, rl, al_a, cl = decide_phase(fl, nl, after_rise, tol, z)
            lb, _, al_b, cr = decide_phase(fr, nr, after_rise or rl == R.UP, tol, z)
            if la == lb or INSUFFICIENT in (la, lb) or min(nl, nr) < 2 * MIN_CAPTURES:
                continue
            # a mixed side is split off only at a turn of α (it rises, then falls, or the reverse, each
            # beyond its tolerance): one label over both would report an α slope its endpoints contradict
            if MIXED in (la, lb) and {al_a, al_b} != {R.UP, R.DOWN}:
                continue
            if best is None or cl * cr > best[0]:
                best = (cl * cr, c)
        if best is not None:
            work[:0] = [(s, best[1]), (best[1], e)]
            continue
        out.append((s, e))
        lab, r_dir, _, _ = decide_phase(f, n_fit, after_rise, tol, z)
        after_rise = after_rise or (lab != INSUFFICIENT and r_dir == R.UP)
    return out


def _closed(s: int, e: int, n: int) -> slice:
    """The captures a phase [s, e) is fitted over: its own and the next phase's first (shared)."""
    return slice(s, min(e + 1, n))


def _phase_fit(s: int, e: int, x: np.ndarray, lr: np.ndarray, al: np.ndarray | None) -> tuple[_Fit, int]:
    c = _closed(s, e, len(lr))
    return _fit(x[c], lr[c], None if al is None else al[c]), c.stop - c.start


def decide_phase(f: _Fit, n_fit: int, after_rise: bool, tol: dict, z: float) -> tuple[str, str, str, float]:
    """(label, RankMe direction, α direction, confidence) of one phase by ``rules.RULES``."""
    r_dir = R.rankme_direction(f.d_r, tol["rankme"])
    a_dir = R.alpha_direction(f.d_a, f.se_da, tol["alpha"], z)
    rule = R.decide(r_dir, a_dir, after_rise, n_fit)
    conf = R.confidence(rule.label, r_dir, a_dir, f.d_r, f.se_dr, f.d_a, f.se_da, tol)
    return rule.label, r_dir, a_dir, conf


def _final_labels(spans: list[tuple[int, int]], x, lr, al, tol: dict, z: float, risen: bool = False):
    """Label every phase by the rules on its own (closed) fit; merge equal neighbours; repeat until stable.
    Returns [(s, e, label, rule text, confidence)]."""
    for _ in range(len(spans) + 1):
        labs, rises, after_rise = [], [], risen  # rises[i]: had RankMe risen before phase i
        for s_, e_ in spans:
            f, n_fit = _phase_fit(s_, e_, x, lr, al)
            lab, r_dir, a_dir, conf = decide_phase(f, n_fit, after_rise, tol, z)
            labs.append((lab, r_dir, a_dir, f, n_fit, conf))
            rises.append(after_rise)
            after_rise = after_rise or (lab != INSUFFICIENT and r_dir == R.UP)
        names = [t[0] for t in labs]
        extra = [""] * len(spans)
        # the warmup: a first phase where RankMe stays flat (stable, or mixed because only α moved) and
        # then the collapse is one phase: the collapse rule does not use α
        if (
            len(names) > 1
            and names[1] == COLLAPSE
            and (names[0] == STABLE or (names[0] == MIXED and labs[0][1] == R.FLAT))
        ):
            names[0], extra[0] = COLLAPSE, R.WARMUP_TEXT
        absorbed = _absorb_noisy(spans, labs, rises, names, x, lr, al, tol, z)
        if absorbed is not None:
            spans = absorbed
            continue
        new: list[tuple[int, int]] = []
        new_names: list[str] = []
        for (s_, e_), lab in zip(spans, names):
            if new_names and lab != INSUFFICIENT and new_names[-1] == lab:
                new[-1] = (new[-1][0], e_)
            else:
                new.append((s_, e_))
                new_names.append(lab)
        merged_any = len(new) < len(spans)
        if not merged_any:
            out = []
            for (s_, e_), lab, t, ex in zip(spans, names, labs, extra):
                _, r_dir, a_dir, f, n_fit, conf = t
                if lab != t[0]:  # the warmup rule renamed it: score it as the label it now has
                    conf = R.confidence(lab, r_dir, a_dir, f.d_r, f.se_dr, f.d_a, f.se_da, tol)
                out.append((s_, e_, lab, R.rule_text(lab, r_dir, a_dir, f.d_r, f.d_a, n_fit, ex), conf))
            return out
        spans = new
    raise AssertionError("labels did not settle")


def _absorb_noisy(
    spans: list[tuple[int, int]], labs: list, rises: list[bool], names: list[str], x, lr, al, tol: dict, z: float
) -> list[tuple[int, int]] | None:
    """Join a short phase whose label rests on noise to a longer neighbour: the phase has fewer than
    2·MIN_CAPTURES captures, its α changed by at least the tolerance yet counts as flat only because of its
    standard error, and the two together are labelled as the neighbour is. (Four captures at the bottom
    of the collapse, α 2.1 → 2.6 too noisy to call, were 'entropy-seeking' between the collapse and a
    mixed rise with α climbing.) Neither may be the collapse. ``rises[i]``: RankMe rose before phase i.
    The new spans, or None."""
    for i, (_lab, _, a_dir, f, n_fit, _) in enumerate(labs):
        noisy = a_dir == R.FLAT and math.isfinite(f.d_a) and abs(f.d_a) >= tol["alpha"]
        if n_fit >= 2 * MIN_CAPTURES or not noisy or names[i] in (INSUFFICIENT, COLLAPSE):
            continue
        for j in (i + 1, i - 1):
            if not 0 <= j < len(spans) or names[j] in (INSUFFICIENT, COLLAPSE) or labs[j][4] <= n_fit:
                continue
            lo, hi = min(i, j), max(i, j)
            fu, nu = _phase_fit(spans[lo][0], spans[hi][1], x, lr, al)
            if decide_phase(fu, nu, rises[lo], tol, z)[0] == names[j]:
                return [*spans[:lo], (spans[lo][0], spans[hi][1]), *spans[hi + 1 :]]
    return None


def _segment(probe, steps, x, lr, al, s: int, e: int, lab: str, rule: str, conf: float, loss) -> Segment:
    n = len(steps)
    f, n_fit = _phase_fit(s, e, x, lr, al)
    c = _closed(s, e, n)
    a_seg = al[c] if al is not None else np.array([])
    a_fin = a_seg[np.isfinite(a_seg)]
    start, end = int(steps[s]), int(steps[e] if e < n else steps[n - 1])
    return Segment(
        probe=probe,
        label=lab,
        start_step=start,
        end_step=end,
        open_end=e >= n,
        n_points=e - s,
        slope_rankme=f.s_r,
        slope_rankme_se=f.se_r,
        slope_alpha=f.s_a,
        slope_alpha_se=f.se_a,
        change_rankme=f.d_r,
        change_alpha=f.d_a,
        rankme_start=float(np.exp(lr[c.start])),
        rankme_end=float(np.exp(lr[c.stop - 1])),
        alpha_start=float(a_fin[0]) if len(a_fin) else math.nan,
        alpha_end=float(a_fin[-1]) if len(a_fin) else math.nan,
        confidence=conf,
        loss_start=loss(start) if loss else math.nan,
        loss_end=loss(end) if loss else math.nan,
        n_fit=n_fit,
        rule=rule,
    )


def _name(dirs: list[int], risen: bool = False) -> list[str]:
    """Directions → labels: rising = entropy-seeking; falling = collapse before the first entropy-seeking
    phase (of the training: ``risen`` when an earlier stage had one), compression-seeking after it; flat =
    stable."""
    out, seen_entropy = [], risen
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


def _turning_points(
    merged: list[tuple[int, int, str]], x: np.ndarray, lr: np.ndarray, pieces: list[tuple[int, int]], soft: np.ndarray
) -> list[tuple[int, int, str]]:
    """Where RankMe turns (falling → entropy-seeking, entropy-seeking → compression-seeking), put the
    boundary at the vertex of the best continuous two-line (hinge) fit of ln RankMe over the PELT
    pieces on either side of it (widened over undecided pieces), among vertices where the two lines
    do turn, keeping MIN_CAPTURES captures per phase. PELT's pieces are discontinuous lines, which can place
    the cut a capture or two off a rounded (U-shaped) bottom; the hinge puts it at the turn."""
    starts = [p[0] for p in pieces]
    out = list(merged)
    for i in range(len(out) - 1):
        (s, m, a), (_, e, b) = out[i], out[i + 1]
        if b == ENTROPY and a in (COLLAPSE, COMPRESSION):
            turn = -1  # a minimum: falling, then rising
        elif a == ENTROPY and b == COMPRESSION:
            turn = +1
        else:
            continue
        j = int(np.searchsorted(starts, m))  # piece starting at m
        lo_p, hi_p = j - 1, j
        while lo_p > 0 and soft[pieces[lo_p - 1][0]] and pieces[lo_p - 1][0] >= s:
            lo_p -= 1
        while hi_p + 1 < len(pieces) and soft[pieces[hi_p + 1][0]] and pieces[hi_p + 1][1] <= e:
            hi_p += 1
        lo, hi = max(s, pieces[lo_p][0]), min(e, pieces[hi_p][1])
        best = None
        # every phase keeps MIN_CAPTURES captures: [s, k] closed, and [k, e] (or [k, n) for the last one)
        k_max = e - MIN_CAPTURES if e >= len(x) else e - MIN_CAPTURES + 1
        for k in range(max(lo + 1, s + MIN_CAPTURES - 1), min(hi - 1, k_max) + 1):
            ssr, b1, b2 = _hinge_ssr(x[lo:hi], lr[lo:hi], k - lo)
            if turn * b1 > 0 > turn * b2 and (best is None or ssr < best[0]):
                best = (ssr, k)
        if best is not None and best[1] != m:
            k = best[1]
            out[i], out[i + 1] = (s, k, a), (k, e, b)
    return out


def insufficient(probe: str, steps: np.ndarray) -> Segment:
    """The single segment of a trajectory too short to segment or label (fewer than MIN_CAPTURES)."""
    nan = math.nan
    start = int(steps[0]) if len(steps) else 0
    end = int(steps[-1]) if len(steps) else 0
    n = len(steps)
    return Segment(
        probe,
        INSUFFICIENT,
        start,
        end,
        True,
        n,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        0.0,
        n_fit=n,
        rule=R.rule_text(INSUFFICIENT, R.MISSING, R.MISSING, nan, nan, n),
    )
