"""A toy of Li et al. 2025's mechanism, swept: does compression-seeking follow entropy-seeking? (issue 15)

Li et al. trace the three phases of pretraining (warmup collapse, entropy-seeking, compression-seeking) to
cross-entropy under skewed token frequencies through a representational bottleneck (d ≪ |V|). This
script builds that and nothing else, with unlimited data (so no epoch or memorisation effect):

* **the language**: an order-``k`` Markov chain over ``V`` tokens whose next-token distribution is
  ``p(y | c_1..c_k) ∝ π_y · exp(β · z_c · u_y)``, with a Zipf prior ``π_y ∝ (y + 1)^(−s)`` (``s = 0``:
  uniform), ``z_c = Σ_i 2^(−i) e_{c_i}`` a sum of random latent vectors of the context tokens
  (dimension ``r``, variance ∝ i^(−decay) along latent axis i) and ``u_y`` random latent vectors of the
  next tokens. With ``support = K`` only a context's K likeliest next tokens have probability: natural
  text is sparse (most tokens never follow a given context), and cross-entropy then keeps growing the
  logit margins of the support pattern, the low-rank component Zhao et al. find dominant late
  in training ("Implicit geometry of next-token prediction", 2024). ``B`` chains run side by side;
  every step draws a fresh batch (each chain advances one token), so no example is ever repeated.
* **the model**: the context tokens embedded (``m`` each), concatenated, an MLP to ``d`` (the
  bottleneck), optionally LayerNorm, and an untied linear read-out to ``V`` logits; AdamW.
* **the probe**: the bottleneck features of a fixed set of 1,024 contexts drawn from the chains; its
  covariance spectrum gives RankMe and α-ReQ (phasescope.spectra, fit range "auto"), at log-spaced and
  regular steps; phasescope's phase detector labels the trajectory.

Each row prints RankMe and α at init, at the collapse minimum, at the peak after it and at the end, the
phase labels, and ``third`` = yes when, after the RankMe peak, RankMe falls by ≥ 5% while α rises by
≥ 0.05 (Li et al.'s anisotropic consolidation) and the detector labels a compression-seeking segment.

    OMP_NUM_THREADS=1 .venv/bin/python bench/third_phase.py                 # the sweep (a few minutes)
    OMP_NUM_THREADS=1 .venv/bin/python bench/third_phase.py --only base     # one setting
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from phasescope.zipf import ZipfLanguage, corpus


@dataclass(frozen=True)
class Setting:
    name: str = "base"
    vocab: int = 1024  # |V|
    d: int = 32  # bottleneck width
    zipf: float = 1.1  # s of the Zipf prior; 0 = uniform frequencies
    rank: int = 128  # r, latent dimension of the language (> d: the bottleneck binds)
    beta: float = 3.0  # strength of the context in the next-token distribution
    support: int = 0  # K > 0: only the K likeliest next tokens of a context have probability (sparse, as text)
    decay: float = 1.0  # latent dimension i has variance ∝ i^(−decay): a power-law spectrum, as text has
    context: int = 2  # k, context tokens
    embed: int = 32  # m, embedding width per context token
    hidden: int = 256
    layer_norm: bool = True
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # after 100 warmup steps: constant or cosine (to 10%)
    steps: int = 4000
    batch: int = 512
    seed: int = 0


def language_options(s: Setting) -> dict:
    """The setting's language parameters, as phasescope.zipf's ZipfLanguage and corpus take them."""
    return {
        "zipf": s.zipf,
        "rank": s.rank,
        "beta": s.beta,
        "context": s.context,
        "decay": s.decay,
        "support": s.support,
        "seed": s.seed,
    }


def language(s: Setting) -> ZipfLanguage:
    """The setting's language, one chain per batch row."""
    return ZipfLanguage(s.vocab, chains=s.batch, **language_options(s))


def build_model(s: Setting, torch):
    nn = torch.nn

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(s.vocab, s.embed)
            self.mlp = nn.Sequential(
                nn.Linear(s.context * s.embed, s.hidden),
                nn.GELU(),
                nn.Linear(s.hidden, s.hidden),
                nn.GELU(),
                nn.Linear(s.hidden, s.d),
            )
            self.norm = nn.LayerNorm(s.d) if s.layer_norm else nn.Identity()
            self.head = nn.Linear(s.d, s.vocab)

        def features(self, ctx):
            return self.norm(self.mlp(self.embed(ctx).flatten(1)))

        def forward(self, ctx):
            return self.head(self.features(ctx))

    torch.manual_seed(s.seed)
    return Toy()


def capture_schedule(steps: int):
    """Log-spaced (10 per decade) plus 40 regular captures and the last step."""
    from phasescope.probes.schedules import every, log_spaced, union

    return union(log_spaced(steps, per_decade=10), every(max(1, steps // 40)), [steps - 1])


def spectrum_point(feats: np.ndarray) -> tuple[float, float]:
    """RankMe and α-ReQ (fit range "auto") of the features' covariance, through phasescope's accumulator."""
    from phasescope.spectra import CovarianceAccumulator

    m = CovarianceAccumulator(feats.shape[1]).update(feats).compute().metrics(fit_range="auto")
    return m["rankme"], m["alpha"]


def lr_schedule(s: Setting):
    """The demo's schedule (phasescope.demo.lr_at): 100 warmup steps, then constant or cosine to 10 %."""
    from phasescope.demo import DemoConfig, lr_at

    cfg = DemoConfig(steps=s.steps, lr=s.lr, warmup=100, schedule=s.schedule)
    return lambda step: lr_at(step, cfg)


def run(s: Setting) -> dict:
    import torch
    import torch.nn.functional as F

    lang = language(s)
    probe_ctx = torch.cat([lang.advance()[0] for _ in range(max(1, 1024 // s.batch))])[:1024]
    model = build_model(s, torch)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    wanted = set(capture_schedule(s.steps).steps(s.steps))
    lr_at = lr_schedule(s)
    steps, rk, al, loss_at = [], [], [], []
    t0 = time.perf_counter()
    for step in range(s.steps):
        if step in wanted:
            with torch.no_grad():
                r, a = spectrum_point(model.features(probe_ctx).numpy())
            steps.append(step), rk.append(r), al.append(a)
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        ctx, nxt = lang.advance()
        loss = F.cross_entropy(model(ctx), nxt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in wanted:
            loss_at.append(loss.item())
    return {
        "steps": np.array(steps),
        "rankme": np.array(rk),
        "alpha": np.array(al),
        "loss": np.array(loss_at),
        "seconds": time.perf_counter() - t0,
    }


def verdict(res: dict) -> dict:
    from phasescope.spectra.phases import COLLAPSE, COMPRESSION, trajectory_phases

    steps, rk, al = res["steps"], res["rankme"], res["alpha"]
    segs = trajectory_phases(steps, rk, al)
    # the collapse minimum: where the detector's first collapse ends (else the lowest RankMe of the first
    # quarter); the peak: the highest RankMe after it
    ends = [seg.end_step for seg in segs if seg.label == COLLAPSE and not seg.open_end]
    if ends:
        i_min = int(np.searchsorted(steps, ends[0]))
    else:
        early = np.flatnonzero(steps <= steps[-1] // 4)
        i_min = int(early[np.argmin(rk[early])])
    i_peak = i_min + int(np.argmax(rk[i_min:]))
    drop = 1 - rk[-1] / rk[i_peak]
    d_alpha = al[-1] - al[i_peak]
    labels = [seg.label for seg in segs]
    after_peak = [seg.label for seg in segs if seg.end_step > steps[i_peak]]
    third = drop >= 0.05 and d_alpha >= 0.05 and COMPRESSION in after_peak
    return {
        "min": (int(steps[i_min]), rk[i_min], al[i_min]),
        "peak": (int(steps[i_peak]), rk[i_peak], al[i_peak]),
        "init": (int(steps[0]), rk[0], al[0]),
        "end": (int(steps[-1]), rk[-1], al[-1]),
        "drop": drop,
        "d_alpha": d_alpha,
        "labels": labels,
        "third": third,
    }


def transformer_run(
    s: Setting, out, *, n_layer: int = 2, n_head: int = 2, seq_len: int = 64, batch: int = 16, probes: int = 400
) -> dict:
    """A real GPT-2 (from a config) pretrained on the toy's language, observed by phasescope's Observatory:
    the language of ``s`` is sampled once as 512 chains long enough for ``s.steps`` steps of ``batch`` ×
    ``seq_len`` tokens (every window is fresh), plus ``probes`` held-out windows whose last token is read
    at the final norm; the run store is written to ``out`` and labelled by ``detect_phases``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from phasescope.demo import train
    from phasescope.probes.observatory import Observatory
    from phasescope.spectra.phases import detect_phases
    from phasescope.store import open_run

    t0 = time.perf_counter()
    stream, held = corpus(s.vocab, s.steps * batch * seq_len, heldout=probes, seq_len=seq_len, **language_options(s))
    held = torch.from_numpy(held)
    torch.manual_seed(s.seed)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=s.vocab, n_positions=seq_len, n_embd=s.d, n_layer=n_layer, n_head=n_head)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))

    with Observatory(
        model,
        store=str(out),
        probes="auto",
        schedule=capture_schedule(s.steps),
        probe_inputs={"input_ids": held},
        tokens="last",
        overwrite=True,
        fit_range="auto",
    ) as obs:
        train(
            model,
            opt,
            stream,
            s.steps,
            seq_len=seq_len,
            batch_size=batch,
            rng=np.random.default_rng(s.seed),
            lr_schedule=lr_schedule(s),
            on_backward=lambda step, loss, lr: obs.step(step, loss=loss, lr=lr),
        )
    ds = open_run(out, lazy=False)
    probe = "final_norm"
    return {
        "steps": ds["capture_step"].values,
        "rankme": ds["rankme"].sel(probe=probe).values,
        "alpha": ds["alpha"].sel(probe=probe).values,
        "seconds": time.perf_counter() - t0,
        "table": detect_phases(ds).table(),
    }


BASE = Setting()
SWEEP = [
    BASE,
    replace(BASE, name="uniform (s=0)", zipf=0.0),
    replace(BASE, name="s=1.4", zipf=1.4),
    replace(BASE, name="no bottleneck (d=256)", d=256),
    replace(BASE, name="d=16", d=16),
    replace(BASE, name="d=64", d=64),
    replace(BASE, name="V=4096", vocab=4096),
    replace(BASE, name="no LayerNorm", layer_norm=False),
    replace(BASE, name="wd 0.1", weight_decay=0.1),
    replace(BASE, name="wd 0.3", weight_decay=0.3),
    replace(BASE, name="cosine", schedule="cosine"),
    replace(BASE, name="context 1", context=1),
    replace(BASE, name="context 4", context=4),
    replace(BASE, name="beta 6", beta=6.0),
    replace(BASE, name="decay 0 (flat latent)", decay=0.0),
    replace(BASE, name="decay 2", decay=2.0),
    replace(BASE, name="rank 512", rank=512),
    replace(BASE, name="no LN, wd 0.1", layer_norm=False, weight_decay=0.1),
    replace(BASE, name="V=4096, d=16, s=1.4", vocab=4096, d=16, zipf=1.4),
    replace(BASE, name="V=4096, d=16, s=1.4, 12k", vocab=4096, d=16, zipf=1.4, steps=12000),
    replace(BASE, name="V=4096, d=16, s=1.4, K=32", vocab=4096, d=16, zipf=1.4, support=32),
    replace(BASE, name="lr 1e-2", lr=1e-2),
    # the bottleneck ratio |V|/d at strong skew, long runs
    replace(BASE, name="V/d=128 (1024/8), s=1.4, 12k", vocab=1024, d=8, zipf=1.4, steps=12000),
    replace(BASE, name="V/d=128 (2048/16), s=1.4, 12k", vocab=2048, d=16, zipf=1.4, steps=12000),
    replace(BASE, name="V/d=32 (1024/32), s=1.4, 12k", vocab=1024, d=32, zipf=1.4, steps=12000),
    replace(BASE, name="V/d=128 (2048/16), s=0, 12k", vocab=2048, d=16, zipf=0.0, steps=12000),
    replace(BASE, name="V/d=128 (2048/16), s=1.0, 12k", vocab=2048, d=16, zipf=1.0, steps=12000),
    replace(BASE, name="support 16", support=16),
    replace(BASE, name="support 16, no LN", support=16, layer_norm=False),
    replace(BASE, name="support 4", support=4),
    replace(BASE, name="support 16, steps 16k", support=16, steps=16000),
    replace(BASE, name="steps 16k", steps=16000),
]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="setting names to run, separated by semicolons (default: all)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per setting")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of every setting, e.g. --set steps=8000",
    )
    ap.add_argument(
        "--transformer",
        default=None,
        metavar="DIR",
        help="train a 2-layer GPT-2 (n_embd = d) on each setting's language instead of the toy, "
        "observed by phasescope; run stores go to DIR",
    )
    ap.add_argument("--save", default=None, help="append each run's trajectory as a JSON line to this file")
    args = ap.parse_args(argv)
    settings = SWEEP
    if args.only:
        keep = {n.strip() for n in args.only.split(";")}
        settings = [s for s in SWEEP if s.name in keep]
    for kv in args.set:
        field, value = kv.split("=", 1)
        kind = type(getattr(BASE, field))
        settings = [
            replace(s, **{field: (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)})
            for s in settings
        ]
    print(
        f"{'setting':<24}{'seed':>4}{'init':>18}{'collapse':>22}{'peak':>22}{'end':>22}"
        f"{'ΔR/R':>7}{'Δα':>7} third  labels  (RankMe / α (step))"
    )
    for s in settings:
        for seed in range(args.seeds):
            if args.transformer:
                res = transformer_run(replace(s, seed=seed), Path(args.transformer) / f"{_slug(s.name)}-{seed}.zarr")
            else:
                res = run(replace(s, seed=seed))
            v = verdict(res)
            if args.save:
                import json
                from dataclasses import asdict

                with open(args.save, "a") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "setting": asdict(replace(s, seed=seed)),
                                "steps": res["steps"].tolist(),
                                "rankme": res["rankme"].tolist(),
                                "alpha": res["alpha"].tolist(),
                                "loss": list(map(float, res.get("loss", []))),
                                "labels": v["labels"],
                            }
                        )
                        + "\n"
                    )
            cells = "".join(
                f"{f'{r:.1f} / {a:.2f} ({t})':>22}" for t, r, a in (v["init"], v["min"], v["peak"], v["end"])
            )
            print(
                f"{s.name:<24}{seed:>4}{cells[4:]}{-v['drop']:>+7.2f}{v['d_alpha']:>+7.2f} "
                f"{'yes' if v['third'] else 'no':<5}  {' → '.join(v['labels'])}  [{res['seconds']:.0f} s]",
                flush=True,
            )
            if "table" in res:
                print(res["table"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
