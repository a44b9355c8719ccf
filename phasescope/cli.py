"""The `phasescope` command line: `demo`, `dashboard`, `phases`, `analyze`.

Heavy libraries (torch, transformers, dash) are imported inside the subcommands, so `--help` is instant.
User mistakes print one line, `error: …`, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__, cli_analyze, cli_phases
from .argtypes import non_negative_int as _non_negative_int
from .argtypes import port as _port
from .argtypes import positive_int as _positive_int
from .corpus import PROBE_SOURCES
from .dashboard import serve
from .demo import SCHEDULES, DemoConfig, run_demo
from .errors import PhasescopeError


def _add_demo(sub) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="train a small GPT-2 on the King James Bible and record its geometry",
        description="Train a GPT-2-architecture LM from scratch on the King James Bible (offline), "
        "capture the residual stream on a log-spaced schedule, and write a run store.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo.zarr"), help="run store to write (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run store at --out")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help="optimizer steps (default: %(default)s)")
    p.add_argument("--n-layer", type=_positive_int, default=d.n_layer)
    p.add_argument("--n-embd", type=_positive_int, default=d.n_embd)
    p.add_argument("--n-head", type=_positive_int, default=d.n_head)
    p.add_argument("--vocab-size", type=_positive_int, default=d.vocab_size)
    p.add_argument("--seq-len", type=_positive_int, default=d.seq_len)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=_non_negative_int, default=d.warmup)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning rate after the linear warmup: cosine decay to 10%% at the last step, or "
                   "constant (default: %(default)s)")
    p.add_argument("--probe-size", type=_positive_int, default=d.probe_size, help="held-out probe sequences")
    p.add_argument("--probes-from", choices=PROBE_SOURCES, default=d.probes_from,
                   help="probe set: midtext = windows of held-out text cut at random points (last token inside "
                   "running text), verses = whole held-out verses (last token = verse-final punctuation) "
                   "(default: %(default)s)")
    p.add_argument("--capture-every", type=_positive_int, default=d.capture_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=_positive_int, default=d.threads, help="torch intra-op threads")
    p.add_argument("--save-every", type=_non_negative_int, default=d.save_every, metavar="K",
                   help="also save Hugging Face checkpoints every K steps next to --out (NAME-checkpoints/), "
                   "for `phasescope analyze`; 0 = none (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--serve", action="store_true", help="start the dashboard on 127.0.0.1 afterwards")
    p.add_argument("--port", type=_port, default=8050)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    fields = DemoConfig.__dataclass_fields__
    cfg = DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})
    out = run_demo(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    if args.serve:
        serve(out.parent, host="127.0.0.1", port=args.port)
    return 0


def _add_dashboard(sub) -> None:
    p = sub.add_parser(
        "dashboard",
        help="explore runs in the web dashboard",
        description="Serve the phasescope dashboard for every run under RUNS (a folder of runs or one run store).",
    )
    p.add_argument("runs", type=Path, metavar="RUNS_DIR_OR_STORE")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=_port, default=8050)
    p.set_defaults(func=_run_dashboard)


def _run_dashboard(args) -> int:
    if not args.runs.exists():
        raise PhasescopeError(f"{args.runs} does not exist; pass a folder of runs or a run store (e.g. runs/)")
    serve(args.runs, host=args.host, port=args.port)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): `phasescope demo: error: …; see --help`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="phasescope",
        description="Training-dynamics observatory: activation spectra, gradient statistics and the phases of training.",
    )
    parser.add_argument("--version", action="version", version=f"phasescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_dashboard(sub)
    cli_phases.add_parser(sub)
    cli_analyze.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a one-line usage error
    try:
        return int(args.func(args) or 0)
    except PhasescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`phasescope phases RUN | head`): stop quietly, as Unix tools do; point
        # stdout at devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
