"""`phasescope phases RUN`: find the phases of a run, keep them in the run's ``phases`` group, print them.

    phasescope phases runs/demo.zarr            # summary sentence + table of segments
    phasescope phases runs/demo.zarr --json     # everything as JSON (segments, events, lags, summary)
    phasescope phases --explain                 # the labelling rules, tolerances and confidence formula

The result is stored in the run (group ``phases``, via ``phasescope.store``) with the number of captures
it was computed on; it is reused while the run has that many captures and the same settings, and
recomputed when the run has grown (or with ``--recompute``). The detector itself is
``phasescope.spectra.phases.detect_phases`` (pure: Dataset in, PhaseResult out); this module does the I/O.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .argtypes import csv_list, positive_number
from .errors import PhasescopeError
from .spectra.phases import PhaseResult, detect_phases, stage_summary, stage_table
from .spectra.phases.rules import RULES_VERSION, explain
from .store import open_group, open_run, run_stages, write_group

GROUP = "phases"


def _settings(penalty: float | None, metrics: tuple[str, ...], hmm: bool) -> dict:
    # the rules' version too: a result stored under other labelling rules is recomputed
    return {
        "penalty": "bic" if penalty is None else float(penalty),
        "metrics": list(metrics),
        "hmm": bool(hmm),
        "rules": RULES_VERSION,
    }


def _stored(path: Any, n_captures: int, settings: dict):
    """The stored PhaseResult if it is fresh (same capture count and settings), else None."""
    try:
        g = open_group(path, GROUP)
    except Exception:  # noqa: BLE001 - absent or unreadable group: recompute
        return None
    if g is None or int(g.attrs.get("n_captures", -1)) != n_captures:
        return None
    if g.attrs.get("settings") != json.dumps(settings, sort_keys=True):
        return None
    try:
        return PhaseResult.from_dataset(g.load())
    except (KeyError, ValueError, TypeError):
        return None


def phases_for_run(
    path: Any,
    *,
    penalty: float | None = None,
    metrics: tuple[str, ...] = ("rankme", "alpha"),
    hmm: bool = False,
    recompute: bool = False,
    save: bool = True,
):
    """PhaseResult for the run at ``path``: the stored one if fresh, else computed (and saved if ``save``).

    Returns ``(result, status)`` with status ``"stored"``, ``"computed"``, ``"computed, saved"`` or
    ``"computed, not saved: <reason>"``. Raises PhasescopeError for a path that is not a run or a run
    without RankMe captures.
    """
    ds = open_run(path)
    n = int(ds.sizes.get("capture_step", 0))
    settings = _settings(penalty, metrics, hmm)
    settings["stages"] = [[st["name"], st["first_step"]] for st in run_stages(ds)]  # a new stage: recompute
    if not recompute:
        cached = _stored(path, n, settings)
        if cached is not None:
            return cached, "stored"
    result = detect_phases(ds, metrics=metrics, penalty=penalty, hmm=hmm, stages=run_stages(ds))
    if not save:
        return result, "computed"
    out = result.to_dataset()
    out.attrs["settings"] = json.dumps(settings, sort_keys=True)
    try:
        write_group(path, GROUP, out)
    except PhasescopeError as exc:
        return result, f"computed, not saved: {exc}"
    except OSError as exc:
        return result, f"computed, not saved: {exc.strerror or exc}"
    return result, "computed, saved"


_metrics = csv_list("a comma-separated list of metric names, e.g. rankme,alpha")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phases`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "phases",
        help="find the phases of training (collapse, entropy-seeking, compression-seeking) in a run",
        description="Segment RankMe and alpha-ReQ over ln(1+step) into phases (Li et al. 2025), per probe and "
        "for the model; store the result in the run's 'phases' group and print it.",
    )
    p.add_argument(
        "run",
        type=Path,
        metavar="RUN",
        nargs="?",
        default=None,
        help="a run store, e.g. runs/demo.zarr (not needed with --explain)",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print how phases are labelled (rules, tolerances, minimum captures, confidence) and exit",
    )
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument(
        "--penalty",
        type=positive_number,
        default=None,
        help="change-point penalty per breakpoint, in noise units (default: BIC, (2d+1) ln n)",
    )
    p.add_argument(
        "--metrics",
        type=_metrics,
        default=("rankme", "alpha"),
        help="comma-separated metrics to segment (default: rankme,alpha; rankme is required)",
    )
    p.add_argument("--hmm", action="store_true", help="also fit the Gaussian-HMM cross-check (needs hmmlearn)")
    p.add_argument("--recompute", action="store_true", help="ignore a stored result that is still fresh")
    p.add_argument("--no-save", action="store_true", help="do not write the result into the run")
    p.add_argument("--per-probe", action="store_true", help="one summary sentence per probe too")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``phasescope phases``; user mistakes print one line on stderr and return 2."""
    if getattr(args, "explain", False):
        print(explain())
        return 0
    try:
        if args.run is None:
            raise PhasescopeError(
                "pass a run store, e.g. `phasescope phases runs/demo.zarr` (or --explain for the labelling rules)"
            )
        if not Path(args.run).exists():
            raise PhasescopeError(f"{args.run} does not exist; pass a run store such as runs/demo.zarr")
        result, status = phases_for_run(
            args.run,
            penalty=args.penalty,
            metrics=tuple(args.metrics),
            hmm=args.hmm,
            recompute=args.recompute,
            save=not args.no_save,
        )
    except PhasescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = result.to_json()
        out["status"] = status
        out["stages"] = [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in stage_summary(open_run(args.run), result)
        ]
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    print(result.summary(per_probe=args.per_probe))
    print()
    print(result.table())
    rows = stage_summary(open_run(args.run), result)
    if rows:
        print("\nPer stage (each segmented on its own; CKA: the stage's last capture to its first)")
        print(stage_table(rows))
    print(
        "\nconf: confidence in [0, 1] computed from each phase's fit (significance of its slopes, closeness to "
        "flat); `phasescope phases --explain` prints the rules and the formula, --json each phase's `rule`"
    )
    if result.hmm is not None:
        h = result.hmm
        if "error" in h:
            print(f"\nHMM cross-check: {h['error']}")
        else:
            segs = ", ".join(f"{s['label']} from {s['start_step']}" for s in h["segments"])
            print(
                f"\nHMM cross-check ({h['n_states']} states by BIC): {segs}; "
                f"agrees with the segmentation on {100 * h.get('agreement', float('nan')):.0f}% of captures"
            )
    print(f"\n({status}; {result.n_captures} captures up to step {result.last_capture_step})", file=sys.stderr)
    return 0
