"""`phasescope demo --stages`: one run through pretraining → SFT → DPO → RLVR on the King James Bible.

- **pretrain**: a GPT-2 from a config learns the verses (next-token loss, the plain PyTorch loop of
  `phasescope demo`, an :class:`~phasescope.probes.Observatory`);
- **sft** (TRL's ``SFTTrainer``): a verse's first words and ``"\\nBook:"`` → the name of its book (the
  ``Books`` table of the same SQLite file);
- **dpo** (``DPOTrainer``): the right book chosen, another book rejected;
- **rlvr** (``GRPOTrainer``): a verifiable reward, 1 for the exact book name, 0 else.

Each stage continues the same run (``continue_run=True``) with its own stage in the store; the probe set
(held-out mid-text windows) is the same throughout, and two evaluation sets measure forgetting at every
capture: ``pretrain`` (the next-token loss on held-out verses) and ``sft`` (the answer's loss on held-out
prompts; DPO and RLVR train the same task). After each stage the model answers held-out prompts by
sampling (``DIVERSITY_SAMPLES`` answers each): the exact-match accuracy and the distinct answers per
prompt (generation diversity; Li et al. 2025 find RLVR lowers it) are stored in the run's
``stage_eval`` attribute. Phases are then found within each stage and printed with the per-stage table.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .corpus import EOS, PAD, hf_tokenizer, load_kjv, load_kjv_books, split_verses, train_tokenizer
from .errors import PhasescopeError

DIVERSITY_SAMPLES = 8
PROMPT_WORDS = 8


@dataclass
class StagesConfig:
    pretrain_steps: int = 1500
    sft_steps: int = 300
    dpo_steps: int = 150
    rl_steps: int = 150
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    vocab_size: int = 2048
    seq_len: int = 64
    batch_size: int = 16
    lr: float = 3e-3  # pretraining
    post_lr: float = 3e-4  # SFT, DPO and RLVR
    dpo_beta: float = 0.1
    rl_beta: float = 0.04  # GRPO's KL coefficient
    rl_generations: int = 8  # GRPO's group size
    probe_size: int = 256
    eval_prompts: int = 48  # held-out prompts for accuracy and diversity
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        for name, v in asdict(self).items():
            if name in ("seed",):
                continue
            if name == "rl_beta" and v == 0:  # no KL term: allowed
                continue
            if not v > 0:
                raise PhasescopeError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.n_embd % self.n_head:
            raise PhasescopeError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        if self.batch_size % self.rl_generations:
            raise PhasescopeError(
                f"--batch-size ({self.batch_size}) must be a multiple of the GRPO group size ({self.rl_generations})"
            )


QUICK = {
    "pretrain_steps": 40,
    "sft_steps": 12,
    "dpo_steps": 8,
    "rl_steps": 8,
    "n_embd": 32,
    "n_head": 2,
    "vocab_size": 512,
    "probe_size": 48,
    "eval_prompts": 8,
    "batch_size": 8,
    "rl_generations": 4,
}


def _task(split_every: int = 25) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(train pairs, held-out pairs, book names): prompts are a verse's first words and "\\nBook:", the
    answer " <book>"; every ``split_every``-th verse is held out (the verses the probe set comes from)."""
    pairs = load_kjv_books()
    books = list(dict.fromkeys(b for _, b in pairs))

    def prompt(v: str) -> str:
        return " ".join(v.split()[:PROMPT_WORDS]) + "\nBook:"

    train = [(prompt(v), b) for i, (v, b) in enumerate(pairs) if i % split_every]
    held = [(prompt(v), b) for i, (v, b) in enumerate(pairs) if not i % split_every]
    return train, held, books


def run_stages_demo(cfg: StagesConfig, out: Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Train through the four stages into the run store ``out`` and print the per-stage table."""
    cfg.validate()
    from .demo import check_output

    out = Path(out)
    check_output(out, overwrite)
    try:
        import trl  # noqa: F401
    except ImportError:
        raise PhasescopeError("demo --stages needs TRL: pip install 'phasescope[trl]'") from None
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bars of each stage's reference model
    import datasets

    datasets.disable_progress_bars()  # TRL's tokenising passes over 23k examples, once per stage
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    verses = split_verses(load_kjv())
    tok = train_tokenizer(verses.train, cfg.vocab_size)
    hf = hf_tokenizer(tok)
    hf.padding_side = "left"  # generation (GRPO, the evaluation) continues prompts: pad on the left
    train_pairs, held_pairs, books = _task()
    rng = np.random.default_rng(cfg.seed)
    ev = [held_pairs[i] for i in rng.choice(len(held_pairs), cfg.eval_prompts, replace=False)]
    probe = _probe_batch(hf, verses.heldout, cfg)
    loss_sets = {
        "pretrain": _lm_set(hf, verses.heldout[1::2][:64], cfg),
        "sft": _answer_set(hf, held_pairs[1::2][:64], cfg),
    }
    model = _model(hf, cfg)
    times, evals = {}, {}
    common = dict(probe_inputs=probe, tokens="last", loss_sets=loss_sets, fit_range="auto")

    t = time.perf_counter()
    _pretrain(model, tok, verses.train, out, cfg, common, overwrite, progress)
    times["pretrain"], evals["pretrain"] = time.perf_counter() - t, answer_stats(model, hf, ev)
    for stage, run in (("sft", _sft), ("dpo", _dpo), ("rlvr", _rl)):
        t = time.perf_counter()
        run(model, hf, train_pairs, books, out, cfg, common, rng)
        times[stage], evals[stage] = time.perf_counter() - t, answer_stats(model, hf, ev)
    total = time.perf_counter() - t0
    write_stage_eval(out, evals, times)
    print(f"trained four stages in {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    print(stages_report(out))
    return out


def write_stage_eval(out: Path, evals: dict[str, dict], times: dict[str, float]) -> None:
    """The answers' accuracy and diversity after each stage, and its seconds, as the run's ``stage_eval``
    group (dim ``stage``), beside its arrays."""
    import xarray as xr

    from .store import write_group

    names = list(evals)
    data = {k: ("stage", np.array([evals[n][k] for n in names], float)) for k in next(iter(evals.values()))}
    data["seconds"] = ("stage", np.array([times[n] for n in names], float))
    write_group(out, "stage_eval", xr.Dataset(data, coords={"stage": np.array(names, dtype=object)}))


def _probe_batch(hf, heldout: list[str], cfg: StagesConfig) -> dict:
    """The fixed probe set: ``probe_size`` held-out mid-text windows, right-padded (the last token read)."""
    from .corpus import heldout_probe_texts

    texts = heldout_probe_texts("midtext", cfg.probe_size, seed=cfg.seed + 1, heldout=heldout)
    return _padded(hf, texts, cfg.seq_len)


def _padded(hf, texts: list[str], length: int) -> dict:
    import torch

    ids = [hf(t, add_special_tokens=False)["input_ids"][:length] for t in texts]
    width = max(len(i) for i in ids)
    x = torch.full((len(ids), width), hf.pad_token_id, dtype=torch.long)
    m = torch.zeros_like(x)
    for k, i in enumerate(ids):
        x[k, : len(i)] = torch.tensor(i)
        m[k, : len(i)] = 1
    return {"input_ids": x, "attention_mask": m}


def _lm_set(hf, texts: list[str], cfg: StagesConfig) -> dict:
    """Held-out verses with next-token labels (padding ignored): the pretraining stage's loss set."""
    b = _padded(hf, texts, cfg.seq_len)
    return {**b, "labels": b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)}


def _answer_set(hf, pairs: list[tuple[str, str]], cfg: StagesConfig) -> dict:
    """Held-out prompts with their answers, the loss on the answer's tokens only: the task's loss set."""
    b = _padded(hf, [p + " " + a + EOS for p, a in pairs], cfg.seq_len)
    labels = b["input_ids"].clone()
    for k, (p, _) in enumerate(pairs):
        labels[k, : len(hf(p, add_special_tokens=False)["input_ids"])] = -100
    return {**b, "labels": labels.masked_fill(b["attention_mask"] == 0, -100)}


def _model(hf, cfg: StagesConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    eos, pad = hf.convert_tokens_to_ids(EOS), hf.convert_tokens_to_ids(PAD)
    config = GPT2Config(
        vocab_size=len(hf),
        n_positions=cfg.seq_len,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return GPT2LMHeadModel(config)


def _schedule(steps: int):
    from .probes.schedules import every, log_spaced, union

    return union(log_spaced(steps, per_decade=8), every(max(steps // 10, 1)), [steps - 1])


def _pretrain(model, tok, texts, out: Path, cfg: StagesConfig, common: dict, overwrite: bool, progress: bool) -> None:
    import torch

    from .demo import token_stream, train
    from .probes import Observatory
    from .probes.integrations.hf import TRAINER_SCALARS

    stream = token_stream((e.ids for e in tok.encode_batch(texts)), tok.token_to_id(EOS))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(cfg.pretrain_steps // 20, 1)
    meta = {"demo": "phasescope demo --stages", "demo_config": asdict(cfg), "corpus": "King James Bible"}
    # the trainers' logged metrics are declared here too: the later stages continue this run's layout
    with Observatory(
        model,
        store=str(out),
        schedule=_schedule(cfg.pretrain_steps),
        overwrite=overwrite,
        metadata=meta,
        log_scalars=tuple(TRAINER_SCALARS.values()),
        **common,
    ) as obs:
        obs.stage("pretrain", trainer="torch loop")
        train(
            model,
            opt,
            stream,
            cfg.pretrain_steps,
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            rng=np.random.default_rng(cfg.seed),
            lr_schedule=lambda s: cfg.lr * min(1.0, (s + 1) / warm),
            on_backward=lambda step, loss, lr: obs.step(step, loss=loss, lr=lr),
        )


def _args(kind, out: Path, steps: int, cfg: StagesConfig, **kw):
    return kind(
        output_dir=str(out.with_name(out.name + "-trainer")),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.post_lr,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,  # full precision: the probe forward too (TRL defaults to bf16 autocast)
        save_strategy="no",
        disable_tqdm=True,
        seed=cfg.seed,
        **kw,
    )


def _callback(out: Path, stage: str, steps: int, common: dict):
    from .probes.integrations.hf import PhasescopeCallback

    return PhasescopeCallback(str(out), schedule=_schedule(steps), continue_run=True, stage=stage, **common)


def _quiet(trainer):
    """The trainer without its per-step log printing (the run store has every logged value)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _sft(model, hf, pairs, books, out: Path, cfg: StagesConfig, common: dict, rng) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": p, "completion": " " + b} for p, b in pairs])
    args = _args(SFTConfig, out, cfg.sft_steps, cfg, max_length=cfg.seq_len)
    cb = _callback(out, "sft", cfg.sft_steps, common)
    _quiet(SFTTrainer(model=model, args=args, train_dataset=data, processing_class=hf, callbacks=[cb])).train()


def _dpo(model, hf, pairs, books, out: Path, cfg: StagesConfig, common: dict, rng) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    wrong = rng.integers(0, len(books) - 1, len(pairs))
    rows = [
        {"prompt": p, "chosen": " " + b, "rejected": " " + books[w + (w >= books.index(b))]}
        for (p, b), w in zip(pairs, wrong)
    ]
    args = _args(DPOConfig, out, cfg.dpo_steps, cfg, max_length=cfg.seq_len, beta=cfg.dpo_beta)
    ref = _model(hf, cfg)
    ref.load_state_dict(model.state_dict())
    _quiet(
        DPOTrainer(
            model=model,
            ref_model=ref,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=hf,
            callbacks=[_callback(out, "dpo", cfg.dpo_steps, common)],
        )
    ).train()


def _rl(model, hf, pairs, books, out: Path, cfg: StagesConfig, common: dict, rng) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    answers = dict(pairs)

    def exact_book(prompts, completions, **kwargs) -> list[float]:
        """The verifiable reward: 1 when the first line of the completion is exactly the verse's book."""
        return [float(c.strip().split("\n")[0].strip() == answers[p]) for p, c in zip(prompts, completions)]

    # GRPO loads its KL reference from the policy's path: the policy as DPO left it
    ref_dir = out.with_name(out.name + "-before-rlvr")
    model.save_pretrained(ref_dir)
    model.config._name_or_path = str(ref_dir)
    args = _args(
        GRPOConfig,
        out,
        cfg.rl_steps,
        cfg,
        beta=cfg.rl_beta,
        num_generations=cfg.rl_generations,
        max_completion_length=6,
    )
    _quiet(
        GRPOTrainer(
            model=model,
            reward_funcs=exact_book,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p, _ in pairs]),
            processing_class=hf,
            callbacks=[_callback(out, "rlvr", cfg.rl_steps, common)],
        )
    ).train()


def answer_stats(model, hf, pairs: list[tuple[str, str]], k: int = DIVERSITY_SAMPLES) -> dict[str, float]:
    """Sampled answers to held-out prompts (``k`` each, temperature 1, the training's random state
    untouched): ``accuracy`` (exact book name) and ``distinct_answers`` (mean distinct answers per prompt)."""
    import torch

    was = model.training
    model.eval()
    correct, distinct = [], []
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for p, b in pairs:
            enc = hf([p] * k, return_tensors="pt", padding=True)
            outs = model.generate(
                **enc, do_sample=True, max_new_tokens=6, pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id
            )
            texts = hf.batch_decode(outs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            said = [t.strip().split("\n")[0].strip() for t in texts]
            correct += [s == b for s in said]
            distinct.append(len(set(said)))
    model.train(was)
    return {"accuracy": float(np.mean(correct)), "distinct_answers": float(np.mean(distinct))}


#: Li et al. 2025's post-training directions: what each stage's model-level RankMe (and α) should do
EXPECTED = {"sft": "RankMe up", "dpo": "RankMe up", "rlvr": "RankMe down, alpha up, diversity down"}


def stages_report(out: Path) -> str:
    """The per-stage table (phases within each stage, RankMe/α at its ends, CKA to its start, the loss on
    each set), then each post-training stage against Li et al.'s direction, with accuracy and diversity."""
    from .cli_phases import phases_for_run
    from .spectra.phases import MODEL, stage_summary, stage_table
    from .store import open_group, open_run

    result, _ = phases_for_run(out)
    ds = open_run(out)
    rows = stage_summary(ds, result)
    lines = [stage_table(rows), "", "Li et al. 2025's post-training directions, model level:"]
    ev = open_group(out, "stage_eval")
    model = {r["stage"]: r for r in rows if r["probe"] == MODEL}
    names = [str(n) for n in ev["stage"].values] if ev is not None else []
    for i, stage in enumerate(["sft", "dpo", "rlvr"]):
        r = model.get(stage)
        if r is None:
            continue
        d_r = math.log(r["rankme_end"] / r["rankme_start"]) if r["rankme_start"] > 0 else math.nan
        d_a = r["alpha_end"] - r["alpha_start"]
        text = f"  {stage:<5} expected {EXPECTED[stage]:<38} measured: ln RankMe {d_r:+.3f}, alpha {d_a:+.3f}"
        if stage in names and i < len(names):
            before, after = ev.sel(stage=names[names.index(stage) - 1]), ev.sel(stage=stage)
            text += (
                f", accuracy {float(before['accuracy']):.2f}→{float(after['accuracy']):.2f}, "
                f"distinct answers {float(before['distinct_answers']):.2f}→{float(after['distinct_answers']):.2f}"
            )
        lines.append(text + f"; phases: {' → '.join(r['phases'])}")
    return "\n".join(lines)
