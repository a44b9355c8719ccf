"""Synthetic runs with exactly known spectra, for the dashboard's tests, benchmark and screenshots.

Probe j at capture c has eigenvalues λ_k = k^(−α_{c,j}) (k = 1…R), an exact power law, so the stored
α-ReQ is α_{c,j} and RankMe (Li et al. 2025) is exp(−Σ p_k log p_k) with p_k = λ_k/Σλ + 1e-7, both
computed here in closed form from the same λ. α follows a smooth rise-and-fall over log-steps whose
height grows with depth, so heatmaps and trajectories have visible structure.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from phasescope.store import RunWriter, open_run


def capture_schedule(n_steps: int) -> np.ndarray:
    """Capture steps: 0, then log-spaced up to n_steps − 1, unique (like Li et al.'s checkpoints)."""
    if n_steps <= 1:
        return np.zeros(1, dtype=np.int64)
    ls = np.unique(np.round(np.logspace(0, math.log10(n_steps - 1), 64)).astype(np.int64))
    return np.concatenate([[0], ls])


def alpha_grid(steps: np.ndarray, n_probes: int) -> np.ndarray:
    """α_{c,j} for capture steps × probes: 0.8 + depth-scaled bump centred at log10(step) = 1.5."""
    ls = np.log10(np.maximum(np.asarray(steps, float), 1.0))
    depth = (np.arange(n_probes) + 1) / n_probes
    return 0.8 + (0.5 + 1.5 * depth)[None, :] * np.exp(-((ls[:, None] - 1.5) ** 2) / 0.5)


def power_spectrum(alpha: float, rank: int) -> np.ndarray:
    """λ_k = k^(−α), k = 1…rank."""
    return np.arange(1, rank + 1, dtype=float) ** (-alpha)


def rankme_of(eigs: np.ndarray) -> float:
    """RankMe (Li et al. 2025): exp(−Σ p_k log p_k), p_k = λ_k/Σλ + 1e-7."""
    p = eigs / eigs.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_names(n: int) -> list[str]:
    return [f"layer.{i:02d}" for i in range(n)]


def param_names(n_layers: int) -> list[str]:
    names = ["wte.weight"]
    for i in range(n_layers):
        names += [f"h.{i}.attn.c_attn.weight", f"h.{i}.mlp.c_fc.weight"]
    return [*names, "ln_f.weight"]


def synthetic_dataset(
    n_steps: int = 200,
    n_probes: int = 6,
    rank: int = 128,
    *,
    n_layers: int = 3,
    tokens_per_step: int | None = 4096,
    finished: bool = True,
    name: str = "synthetic",
    capture_every_step: bool = False,
):
    """An ``xarray.Dataset`` in the pinned store layout (docs/CONTRACTS.md), built in memory.
    Captures follow ``capture_schedule`` unless ``capture_every_step``."""
    import xarray as xr

    steps = np.arange(n_steps, dtype=np.int64)
    cap = steps.copy() if capture_every_step else capture_schedule(n_steps)
    alphas = alpha_grid(cap, n_probes)
    k = np.arange(1, rank + 1, dtype=float)
    eig = np.exp(-alphas[..., None] * np.log(k))  # λ_k = k^(−α), vectorised
    p = eig / eig.sum(-1, keepdims=True) + 1e-7
    rk = np.exp(-(p * np.log(p)).sum(-1))
    params = param_names(n_layers)
    mats = [f"h.{i}.attn.{t}" for i in range(n_layers) for t in ("q", "k", "v", "o")]
    rng = np.random.default_rng(0)
    gnorm = np.exp(-steps / max(1, n_steps) * 2)[:, None] * (1 + np.arange(len(params)))[None, :] * 0.1
    attrs = {
        "model": "synthetic-gpt",
        "model_config": {"n_layer": n_layers, "n_embd": rank},
        "schedule": "log-spaced",
        "corpus": "synthetic",
        "finished": finished,
        "name": name,
    }
    if tokens_per_step:
        attrs["tokens_per_step"] = tokens_per_step
    return xr.Dataset(
        {
            "loss": ("step", 6.0 * np.exp(-steps / max(1, n_steps) * 3) + 2.0),
            "lr": ("step", np.full(n_steps, 1e-3)),
            "grad_norm": ("step", np.sqrt((gnorm**2).sum(1))),
            "param_grad_norm": (("step", "param"), gnorm),
            "flag_nonfinite": ("step", np.zeros(n_steps, np.int8)),
            "rankme": (("capture_step", "probe"), rk),
            "alpha": (("capture_step", "probe"), alphas),
            "alpha_r2": (("capture_step", "probe"), np.ones_like(alphas)),
            "eigenvalues": (("capture_step", "probe", "rank"), eig),
            "n_samples": (("capture_step", "probe"), np.full(alphas.shape, 400)),
            "matrix_grad_nuclear": (("capture_step", "matrix"), rng.uniform(1, 2, (cap.size, len(mats)))),
            "matrix_grad_spectral": (("capture_step", "matrix"), rng.uniform(0.1, 0.5, (cap.size, len(mats)))),
        },
        coords={
            "step": steps,
            "capture_step": cap,
            "probe": probe_names(n_probes),
            "param": params,
            "rank": np.arange(1, rank + 1),
            "matrix": mats,
        },
        attrs=attrs,
    )


def write_synthetic_run(
    path: str | Path,
    n_steps: int = 200,
    n_probes: int = 6,
    rank: int = 128,
    *,
    n_layers: int = 3,
    tokens_per_step: int | None = 4096,
    finish: bool = True,
    upto: int | None = None,
    resume: bool = False,
    model: str = "synthetic-gpt",
    delay: float = 0.0,
    capture_every_step: bool = False,
):
    """Write the same synthetic run to a real store with ``phasescope.store.RunWriter``.
    ``upto`` stops after that many steps and leaves the run live (unclosed); ``resume`` continues it;
    ``delay`` sleeps that many seconds after each step (a slow live writer)."""
    ds = synthetic_dataset(
        n_steps,
        n_probes,
        rank,
        n_layers=n_layers,
        tokens_per_step=tokens_per_step,
        capture_every_step=capture_every_step,
    )
    params = [str(p) for p in ds["param"].values]
    mats = [str(m) for m in ds["matrix"].values]
    cap = {int(s): i for i, s in enumerate(ds["capture_step"].values)}
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("finished", "name")}
    attrs["model"] = model
    w = RunWriter(
        path,
        probes=[str(p) for p in ds["probe"].values],
        params=params,
        metrics=["rankme", "alpha", "alpha_r2"],
        max_rank=rank,
        matrices=mats,
        matrix_stats=["grad_nuclear", "grad_spectral"],
        attrs=attrs,
        overwrite=not resume,
        resume=resume,
    )
    start = 0
    if resume:
        done = open_run(path)
        start = int(done["step"].values[-1]) + 1 if done.sizes.get("step", 0) else 0
    stop = n_steps if upto is None else min(n_steps, upto)
    for s in range(start, stop):
        w.append_step(
            s,
            {k: float(ds[k].values[s]) for k in ("loss", "lr", "grad_norm")},
            params={"grad_norm": ds["param_grad_norm"].values[s]},
            flags={"nonfinite": 0},
        )
        if s in cap:
            c = cap[s]
            w.append_capture(
                s,
                {m: ds[m].values[c] for m in ("rankme", "alpha", "alpha_r2")},
                eigenvalues=ds["eigenvalues"].values[c],
                n_samples=ds["n_samples"].values[c],
                matrices={
                    k.removeprefix("matrix_"): ds[k].values[c] for k in ("matrix_grad_nuclear", "matrix_grad_spectral")
                },
            )
        if delay:
            time.sleep(delay)
    if finish and stop == n_steps:
        w.close()  # marks attrs["finished"] = True
    return path
