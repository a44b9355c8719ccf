"""`phasescope analyze`: sweep saved checkpoints offline into a run store (see phasescope.probes.offline).

    phasescope analyze out/ --text probes.txt --out runs/sweep.zarr
    phasescope analyze EleutherAI/pythia-70m --revisions step0,step1000,step2000 --text kjv --out runs/p.zarr

Heavy imports (torch, transformers, nnsight, dask) happen only once a checkpoint is loaded, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .argtypes import csv_list, non_negative_int, positive_int
from .corpus import PROBE_SOURCES
from .errors import PhasescopeError
from .probes.offline import AnalyzeInterrupted, AnalyzeOptions, analyze

_csv = csv_list()


def workers_arg(text: str) -> int | str:
    """``--workers``: ``auto`` or an integer >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer >= 0, got {text!r}") from None


def add_parser(subparsers) -> None:
    """Register the `analyze` subcommand."""
    p = subparsers.add_parser(
        "analyze",
        help="analyse saved checkpoints (a folder of checkpoint-<step> or hub revisions) into a run store",
        description="Trace a probe set through every checkpoint with nnsight, reduce the selected internals to "
        "covariance spectra (RankMe, alpha-ReQ, ...), optionally gradient and weight statistics, and write the "
        "same run store as live capture (capture_step = checkpoint step). Reruns skip stored checkpoints; "
        "failures are recorded and the sweep goes on; Ctrl-C keeps what was stored (rerun to continue).",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="folder of checkpoint folders (names carry the step), or a hub model id with --revisions",
    )
    p.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="instead of SOURCE: one training stage's checkpoint folder, repeated in training order "
        "(--stage sft=ckpts/sft --stage rl=ckpts/grpo); each stage's steps follow the previous one's",
    )
    p.add_argument(
        "--text",
        required=True,
        metavar="FILE_OR_CORPUS",
        help="probe sequences: text file (one per line), JSONL with 'text' (or 'prompt'+'response'), "
        "or a corpus name (kjv)",
    )
    p.add_argument(
        "--probes-from",
        choices=PROBE_SOURCES,
        default=None,
        help="with a corpus: midtext = windows of held-out text cut at random points, seeded by --seed "
        "(default), or verses = whole held-out verses",
    )
    p.add_argument("--out", required=True, type=Path, help="run store to write or continue")
    p.add_argument(
        "--probes",
        type=_csv,
        default=["auto"],
        help="comma-separated presets (auto, blocks, attn, mlp, final_norm, all), module names or globs "
        "(default: auto = every block output + final norm)",
    )
    p.add_argument(
        "--tokens",
        choices=("last", "all", "mean"),
        default="last",
        help="token states per sequence: last non-pad (Li et al. 2025), all non-pad, or mean (default: last)",
    )
    p.add_argument(
        "--max-tokens", type=positive_int, default=None, help="--tokens all: seeded subsample of this many tokens"
    )
    p.add_argument(
        "--max-length", type=positive_int, default=128, help="truncate sequences to this many tokens (default: 128)"
    )
    p.add_argument("--min-tokens", type=positive_int, default=1, help="drop shorter sequences (Li et al.: 11)")
    p.add_argument("--max-sequences", type=positive_int, default=None, help="use the first N sequences")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="probe sequences per traced forward (default: 64)"
    )
    p.add_argument("--fit-range", default="auto", help="alpha-ReQ fit range: auto or START,STOP (Li et al.: 11,100)")
    p.add_argument(
        "--max-rank", type=positive_int, default=None, help="store at most this many eigenvalues (Li et al.: 2048)"
    )
    p.add_argument(
        "--gradients",
        action="store_true",
        help="per-matrix gradient statistics of the probe-set loss (response tokens only for prompt/response)",
    )
    p.add_argument(
        "--weights",
        action="store_true",
        help="per-matrix weight spectra: ESD alpha, stable rank, norms, WeightWatcher's log norms, MP soft rank, "
        "spikes and correlation traps",
    )
    p.add_argument(
        "--weight-fit",
        choices=("clauset", "ww"),
        default="clauset",
        help="the weight ESD tail's power-law fit: clauset (two-sided KS, tails of >= 10) or ww (WeightWatcher "
        "0.7.7's own xmin and KS distance, to compare with its analyze())",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also the Hessian's top eigenvalue and trace and the gradient noise (GSNR, batch-size tests) of the "
        "loss on the probe set's first --batch-size sequences, per checkpoint",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="CKPT",
        help="with --weights: compare every matrix with a base model's (a checkpoint folder or hub id, or 'first' "
        "for the sweep's first checkpoint): relative distance, change of alpha, of sigma_1 and of the ESD",
    )
    p.add_argument(
        "--rankme-raw",
        action="store_true",
        help="also RankMe of the raw (uncentred) states' singular values, Garrido et al. 2023 (off by default)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "float64", "float32", "tf32"),
        default="auto",
        help="precision of the covariance products: auto (default) follows the states (float32 states: float32 "
        "products summed in float64; eigenvalues below 2^-23 of the largest count as zero); float64 for tiny ones",
    )
    p.add_argument(
        "--matrices",
        choices=("blocks", "all"),
        default="blocks",
        help="2-D weights for --gradients/--weights: inside blocks (default) or every one",
    )
    p.add_argument(
        "--revisions", type=_csv, default=None, help="hub revisions, e.g. step1000,step2000 (SOURCE is a model id)"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the first checkpoint's)")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run model code shipped with the checkpoints (off by default)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--dtype", default=None, choices=("float32", "float16", "bfloat16"), help="load weights in this dtype"
    )
    p.add_argument(
        "--workers",
        type=workers_arg,
        default="auto",
        help="auto (default): this process, unless the sweep is long enough for a Dask LocalCluster to "
        "pay off on this machine's cores (the choice and why are printed and stored); 0 = this process; "
        "N = a LocalCluster of N worker processes",
    )
    p.add_argument(
        "--threads-per-worker", type=positive_int, default=1, help="torch threads in each Dask worker (default: 1)"
    )
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--overwrite", action="store_true", help="replace the run store instead of continuing it")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of --tokens all subsampling and of --text kjv windows (default: 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the sweep; 0 when at least one checkpoint was stored (or nothing was left to do)."""
    if args.scheduler and args.workers not in ("auto", 0):
        raise PhasescopeError("--workers starts a local cluster; it cannot be combined with --scheduler")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PhasescopeError(f"--out {out} is a file; choose a folder path for the run store")
    probes = args.probes[0] if len(args.probes) == 1 else list(args.probes)
    opts = AnalyzeOptions(
        probes=probes,
        tokens=args.tokens,
        max_tokens=args.max_tokens,
        max_length=args.max_length,
        min_tokens=args.min_tokens,
        max_sequences=args.max_sequences,
        batch_size=args.batch_size,
        fit_range=args.fit_range,
        gradients=args.gradients,
        weights=args.weights,
        weight_fit=args.weight_fit,
        reference=args.reference,
        diagnostics=args.diagnostics,
        matrices=args.matrices,
        max_rank=args.max_rank,
        revisions=args.revisions,
        tokenizer=args.tokenizer,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        seed=args.seed,
        probes_from=args.probes_from,
        rankme_raw=args.rankme_raw,
        spectra_precision=args.precision,
    )
    source = _stages(args.stage) if args.stage else args.source
    if (args.source is None) == (not args.stage):
        raise PhasescopeError("pass either SOURCE (a folder of checkpoints) or --stage NAME=FOLDER per stage")
    try:
        report = analyze(source, args.text, out, opts)
    except AnalyzeInterrupted as stop:  # Ctrl-C: the run is closed "interrupted", what was committed is kept
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the process is ending: a second Ctrl-C must not cut it short
        print(stop.report.interrupted(), file=sys.stderr)
        return 130
    print(report.summary())
    if report.failed and not report.analyzed and not report.skipped:
        return 1
    return 0


def _stages(pairs: list[str]) -> dict[str, str]:
    """--stage NAME=FOLDER arguments as {name: folder} in order; a malformed or repeated name is one line."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise PhasescopeError(f"--stage {pair!r}: write NAME=FOLDER, e.g. --stage sft=ckpts/sft")
        if name in out:
            raise PhasescopeError(f"--stage {name!r} is given twice; each stage once, in training order")
        out[name] = folder
    return out
