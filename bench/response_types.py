"""Response types at tiny scale (issue 16; Li et al. 2024, "What Happened in LLMs Layers when Trained for
Fast vs. Slow Thinking: A Gradient Perspective"): do terse answers give larger gradients, and larger
differences across layers, than answers with worked steps?

    OMP_NUM_THREADS=1 .venv/bin/python bench/response_types.py [--layers 6] [--steps 600] [--seed 0]

1. A GPT-2 (``--layers`` blocks, d = 64) learns arithmetic word problems answered both ways
   (``phasescope.arithmetic``; a byte-level BPE trained on them), ``--steps`` steps of next-token loss, and
   is saved as a Hugging Face checkpoint.
2. ``phasescope analyze --gradients`` on 64 held-out problems answered tersely, and on the same problems
   answered with worked steps: two runs, the gradient of each set's response-only mean loss.
3. Layer_Gradient's own statistic, independently: per problem, the response-only loss's gradient, its
   nuclear norm per matrix (S_sum, Layer_Gradient's ``torch.linalg.svd``), averaged over problems.

Printed per projection kind (GPT-2: qkv = attn.c_attn, o = attn.c_proj, mlp_in, mlp_out): the nuclear
norm averaged over layers and the across-layer mean absolute difference (MAD), terse vs worked, for both;
and the ratio terse/worked. The paper's finding holds here when terse > worked in both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def train_model(problems, layers: int, steps: int, seed: int, out: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from phasescope.corpus import EOS, hf_tokenizer, train_tokenizer
    from phasescope.demo import save_checkpoint

    texts = [f"Question: {p.question}\nAnswer:{p.response(s)}" for p in problems for s in ("terse", "worked")]
    tok = train_tokenizer(texts, 512, cache=out / "tok")
    hf = hf_tokenizer(tok)
    eos = tok.token_to_id(EOS)
    ids = [[*tok.encode(t).ids, eos] for t in texts]
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(hf), n_positions=128, n_embd=64, n_layer=layers, n_head=4, bos_token_id=eos, eos_token_id=eos
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = [ids[i][:128] for i in rng.integers(0, len(ids), 16)]
        width = max(len(b) for b in batch)
        x = torch.full((len(batch), width), eos)
        labels = torch.full((len(batch), width), -100)
        for k, b in enumerate(batch):
            x[k, : len(b)] = torch.tensor(b)
            labels[k, : len(b)] = torch.tensor(b)
        model(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    folder = out / "ckpt" / f"checkpoint-{steps}"
    save_checkpoint(folder, model.eval(), hf)
    return folder, hf


def per_sample(model, hf, problems, style: str) -> dict[tuple[str, int], float]:
    """Layer_Gradient's S_sum: per problem the nuclear norm of each block matrix's gradient of the
    response-only loss (full SVD, as its code), averaged over problems; keyed (kind, layer)."""
    from phasescope.gradients import matrix_group

    named = [(n, p) for n, p in model.named_parameters() if p.ndim == 2 and matrix_group(n)["block"] is not None]
    sums: dict[tuple[str, int], list[float]] = {}
    for p in problems:
        prompt = f"Question: {p.question}\nAnswer:"
        start = len(hf(prompt)["input_ids"])
        ids = hf(prompt + p.response(style), return_tensors="pt")["input_ids"]
        labels = ids.clone()
        labels[0, :start] = -100
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        for n, w in named:
            g = matrix_group(n)
            s = torch.linalg.svd(w.grad.double(), full_matrices=False)[1]
            sums.setdefault((g["kind"], g["block"]), []).append(float(s.sum()))
    return {k: float(np.mean(v)) for k, v in sums.items()}


def summary(values: dict[tuple[str, int], float]) -> dict[str, tuple[float, float]]:
    """kind → (mean over layers, across-layer MAD)."""
    from phasescope.dashboard.gradient_profile_figures import mean_absolute_difference

    out = {}
    for kind in sorted({k for k, _ in values}):
        y = [values[(kind, layer)] for layer in sorted(lay for k, lay in values if k == kind)]
        out[kind] = (float(np.mean(y)), mean_absolute_difference(y))
    return out


def stored(run: Path) -> dict[tuple[str, int], float]:
    from phasescope.gradients import matrix_group
    from phasescope.store import open_run

    ds = open_run(run)
    vals = ds["matrix_grad_nuclear"].isel(capture_step=-1).values
    return {
        (matrix_group(str(m))["kind"], matrix_group(str(m))["block"]): float(v)
        for m, v in zip(ds["matrix"].values, vals)
        if matrix_group(str(m))["block"] is not None
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import GPT2LMHeadModel

    from phasescope.arithmetic import word_problems, write_jsonl
    from phasescope.probes.offline import analyze

    problems = word_problems(1200 + args.held_out, seed=args.seed)
    train, held = problems[: -args.held_out], problems[-args.held_out :]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        folder, hf = train_model(train, args.layers, args.steps, args.seed, out)
        print(
            f"trained a {args.layers}-layer GPT-2 on both answer styles for {args.steps} steps "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        rows = {}
        for style in ("terse", "worked"):
            data = write_jsonl(held, out / f"{style}.jsonl", style)
            run = out / f"{style}.zarr"
            analyze(folder.parent, str(data), run, gradients=True, workers=0, progress=False, batch_size=16)
            model = GPT2LMHeadModel.from_pretrained(folder)
            rows[style] = (summary(stored(run)), summary(per_sample(model, hf, held, style)))
        print(f"\n{'kind':<9}{'':>2}{'set gradient (analyze)':^44}{'per problem, averaged (Layer_Gradient)':^44}")
        print(f"{'':<11}" + ("{:>10}{:>10}{:>10}{:>10}".format("S_sum T", "S_sum W", "MAD T", "MAD W")) * 2)
        for kind in rows["terse"][0]:
            cells = ""
            for j in (0, 1):
                t, w = rows["terse"][j][kind], rows["worked"][j][kind]
                cells += f"{t[0]:>10.3f}{w[0]:>10.3f}{t[1]:>10.3f}{w[1]:>10.3f}"
            print(f"{kind:<11}{cells}")
        for j, what in ((0, "set gradient"), (1, "per problem")):
            bigger = sum(rows["terse"][j][k][0] > rows["worked"][j][k][0] for k in rows["terse"][j])
            spread = sum(rows["terse"][j][k][1] > rows["worked"][j][k][1] for k in rows["terse"][j])
            n = len(rows["terse"][j])
            print(f"{what}: terse > worked in S_sum for {bigger}/{n} kinds, in MAD for {spread}/{n}")


if __name__ == "__main__":
    main()
