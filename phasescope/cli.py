"""The `phasescope` command line: `demo`, `dashboard`, `phases`, `analyze`, `report`, `compare`.

Heavy libraries (torch, transformers, dash) are imported inside the subcommands, so `--help` is instant.
User mistakes print one line, `error: …`, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__, cli_analyze, cli_phases, cli_report
from .argtypes import non_negative_int as _non_negative_int
from .argtypes import port as _port
from .argtypes import positive_int as _positive_int
from .corpus import PROBE_SOURCES
from .dashboard import serve
from .demo import CORPORA, PRESETS, SCHEDULES, DemoConfig, run_demo
from .demo_stages import StagesConfig
from .errors import PhasescopeError


def _add_demo(sub) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="train a small GPT-2 on the King James Bible and record its geometry",
        description="Train a GPT-2-architecture LM from scratch on the King James Bible (offline), "
        "capture the residual stream on a log-spaced schedule, and write a run store. --preset three-phases "
        "trains a narrow GPT-2 on a synthetic Zipfian language instead, long enough to show all three phases "
        "of Li et al. 2025 (about ten minutes).",
    )

    def opt(flag: str, kind, text: str, **kw) -> None:
        """A DemoConfig field: its default is None here so that a --preset can fill what was not given."""
        field = flag[2:].replace("-", "_")
        p.add_argument(flag, type=kind, default=None, help=f"{text} (default: {getattr(d, field)})", **kw)

    p.add_argument("--out", type=Path, default=Path("runs/demo.zarr"), help="run store to write (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run store at --out")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="named settings; flags given here override them. three-phases: "
        + ", ".join(f"{k}={v}" for k, v in PRESETS["three-phases"].items()),
    )
    opt("--steps", _positive_int, "optimizer steps")
    opt("--n-layer", _positive_int, "transformer blocks")
    opt("--n-embd", _positive_int, "width of the residual stream (d)")
    opt("--n-head", _positive_int, "attention heads (must divide --n-embd)")
    opt("--vocab-size", _positive_int, "tokens: BPE merges trained on the training split, or the zipf language's size")
    opt("--seq-len", _positive_int, "tokens per training window and probe sequence")
    opt("--batch-size", _positive_int, "training windows per step")
    opt("--lr", float, "peak learning rate (AdamW)")
    opt("--weight-decay", float, "AdamW weight decay")
    opt("--warmup", _non_negative_int, "linear warmup steps")
    opt(
        "--schedule",
        str,
        "learning rate after the warmup: constant, or cosine decay to 10%% at the last step",
        choices=SCHEDULES,
    )
    opt(
        "--corpus",
        str,
        "training text: kjv (the King James Bible) or zipf (a synthetic Zipfian language)",
        choices=CORPORA,
    )
    opt("--zipf-exponent", float, "--corpus zipf: exponent s of its Zipf prior over tokens (0 = uniform)")
    opt("--probe-size", _positive_int, "held-out probe sequences")
    opt(
        "--probes-from",
        str,
        "probe set: midtext = windows of held-out text cut at random points (last token "
        "inside running text), verses = whole held-out verses (last token = verse-final punctuation)",
        choices=PROBE_SOURCES,
    )
    opt("--capture-every", _positive_int, "regular captures every K steps, on top of the log-spaced ones", metavar="K")
    opt("--seed", int, "seed of the model, the batches and the probe set")
    opt("--threads", _positive_int, "torch intra-op threads (one is fastest at this size)")
    opt(
        "--save-every",
        _non_negative_int,
        "also save Hugging Face checkpoints every K steps next to --out "
        "(NAME-checkpoints/), for `phasescope analyze`; 0 = none",
        metavar="K",
    )
    p.add_argument(
        "--stages",
        action="store_true",
        help="one run through pretraining, SFT, DPO and RLVR (TRL) on the Bible's verses and its books, "
        "with the phases and forgetting of each stage (about 2-4 minutes on 2 cores; --quick: ~20 s). "
        "Its own flags: --quick, --sft-steps, --dpo-steps, --rl-steps, --post-lr, --rl-beta, --rl-generations, "
        "--seed, --threads (the others are the plain demo's)",
    )
    p.add_argument("--quick", action="store_true", help="with --stages: a tiny model and a few steps per stage")
    s = StagesConfig()
    for flag, kind, text in (
        ("--sft-steps", _positive_int, "SFT steps"),
        ("--dpo-steps", _positive_int, "DPO steps"),
        ("--rl-steps", _positive_int, "RLVR (GRPO) steps"),
        ("--post-lr", float, "learning rate of SFT, DPO and RLVR"),
        ("--rl-beta", float, "GRPO's KL coefficient"),
        ("--rl-generations", _positive_int, "GRPO's group size (must divide the stages' batch of 16)"),
    ):
        field = flag[2:].replace("-", "_")
        p.add_argument(flag, type=kind, default=None, help=f"with --stages: {text} (default: {getattr(s, field)})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--serve", action="store_true", help="start the dashboard on 127.0.0.1 afterwards")
    p.add_argument("--port", type=_port, default=8050, help="dashboard port with --serve (default: %(default)s)")
    p.set_defaults(func=_run_demo)


def demo_config(args) -> DemoConfig:
    """The DemoConfig of parsed `demo` arguments: the preset's values under the flags that were given."""
    fields = DemoConfig.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return DemoConfig(**{**PRESETS[args.preset], **given})


def _run_demo(args) -> int:
    if args.quick and not args.stages:
        raise PhasescopeError("--quick goes with --stages (phasescope demo --stages --quick)")
    if args.stages:
        from .demo_stages import QUICK, run_stages_demo

        levers = ("seed", "threads", "sft_steps", "dpo_steps", "rl_steps", "post_lr", "rl_beta", "rl_generations")
        kw = {k: getattr(args, k) for k in levers if getattr(args, k) is not None}
        cfg_s = StagesConfig(**{**(QUICK if args.quick else {}), **kw})
        out = run_stages_demo(cfg_s, args.out, overwrite=args.overwrite, progress=not args.no_progress)
        if args.serve:
            serve(out.parent, host="127.0.0.1", port=args.port)
        return 0
    cfg = demo_config(args)
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
    p.add_argument(
        "runs",
        type=Path,
        metavar="RUNS_DIR_OR_STORE",
        help="a folder of runs (searched recursively; live runs appear as they start) or one run store",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=_port, default=8050, help="port to serve on (default: %(default)s)")
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
        description=(
            "Training-dynamics observatory: activation spectra, gradient statistics and the phases of training."
        ),
    )
    parser.add_argument("--version", action="version", version=f"phasescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_dashboard(sub)
    cli_phases.add_parser(sub)
    cli_analyze.add_parser(sub)
    cli_report.add_parser(sub)
    _add_compare(sub)
    return parser


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="a sweep's runs side by side: early signals, ranked, and how they predict the final loss",
        description="For each run: the mean gradient norm, loss, RankMe and alpha-ReQ over its first --early "
        "fraction of steps, and its final --target; the runs ranked by --rank-by; and over the finished runs "
        "each early signal's Spearman correlation with the final target.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run stores (e.g. runs/lr*.zarr)")
    p.add_argument("--early", type=float, default=0.1, help="fraction of each run's steps (default: %(default)s)")
    p.add_argument("--target", default="loss", help="final step variable to predict (default: %(default)s)")
    p.add_argument("--rank-by", default="grad_norm", help="early signal to rank by (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    import json

    from .sweep import compare_paths, to_json

    table = compare_paths(args.runs, early=args.early, target=args.target, rank_by=args.rank_by)
    if args.json:
        print(json.dumps(to_json(table), indent=2, allow_nan=False))
    else:
        print(table.text())
    return 0


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
