"""`phasescope report RUN... --out FILE`: publication figures of one or more runs.

    phasescope report runs/demo.zarr --out figures.pdf                 # every figure, one page each
    phasescope report runs/a.zarr runs/b.zarr --out traj.svg --figure trajectories --width 600
    phasescope report runs/demo.zarr --out fig.png --step 300 --probe final_norm --scale 3

The figures and the writing are ``phasescope.dashboard.report`` (also ``phasescope.report(...)``); this
module parses the options and prints the files written, one per line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argtypes import non_negative_int, positive_int, positive_number
from .errors import PhasescopeError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``report`` on the CLI's subparsers."""
    from .dashboard.report import Style  # light: no plotly import at parse time

    d = Style()
    p = subparsers.add_parser(
        "report",
        help="write publication figures of runs (PDF, SVG, PNG or HTML)",
        description="Draw the dashboard's figures of one or more runs for print: trajectories with the detected "
        "phases, layer x step heatmaps, eigenspectra with the alpha-ReQ fit and layer profiles, at a chosen size "
        "and font. .pdf holds every figure, one page each; .svg and .png write one file per figure "
        "(FILE-<figure>[-<run>].ext when there are several); .html holds every figure in one offline file. "
        "Training stages are not recorded by phasescope yet, so no figure draws any.",
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run stores, e.g. runs/a.zarr runs/b.zarr")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="the file to write: .pdf, .svg, .png or .html (the extension picks the format)",
    )
    p.add_argument(
        "--figure",
        default="all",
        choices=("all", "trajectories", "heatmap", "spectrum", "profile"),
        help="which figure: trajectories (the metric per layer over steps, with the loss and phases; runs "
        "overlaid), heatmap (layer x step, one per run), spectrum (eigenvalues with the alpha-ReQ fit, one "
        "per run), profile (the metric against layer at one step; runs overlaid), or all (default)",
    )
    p.add_argument(
        "--metric",
        default="rankme",
        help="per-layer metric of trajectories, heatmaps and profiles (default: %(default)s; e.g. alpha, "
        "participation_ratio)",
    )
    p.add_argument(
        "--probe",
        action="append",
        metavar="NAME",
        help="a layer to draw (repeat for several): the trajectories' layers (default: up to 8 spread over "
        "depth); the first is the spectrum's (default: the last probe)",
    )
    p.add_argument(
        "--step",
        type=non_negative_int,
        default=None,
        help="capture step of the spectra and profiles (default: each run's last capture)",
    )
    p.add_argument("--width", type=positive_int, default=d.width, help="width in layout pixels (default: %(default)s)")
    p.add_argument(
        "--height", type=positive_int, default=d.height, help="height in layout pixels (default: %(default)s)"
    )
    p.add_argument(
        "--font-size", type=positive_int, default=d.font_size, help="base font size in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--font", default=d.font_family, metavar="FAMILY", help="font family, a CSS list (default: %(default)s)"
    )
    p.add_argument(
        "--scale",
        type=positive_number,
        default=d.scale,
        help="PNG pixels per layout pixel (default: %(default)s; PDF and SVG are vector)",
    )
    p.add_argument("--no-phases", action="store_true", help="do not draw the phases on the trajectories")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``phasescope report``; user mistakes print one line on stderr and return 2."""
    from .dashboard.report import Style, check_out, report_figures, write_report

    try:
        check_out(args.out)
        style = Style(
            width=args.width, height=args.height, font_size=args.font_size, font_family=args.font, scale=args.scale
        )
        pages, notes = report_figures(
            args.runs,
            figure=args.figure,
            metric=args.metric,
            probes=args.probe,
            step=args.step,
            phases=not args.no_phases,
            style=style,
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        written = write_report(pages, args.out, style)
    except PhasescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
