"""detect_phases: segment and label a run's RankMe / α-ReQ trajectories (the method is described in
the package docstring, ``phasescope.spectra.phases``); ``trajectory_phases`` does one trajectory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from phasescope.errors import PhasescopeError

from . import rules as R
from .hmm import hmm_phases
from .label import DEFAULT_TOL, DEFAULT_Z, MIN_CAPTURES, Segment, _fit, insufficient, label_segments
from .result import MODEL, PhaseResult
from .segmentation import DEFAULT_MIN_EFFECT, DEFAULT_MIN_SIZE, log_step, segment

LOG_METRICS = {"rankme", "rankme_raw", "participation_ratio", "stable_rank"}
MIN_POINTS = MIN_CAPTURES


def _transform(name: str, values: ArrayLike) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if name in LOG_METRICS:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)
    return values


def trajectory_phases(
    steps: ArrayLike,
    rankme: ArrayLike,
    alpha: ArrayLike | None = None,
    *,
    extra: Mapping[str, ArrayLike] | None = None,
    probe: str = MODEL,
    penalty: float | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    min_effect: float = DEFAULT_MIN_EFFECT,
    tol: dict | None = None,
    z: float = DEFAULT_Z,
    loss=None,
    risen: bool = False,
    _log_rankme: bool = False,
) -> list[Segment]:
    """Segment and label one trajectory (arrays over captures); the core of :func:`detect_phases`.

    ``rankme`` is RankMe itself (ln is taken here) unless ``_log_rankme``; ``alpha`` may hold NaN.
    Captures with non-finite RankMe are dropped; fewer than 3 left → one ``insufficient-data`` segment.
    ``risen``: the trajectory continues a training whose RankMe already rose (a later stage): no collapse.
    """
    st = np.asarray(steps, dtype=np.float64)
    lr = np.asarray(rankme, dtype=np.float64) if _log_rankme else _transform("rankme", rankme)
    al = None if alpha is None else np.asarray(alpha, dtype=np.float64)
    ex = {k: _transform(k, v) for k, v in (extra or {}).items()}
    order = np.argsort(st, kind="stable")
    keep = order[np.isfinite(lr[order]) & np.isfinite(st[order])]
    st, lr = st[keep], lr[keep]
    al = None if al is None else al[keep]
    ex = {k: v[keep] for k, v in ex.items()}
    if len(st) < MIN_POINTS:
        return [insufficient(probe, st)]
    x = log_step(st)
    channels = [lr]
    for v in ([al] if al is not None else []) + list(ex.values()):
        fin = np.isfinite(v)
        if fin.sum() >= MIN_POINTS and fin.mean() > 0.5:
            channels.append(np.interp(x, x[fin], v[fin]) if not fin.all() else v)
    bkps = segment(x, np.column_stack(channels), penalty=penalty, min_size=min_size, min_effect=min_effect)
    return label_segments(probe, st.astype(np.int64), x, lr, al, bkps, tol=tol, z=z, loss=loss, risen=risen)


def _loss_lookup(ds, name: str = "loss"):
    """step → value of a per-step scalar (nearest logged step with a finite value), or None."""
    if name not in ds.variables or "step" not in ds[name].dims or ds[name].ndim != 1:
        return None
    s = np.asarray(ds["step"].values, dtype=np.float64)
    v = np.asarray(ds[name].values, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(v)
    if not ok.any():
        return None
    s, v = s[ok], v[ok]

    def lookup(step: int) -> float:
        return float(v[int(np.argmin(np.abs(s - step)))])

    return lookup


def detect_phases(
    ds,
    *,
    metrics: Sequence[str] = ("rankme", "alpha"),
    penalty: float | None = None,
    probes: Sequence[str] | None = None,
    model_level: bool = True,
    min_size: int = DEFAULT_MIN_SIZE,
    min_effect: float = DEFAULT_MIN_EFFECT,
    tol: dict | None = None,
    z: float = DEFAULT_Z,
    hmm: bool = False,
    stages: Sequence[Mapping] | None = None,
) -> PhaseResult:
    """Find and label the phases of a run's representation geometry, per probe and for the model.

    In a run of several training stages (``ds.attrs["stages"]``, or ``stages``: [{"name", "first_step"},
    …] in order) each stage is segmented and labelled on its own: a stage boundary is a forced change
    point, a phase never spans two stages, and the log-step axis restarts at each stage's first step
    (step − first_step), as the captures' schedule does. Each segment names its ``stage``. A stage that
    begins after step 0 continues a training whose RankMe has risen: its falls are compression-seeking
    (α rising) or mixed, never the warmup collapse.

    Parameters
    ----------
    ds : xarray.Dataset with ``rankme`` (and ``alpha``, …) over (capture_step, probe) — the store's layout
        (``phasescope.store.open_run``). Optional ``loss`` over (step) is reported as evidence.
    metrics : channels to segment; must include ``"rankme"``. ``"alpha"`` enables the α evidence.
    penalty : PELT penalty per breakpoint in noise-normalised units; default BIC (2d+1)·ln n.
    probes : restrict to these probes (default all, in the dataset's order = depth order).
    min_size : fewest captures per segment (3). min_effect : noise floor as a fraction of each channel's
        standard deviation (0.05). tol : label tolerances {"rankme": 0.1 (ln units), "alpha": 0.1}.
    z : significance multiple for a slope to count as moving. hmm : also fit the HMM cross-check.
    """
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        raise PhasescopeError(
            f"detect_phases needs an xarray.Dataset (a run opened with phasescope.store.open_run), "
            f"got {type(ds).__name__}"
        )
    metrics = list(metrics)
    if "rankme" not in metrics:
        raise PhasescopeError(f"metrics must include 'rankme' (got {metrics}); RankMe decides the phase direction")
    missing = [m for m in metrics if m not in ds.data_vars]
    if "rankme" in missing:
        raise PhasescopeError(
            "run has no 'rankme' variable: phase detection needs spectral captures "
            "(record the run with probes and a capture schedule)"
        )
    if missing:
        raise PhasescopeError(
            f"run has no variable(s) {missing}; available metrics: "
            f"{sorted(str(v) for v in ds.data_vars if 'capture_step' in ds[v].dims)}"
        )
    if "capture_step" not in ds["rankme"].dims:
        raise PhasescopeError(
            f"'rankme' must be indexed by 'capture_step' (the store's layout); it has dims {ds['rankme'].dims}"
        )
    if "probe" not in ds["rankme"].dims:
        ds = ds.expand_dims(probe=[MODEL])
    all_probes = [str(p) for p in ds["probe"].values]
    if probes is not None:
        unknown = [p for p in probes if p not in all_probes]
        if unknown:
            raise PhasescopeError(f"unknown probe(s) {unknown}; the run has {all_probes}")
        all_probes = [p for p in all_probes if p in probes]
    steps = np.asarray(ds["capture_step"].values)
    loss = _loss_lookup(ds)
    data = {
        m: ds[m].transpose("capture_step", "probe").sel(probe=all_probes).values.astype(np.float64) for m in metrics
    }
    opts = dict(penalty=penalty, min_size=min_size, min_effect=min_effect, tol=tol, z=z)
    parts = stage_parts(steps, ds.attrs.get("stages") if stages is None else stages)
    segments: list[Segment] = []
    for name, first, inside in parts:
        shifted = None if loss is None else (lambda s, f=first: loss(s + f))
        found = _detect(
            steps[inside] - first,
            {m: v[inside] for m, v in data.items()},
            all_probes,
            model_level,
            opts,
            shifted,
            risen=first > 0,
        )
        segments += [
            Segment(
                **{**g.to_dict(), "start_step": g.start_step + first, "end_step": g.end_step + first, "stage": name}
            )
            for g in found
        ]
    segments = [g for p in [*all_probes, MODEL] for g in segments if g.probe == p]  # per probe, in step order
    params = {
        "method": "pelt-piecewise-linear-log1p-step",
        "metrics": metrics,
        "penalty": "bic" if penalty is None else float(penalty),
        "min_size": min_size,
        "min_effect": min_effect,
        "tol": {**DEFAULT_TOL, **(tol or {})},
        "z": z,
        "min_captures": MIN_CAPTURES,
        "rules_version": R.RULES_VERSION,
        "stages": [name for name, _, _ in parts if name],
    }
    fin = np.isfinite(data["rankme"]).any(axis=1)
    result = PhaseResult(
        segments=segments,
        probes=all_probes,
        params=params,
        n_captures=len(steps),
        last_capture_step=int(steps[fin].max()) if fin.any() else -1,
    )
    if hmm:
        pelt = [s.label for s in result.segments_for(MODEL) for _ in range(s.n_points)]
        result.hmm = hmm_phases(steps, data, all_probes, pelt_labels=pelt)
    return result


def stage_parts(steps: np.ndarray, stages: Sequence[Mapping] | None) -> list[tuple[str, int, np.ndarray]]:
    """(stage name, its first step, mask of its captures) for each stage with captures, in order; captures
    before the first stage form a part named "" from step 0; a run without stages is one such part."""
    steps = np.asarray(steps)
    bounds = [(str(st["name"]), int(st["first_step"])) for st in stages or [] if st.get("first_step") is not None]
    if not bounds:
        return [("", 0, np.ones(steps.shape, bool))]
    starts = np.array([f for _, f in bounds])
    which = np.searchsorted(starts, steps, side="right") - 1  # -1: before the first stage
    parts = [("", 0, which == -1)] if (which == -1).any() else []
    parts += [(n, f, which == i) for i, (n, f) in enumerate(bounds) if (which == i).any()]
    return parts


def _detect(steps, data: dict, probes: list[str], model_level: bool, opts: dict, loss, risen=False) -> list[Segment]:
    """Every probe's segments and the model level's, over one stage's captures (``data``: metric →
    (captures, probes))."""
    extra_names = [m for m in data if m not in ("rankme", "alpha")]
    segments: list[Segment] = []
    for j, p in enumerate(probes):
        segments += trajectory_phases(
            steps,
            data["rankme"][:, j],
            data["alpha"][:, j] if "alpha" in data else None,
            extra={m: data[m][:, j] for m in extra_names},
            probe=p,
            loss=loss,
            risen=risen,
            **opts,
        )
    if model_level and len(probes) > 1:
        with np.errstate(all="ignore"), _quiet():
            med_lr = _aligned_median(_transform("rankme", data["rankme"]))
            med_a = _aligned_median(data["alpha"]) if "alpha" in data else None
            med_x = {
                m: np.exp(_aligned_median(_transform(m, data[m]))) if m in LOG_METRICS else _aligned_median(data[m])
                for m in extra_names
            }
        model = trajectory_phases(
            steps, med_lr, med_a, extra=med_x, probe=MODEL, _log_rankme=True, loss=loss, risen=risen, **opts
        )
        segments += _check_against_probes(model, steps, data, {**DEFAULT_TOL, **(opts["tol"] or {})}, opts["z"])
    elif model_level:
        segments += [Segment(**{**s.to_dict(), "probe": MODEL}) for s in segments if s.probe == probes[0]]
    return segments


def _aligned_median(v: np.ndarray) -> np.ndarray:
    """Model-level trajectory of a (captures, probes) array: at each capture the median over probes of
    each probe's deviation from its own median level, plus the median level. A plain median of levels
    follows whichever probe sits in the middle (probes' RankMe differ by factors of 10), so the model
    could go one way while most probes go the other; the median of the shapes moves as most probes do."""
    level = np.nanmedian(v, axis=0)  # per probe
    shape = np.nanmedian(v - level[None, :], axis=1)  # per capture
    return shape + np.nanmedian(level)


def _check_against_probes(model: list[Segment], steps, data: dict, tol: dict, z: float) -> list[Segment]:
    """The model level must agree with the probes: for each model phase, fit every probe's ln RankMe and
    α over the same captures and count the probes whose own directions satisfy the model rule's
    conditions on RankMe and α (``rules.RULES``); fewer than half → ``mixed``. ``probes_agree`` keeps the
    fraction (of probes with at least MIN_CAPTURES finite RankMe values there)."""
    steps = np.asarray(steps, dtype=np.float64)
    x_all = np.log1p(np.where(np.isfinite(steps), steps, 0))
    lr_all = _transform("rankme", data["rankme"])
    al_all = data.get("alpha")
    out = []
    for seg in model:
        if seg.label in (R.INSUFFICIENT, R.MIXED):
            out.append(seg)
            continue
        rule = R.RULE_BY_LABEL[seg.label]
        inside = (steps >= seg.start_step) & (steps <= seg.end_step)
        votes = []
        for j in range(lr_all.shape[1]):
            ok = inside & np.isfinite(lr_all[:, j])
            if ok.sum() < MIN_CAPTURES:
                continue
            f = _fit(x_all[ok], lr_all[ok, j], None if al_all is None else al_all[ok, j])
            r_dir = R.rankme_direction(f.d_r, tol["rankme"])
            a_dir = R.alpha_direction(f.d_a, f.se_da, tol["alpha"], z)
            votes.append(r_dir in rule.rankme and a_dir in rule.alpha)
        if not votes:
            out.append(seg)
            continue
        frac = float(np.mean(votes))
        if frac >= 0.5:
            out.append(
                Segment(
                    **{
                        **seg.to_dict(),
                        "probes_agree": frac,
                        "rule": f"{seg.rule}; {sum(votes)} of {len(votes)} probes agree",
                    }
                )
            )
        else:
            span = seg.change_alpha / seg.slope_alpha if seg.slope_alpha else float("nan")
            r_dir = R.rankme_direction(seg.change_rankme, tol["rankme"])
            a_dir = R.alpha_direction(seg.change_alpha, abs(seg.slope_alpha_se * span), tol["alpha"], z)
            mixed = R.rule_text(
                R.MIXED,
                r_dir,
                a_dir,
                seg.change_rankme,
                seg.change_alpha,
                seg.n_fit,
                f"the median says {seg.label}, but only {sum(votes)} of {len(votes)} probes' "
                f"own slopes satisfy its rule",
            )
            out.append(
                Segment(
                    **{**seg.to_dict(), "label": R.MIXED, "probes_agree": frac, "rule": mixed, "confidence": 1.0 - frac}
                )
            )
    return out


class _quiet:
    """Silence 'All-NaN slice' warnings of nanmedian (captures where every probe is NaN stay NaN)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
