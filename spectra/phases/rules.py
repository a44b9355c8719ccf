"""The phase-labelling rules in one place: a table, the tolerances, the minimum captures and the confidence.

Everything that states how a phase is labelled reads from here: the labeller (``label.py``) applies
``RULES`` in order, ``phasescope phases --explain`` prints :func:`explain`, the dashboard's hover text
shows each segment's stored ``rule`` (written by :func:`rule_text`), and docs/phases.md repeats
:func:`explain`'s text.

Per phase we fit, by least squares over the phase's captures — its own and the first capture of the next
phase, which both phases share (a phase runs from its start step to its end step inclusive) —

    ln RankMe ≈ a + s_r · ln(1+step)        α ≈ b + s_α · ln(1+step)

and take the changes over the phase, Δr = s_r·(x_last − x_first) (a log ratio: 0.1 ≈ 10 %) and Δα, with
their standard errors se(Δ). Each metric gets a direction:

* RankMe **rises** / **falls** when |Δr| ≥ tol_r (0.1); otherwise it is **flat**. (The change-point
  segmentation already judged that the phase is there; the slope's significance enters the confidence.)
* α **rises** / **falls** when |Δα| ≥ tol_α (0.1) *and* |Δα| ≥ z·se(Δα) (z = 2); otherwise it is
  **flat**; **missing** when the phase has fewer than 2 finite α values. α is noisier: it confirms or
  contradicts, it never decides alone.

Li, Agrawal, Ghosh, Teru, Santoro, Lajoie, Richards (2025), "Tracing the Representation Geometry of
Language Models from Pretraining to Post-training": warmup collapse (RankMe falls early), entropy-seeking
(RankMe rises, α falls: variance spreads over more directions) and compression-seeking (RankMe falls
*and* α rises: anisotropic consolidation onto the leading directions).
"""

from __future__ import annotations

import math
import textwrap
from typing import NamedTuple

COLLAPSE = "collapse"
ENTROPY = "entropy-seeking"
COMPRESSION = "compression-seeking"
STABLE = "stable"
MIXED = "mixed"
INSUFFICIENT = "insufficient-data"
LABELS = (COLLAPSE, ENTROPY, COMPRESSION, STABLE, MIXED, INSUFFICIENT)
LABEL_TEXT = {
    COLLAPSE: "warmup collapse",
    ENTROPY: "entropy-seeking",
    COMPRESSION: "compression-seeking",
    STABLE: "stable",
    MIXED: "mixed",
    INSUFFICIENT: "insufficient data",
}

DEFAULT_TOL = {"rankme": 0.1, "alpha": 0.1}  # |Δ ln RankMe| ≈ 10 %, |Δα| = 0.1
DEFAULT_Z = 2.0
MIN_CAPTURES = 3  # captures a phase is fitted over (its own + the shared boundary capture)
RULES_VERSION = 3  # bump when a rule changes: stored results computed under another version are redone

UP, DOWN, FLAT, MISSING = "rises", "falls", "flat", "missing"
ANY = frozenset({UP, DOWN, FLAT, MISSING})


class Rule(NamedTuple):
    """One row of the table: ``label`` applies when RankMe's direction is in ``rankme``, α's in ``alpha``
    and the phase's position fits ``when`` ("before-rise": no earlier phase of this trajectory had RankMe
    rising; "after-rise": one had; "any")."""

    label: str
    rankme: frozenset
    alpha: frozenset
    when: str
    text: str


RULES: tuple[Rule, ...] = (
    Rule(INSUFFICIENT, ANY, ANY, "any", f"fewer than {MIN_CAPTURES} captures: too few to fit a slope with an error"),
    Rule(
        COLLAPSE,
        frozenset({DOWN}),
        ANY,
        "before-rise",
        "RankMe falls before it has first risen (warmup collapse; α is not used)",
    ),
    Rule(
        ENTROPY,
        frozenset({UP}),
        frozenset({DOWN, FLAT, MISSING}),
        "any",
        "RankMe rises and α falls or stays flat (the spectrum flattens)",
    ),
    Rule(
        COMPRESSION,
        frozenset({DOWN}),
        frozenset({UP, MISSING}),
        "after-rise",
        "RankMe falls after it has risen and α rises (anisotropic consolidation); with α missing RankMe decides alone",
    ),
    Rule(
        STABLE, frozenset({FLAT}), frozenset({FLAT, MISSING}), "any", "neither RankMe nor α moves beyond its tolerance"
    ),
    Rule(
        MIXED,
        ANY,
        ANY,
        "any",
        "the slopes match no rule above (e.g. RankMe falls while α falls after the rise, "
        "RankMe rises while α rises, or α moves while RankMe is flat)",
    ),
)
RULE_BY_LABEL = {r.label: r for r in RULES}

WARMUP_TEXT = (
    "a first phase in which RankMe stays flat (stable, or mixed because only α moves) followed by the "
    "collapse is part of the warmup (the learning rate is still small) and joins it"
)
MERGE_TEXT = (
    "neighbouring phases with the same label merge (and are fitted again); a phase's start is "
    "moved to the RankMe minimum (maximum) where RankMe turns; a phase is split at a change point "
    "where α turns (rises beyond its tolerance on one side and falls on the other), even when one side "
    f"is then mixed; a phase of fewer than {2 * MIN_CAPTURES} captures whose α moved by its tolerance but too "
    "noisily to call joins a longer neighbour (not the collapse) when the two together get the "
    f"neighbour's label; every phase keeps at least "
    f"{MIN_CAPTURES} captures, shorter pieces are insufficient-data; a trajectory too short for the "
    f"change-point search to cut twice (< {3 * MIN_CAPTURES} captures) is also cut where RankMe "
    "turns by at least its tolerance on both sides"
)
MODEL_TEXT = (
    "model level: at each capture the median over probes of each probe's ln RankMe (and α) relative "
    "to its own median level, plus the median level, labelled by the same rules; a model phase "
    "whose RankMe and α conditions fewer than half of the probes' own slopes over the same steps "
    "satisfy becomes mixed (its rule says how many probes agree)"
)

STAGES_TEXT = (
    "stages (obs.stage: pretraining, SFT, DPO, RLVR): each stage is segmented and labelled on its own, "
    "over ln(1 + step − its first step); a phase never spans two stages; a stage that begins after step 0 "
    "counts as after-rise (the training's RankMe rose before it), so a fall in it is compression-seeking "
    "or mixed, never the warmup collapse"
)

CONFIDENCE_TEXT = (
    "confidence = product over the rule's conditions of a score in [0, 1] computed from the fit:\n"
    "  moves (rises/falls):  sig(Δ) = erf(|Δ| / (√2·se(Δ)))  (0.5 when se is unknown, 1 when se = 0)\n"
    "  flat:                 1 − ½·min(1, |Δ| / tol)\n"
    "  falls or flat (α in entropy-seeking): the score of what it does\n"
    "  missing α where the rule would use it: 0.5 (stable: 1);  α not used (collapse): 1\n"
    "  mixed: the product of both metrics' scores for what they do;  insufficient-data: 0\n"
    "  model level made mixed because the probes disagree: 1 − the fraction of probes that agree"
)


def alpha_direction(d_a: float, se_da: float, tol: float, z: float) -> str:
    if not math.isfinite(d_a):
        return MISSING
    if abs(d_a) < tol or (math.isfinite(se_da) and abs(d_a) < z * se_da):
        return FLAT
    return UP if d_a > 0 else DOWN


def rankme_direction(d_r: float, tol: float) -> str:
    if not math.isfinite(d_r) or abs(d_r) < tol:
        return FLAT
    return UP if d_r > 0 else DOWN


def decide(r_dir: str, a_dir: str, after_rise: bool, n_captures: int) -> Rule:
    """The first rule of ``RULES`` whose conditions hold (``mixed`` matches anything that is left)."""
    for rule in RULES:
        if rule.label == INSUFFICIENT:
            if n_captures < MIN_CAPTURES:
                return rule
            continue
        if r_dir not in rule.rankme or a_dir not in rule.alpha:
            continue
        if (rule.when == "before-rise" and after_rise) or (rule.when == "after-rise" and not after_rise):
            continue
        return rule
    raise AssertionError("the mixed rule matches everything")


def significance(delta: float, se: float) -> float:
    if not math.isfinite(delta):
        return 0.0
    if not math.isfinite(se):
        return 0.5
    if se == 0:
        return 1.0
    return math.erf(abs(delta) / (math.sqrt(2) * se))


def flatness(delta: float, tol: float) -> float:
    return 1.0 - 0.5 * min(1.0, abs(delta) / tol) if math.isfinite(delta) else 1.0


def _score(direction: str, delta: float, se: float, tol: float) -> float:
    if direction == MISSING:
        return 0.5
    if direction == FLAT:
        return flatness(delta, tol)
    return significance(delta, se)


def confidence(
    label: str, r_dir: str, a_dir: str, d_r: float, se_dr: float, d_a: float, se_da: float, tol: dict
) -> float:
    """The formula of ``CONFIDENCE_TEXT``."""
    if label == INSUFFICIENT:
        return 0.0
    r = _score(r_dir, d_r, se_dr, tol["rankme"])
    if label == COLLAPSE:
        return float(r)
    a = _score(a_dir, d_a, se_da, tol["alpha"])
    if label == STABLE and a_dir == MISSING:
        a = 1.0
    return float(r * a)


def _fmt(v: float, spec: str) -> str:
    return format(v, spec) if math.isfinite(v) else "n/a"


def rule_text(label: str, r_dir: str, a_dir: str, d_r: float, d_a: float, n_captures: int, extra: str = "") -> str:
    """One line saying which rule decided a phase and with what: stored with the segment (``rule``)."""
    rule = RULE_BY_LABEL[label]
    if label == INSUFFICIENT:
        head = f"{n_captures} capture{'s' if n_captures != 1 else ''}, fewer than {MIN_CAPTURES}"
    else:
        head = f"RankMe {r_dir} (Δln R {_fmt(d_r, '+.3f')}), α {a_dir} (Δα {_fmt(d_a, '+.3f')})"
    return f"{LABEL_TEXT[label]}: {head} — rule: {rule.text}" + (f"; {extra}" if extra else "")


def _dirs(allowed: frozenset) -> str:
    return "any" if allowed == ANY else "/".join(d for d in (UP, DOWN, FLAT, MISSING) if d in allowed)


def explain(tol: dict | None = None, z: float = DEFAULT_Z, min_captures: int = MIN_CAPTURES) -> str:
    """The rules, tolerances, minimum captures and confidence formula as text (``phases --explain``)."""
    tol = {**DEFAULT_TOL, **(tol or {})}
    lines = [
        "How phasescope labels phases (Li et al. 2025: warmup collapse, entropy-seeking, compression-seeking)",
        "",
        "Per phase: least-squares lines of ln RankMe and of alpha against ln(1+step) over the phase's captures",
        "(its own and the next phase's first capture, which both share); dR = change of ln RankMe over the",
        "phase (0.1 ~ 10 %), dA = change of alpha; se = their standard errors.",
        f"  RankMe rises/falls when |dR| >= {tol['rankme']:g}, else flat.",
        f"  alpha rises/falls when |dA| >= {tol['alpha']:g} and |dA| >= z*se (z = {z:g}), else flat;",
        "  missing when the phase has fewer than 2 alpha values.",
        f"  Minimum captures per phase: {min_captures}.",
        "",
        "Rules, first match wins:",
    ]
    for i, rule in enumerate(RULES, 1):
        cond = (
            ""
            if rule.label == INSUFFICIENT
            else (
                f" [RankMe {_dirs(rule.rankme)}; alpha {_dirs(rule.alpha)}"
                + ("" if rule.when == "any" else f"; {rule.when}")
                + "]"
            )
        )
        lines += textwrap.wrap(
            f"{i}. {rule.label}{cond}: {rule.text}", 100, initial_indent="  ", subsequent_indent="     "
        )
    for para in ("Then: " + WARMUP_TEXT + "; " + MERGE_TEXT + ".", MODEL_TEXT + ".", STAGES_TEXT + "."):
        lines += ["", *textwrap.wrap(para, 100)]
    lines += ["", CONFIDENCE_TEXT]
    return "\n".join(lines)
