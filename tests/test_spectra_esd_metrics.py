"""spectra/esd_metrics.py: WeightWatcher 0.7.7's per-layer ESD metrics, held against WeightWatcher itself.

Known answers on synthetic spectra, then the real peer: ``WeightWatcher(model).analyze(mp_fit=True,
randomize=True)`` on a small GPT-2 (HF Conv1D and nn.Linear weights, perturbed so tails are heavy, spikes
and correlation traps exist) and on an nn.Conv2d model covering WeightWatcher's Conv2D paths. Both sides
draw the shuffles of the randomised ESD from the same seeded MT19937 stream, so ``num_traps`` and the
``rand_*`` columns are compared exactly too.

Tolerances: integer columns must be equal. Everything else is deterministic in WeightWatcher's code and
agreed bit for bit when written (numpy 2.4, scipy 1.17); rtol 1e-9 leaves room for another LAPACK's SVD
round-off. The MP-fit columns get 1e-6: scipy's Nelder–Mead (``optimize.brute``'s ``finish=fmin``,
RMT_Util.py l. 864) stops at xatol = 1e-4, so a round-off flip of one simplex comparison could move σ by
up to that much — not seen, but not excluded on another platform.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasescope.errors import PhasescopeError
from phasescope.spectra import esd_metrics as E

torch = pytest.importorskip("torch")

INT_COLUMNS = ("N", "M", "rf", "num_evals", "num_pl_spikes", "num_spikes", "num_traps", "rand_num_spikes")
MP_COLUMNS = (
    "sigma_mp",
    "mp_softrank",
    "W_scale",
    "bulk_max",
    "bulk_min",
    "rand_sigma_mp",
    "rand_mp_softrank",
    "rand_W_scale",
    "rand_bulk_max",
    "rand_bulk_min",
)


# ------------------------------------------------------------------------------------- known answers


def test_norm_metrics_known_answer_and_order_free():
    lam = np.array([0.0, 1e-6, 1.0, 10.0, 100.0])
    m = E.esd_norm_metrics(lam[::-1], alpha=2.5)  # descending input: same numbers
    total = 111.000001
    assert m.reason is None
    assert m.norm == pytest.approx(total, rel=1e-15)
    assert m.log_norm == pytest.approx(math.log10(total), rel=1e-15)
    assert m.spectral_norm == 100.0
    assert m.log_spectral_norm == pytest.approx(2.0, rel=1e-15)
    assert m.alpha_weighted == pytest.approx(5.0, rel=1e-15)
    assert m.log_alpha_norm == pytest.approx(math.log10(1e-15 + 1 + 10**2.5 + 1e5), rel=1e-14)
    assert m.stable_rank == pytest.approx(1.11000001, rel=1e-15)
    assert E.log_norm(lam) == m.log_norm
    assert E.log_spectral_norm(list(lam)) == m.log_spectral_norm
    assert E.alpha_weighted(lam, 2.5) == m.alpha_weighted
    assert E.log_alpha_norm(lam, 2.5) == m.log_alpha_norm


def test_norm_metrics_default_alpha_is_weightwatchers_fit():
    lam = np.random.default_rng(3).pareto(2.0, 300) + 1.0
    fit = E.esd_power_law_ww(lam)
    m = E.esd_norm_metrics(lam)
    assert m.alpha == fit.alpha
    assert E.alpha_weighted(lam) == pytest.approx(fit.alpha * math.log10(lam.max()), rel=1e-15)


@pytest.mark.parametrize(
    ("lam", "why"),
    [([], "no eigenvalues"), ([0.0, 0.0, 0.0], "zero"), ([1.0, float("nan"), 2.0], "non-finite")],
)
def test_norm_metrics_degenerate_give_nan_with_reason(lam, why):
    m = E.esd_norm_metrics(np.array(lam, dtype=float), alpha=2.0)
    assert why in (m.reason or "")
    assert all(math.isnan(v) for v in (m.norm, m.log_norm, m.log_spectral_norm, m.alpha_weighted, m.log_alpha_norm))
    assert math.isnan(E.log_norm(np.array(lam, dtype=float)))


def test_norm_metrics_nan_alpha_keeps_the_norms():
    m = E.esd_norm_metrics(np.array([1e-7, 2e-7, 3.0]))  # 1 eigenvalue above the 1e-5 floor: no fit
    assert math.isnan(m.alpha) and math.isnan(m.alpha_weighted) and math.isnan(m.log_alpha_norm)
    assert m.log_norm == pytest.approx(math.log10(3.0000003)) and "floor" in m.reason


def test_power_law_recovers_a_pareto_exponent():
    # density exponent α = 1 + shape for numpy's Pareto (Lomax) + 1
    lam = np.random.default_rng(0).pareto(2.0, 2000) + 1.0
    fit = E.esd_power_law_ww(lam)
    assert fit.reason is None and not fit.small_n
    assert fit.alpha == pytest.approx(3.0, abs=0.15)
    assert 0 < fit.ks_distance < 0.05
    assert fit.n_tail == int(np.count_nonzero(lam >= fit.xmin))
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail))


@pytest.mark.parametrize(
    ("lam", "why"),
    [
        ([], "0 eigenvalues above"),
        ([3e-6, 4e-6, 1.0], "1 eigenvalues above"),
        ([2.0] * 30, "no valid power-law tail"),
        ([2.0] * 12, "no valid power-law tail"),
        ([1.0, float("inf"), 2.0], "non-finite"),
    ],
)
def test_power_law_degenerate_gives_nan_with_reason(lam, why):
    fit = E.esd_power_law_ww(np.array(lam, dtype=float))
    assert math.isnan(fit.alpha) and math.isnan(fit.ks_distance)
    assert why in (fit.reason or "")


def _wwfit():
    pytest.importorskip("weightwatcher")
    from weightwatcher.WW_powerlaw import WWFit

    return WWFit


@pytest.mark.parametrize("n", [2, 5, 8, 12, 19, 20, 21, 64, 500])
@pytest.mark.parametrize("seed", [0, 1])
def test_power_law_equals_wwfit_on_synthetic_spectra(n, seed, capsys):
    """WeightWatcher's own fit class on the same eigenvalues (floored at 1e-5 as ``fit_powerlaw`` does)."""
    wwfit = _wwfit()
    rng = np.random.default_rng(seed)
    lam = np.concatenate([rng.pareto(1.5 + seed, n) + 0.1, [1e-7, 0.0]])  # two below the floor
    ours = E.esd_power_law_ww(lam)
    ref = wwfit(lam[lam > E.EVALS_FLOOR])
    capsys.readouterr()  # WWFit prints "SMALL N PL FIT"
    assert ours.small_n == (n < E.SMALL_N)
    assert ours.alpha == pytest.approx(float(ref.alpha), rel=1e-12)
    assert ours.xmin == float(ref.xmin)
    assert ours.ks_distance == pytest.approx(float(ref.D), rel=1e-12)
    assert ours.sigma == pytest.approx(float(ref.sigma), rel=1e-12)
    assert ours.n_tail == len(lam[lam >= ref.xmin])


def test_mp_fit_on_a_gaussian_matrix_and_a_spike():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 100))  # λ(XᵀX) fills N(1 ± 1/√Q)², Q = 4
    f = E.mp_fit(E.pooled_eigenvalues(x), 400, 100)
    assert f.reason is None and f.q == 4.0
    assert f.bulk_max == pytest.approx(400 * 1.5**2, rel=0.03)
    assert f.bulk_min == pytest.approx(400 * 0.5**2, rel=0.1)
    assert f.num_spikes == 0 and 0.95 < f.mp_softrank < 1.1
    assert f.bulk_max_tw > f.bulk_max
    spiked = x + 3 * np.outer(rng.standard_normal(400), rng.standard_normal(100))
    g = E.mp_fit(E.pooled_eigenvalues(spiked), 400, 100)
    assert g.num_spikes == 1 and g.mp_softrank < 0.1
    assert E.mp_softrank(E.pooled_eigenvalues(spiked), 400, 100) == g.mp_softrank


def test_mp_fit_degenerate_and_bad_shape():
    assert "zero" in E.mp_fit(np.zeros(10), 20, 10).reason
    assert math.isnan(E.mp_fit(np.array([]), 20, 10).bulk_max)
    with pytest.raises(PhasescopeError, match="n, m > 0"):
        E.mp_fit(np.ones(10), 0, 10)


def test_randomized_esd_counts_planted_traps_not_low_rank_signal():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 100))
    assert E.correlation_traps(x) == 0
    trapped = x.copy()
    trapped.flat[rng.choice(trapped.size, 4, replace=False)] = [80.0, -70.0, 75.0, -90.0]
    r = E.randomized_esd(trapped, rng=0)
    assert r.num_traps == r.mp.num_spikes == 4 and r.replicas == 1
    assert r.eigenvalues.shape == (100,) and np.all(np.diff(r.eigenvalues) <= 0)
    assert r.max_rand_eval == r.eigenvalues[0]
    # a low-rank term is structure, not a trap: shuffling destroys it
    spiked = x + 3 * np.outer(rng.standard_normal(400), rng.standard_normal(100))
    assert E.correlation_traps(spiked) == 0 and E.mp_fit(E.pooled_eigenvalues(spiked), 400, 100).num_spikes == 1


def test_randomized_esd_seeding_and_replicas():
    x = np.random.default_rng(1).standard_normal((60, 30))
    a, b = E.randomized_esd(x, rng=5), E.randomized_esd(x, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    assert a.rand_distance == b.rand_distance and a.replicas == 5  # < 100 eigenvalues: 5 replicas
    assert a.eigenvalues.shape == (150,)
    c = E.randomized_esd(x, rng=6, replicas=2, distance=False)
    assert c.eigenvalues.shape == (60,) and math.isnan(c.rand_distance)
    assert not np.array_equal(a.eigenvalues[:30], E.randomized_esd(x, rng=6).eigenvalues[:30])
    # rand_distance: √JS of the sorted ESDs as probability vectors (natural log)
    from scipy.spatial import distance

    lam = np.sort(E.pooled_eigenvalues(x))
    gen = np.random.RandomState(9)
    r = E.randomized_esd(x, rng=gen, replicas=1)
    gen2 = np.random.RandomState(9)
    flat = x.flatten()
    gen2.shuffle(flat)  # the replica
    flat = x.flatten()
    gen2.shuffle(flat)  # the distance draw
    rand1 = np.sort(np.linalg.svd(flat.reshape(x.shape), compute_uv=False) ** 2)
    assert r.rand_distance == pytest.approx(distance.jensenshannon(lam, rand1), rel=1e-12)
    assert r.ww_softrank == pytest.approx(rand1.max() / lam.max(), rel=1e-15)


def test_conv2d_matrices_layout_and_pooling():
    w = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)  # out < in: slices transposed
    mats = E.conv2d_matrices(w)
    assert mats.shape == (6, 3, 2) and mats.dtype == np.float64
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(mats[i * 3 + j], w[:, :, i, j].T.astype(np.float64) * math.sqrt(0.5))
    raw = E.conv2d_matrices(torch.from_numpy(w), conv2d_norm=False)
    np.testing.assert_array_equal(raw[4], w[:, :, 1, 1].T)
    lam = E.pooled_eigenvalues(mats)
    assert lam.shape == (12,) and np.all(np.diff(lam) <= 0)
    expected = np.sort(np.concatenate([np.linalg.svd(m, compute_uv=False) ** 2 for m in raw]))[::-1] / 2
    np.testing.assert_allclose(lam, expected, rtol=1e-12, atol=1e-12 * expected[0])


@pytest.mark.parametrize(
    ("shape", "dims"),
    [
        ((16, 8, 3, 3), (16, 8, 9)),
        ((8, 16, 3, 3), (16, 8, 9)),  # out < in, odd kh·kw: WeightWatcher's swaps end right
        ((8, 16, 2, 2), (8, 16, 4)),  # out < in, even kh·kw: it keeps N < M (Q = 0.5)
        ((1, 2, 5, 5), (1, 2, 25)),  # out + in < kh + kw: its "channels first" branch, N = out
        ((32, 16, 1, 1), (32, 16, 1)),
    ],
)
def test_ww_conv2d_dims(shape, dims):
    assert E.ww_conv2d_dims(shape) == dims


def test_torch_and_numpy_inputs_agree():
    w = torch.randn(48, 20, generator=torch.Generator().manual_seed(0))
    a = E.ww_layer_metrics(w, rng=3)
    b = E.ww_layer_metrics(w.numpy(), rng=3)
    assert a == b
    np.testing.assert_array_equal(E.pooled_eigenvalues(w), E.pooled_eigenvalues(w.numpy()))


def test_programming_errors_are_one_line_phasescope_errors():
    cases = [
        (lambda: E.conv2d_matrices(np.ones((3, 3))), "Conv2D weight"),
        (lambda: E.ww_conv2d_dims((3, 3)), "Conv2D weight"),
        (lambda: E.pooled_eigenvalues(np.ones(5)), "weight matrix"),
        (lambda: E.esd_power_law_ww(np.ones((3, 3))), "1-D"),
        (lambda: E.randomized_esd(np.ones((4, 3)), rng="seed"), "rng"),
        (lambda: E.randomized_esd(np.ones((4, 3)), replicas=0), "replicas"),
        (lambda: E.ww_layer_metrics(np.ones((2, 3, 4))), "dense"),
        (lambda: E.pooled_eigenvalues(np.ones((3, 3), dtype=complex)), "real"),
    ]
    for call, words in cases:
        with pytest.raises(PhasescopeError, match=words) as info:
            call()
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- against WeightWatcher


@pytest.fixture(scope="module")
def weightwatcher():
    ww = pytest.importorskip("weightwatcher")
    if torch.cuda.is_available():  # WeightWatcher then reads weights as float16 and runs torch SVDs on the GPU
        pytest.skip("WeightWatcher 0.7.7 switches to float16 weights and CUDA SVDs when CUDA is available")
    return ww


def _analyze(ww, model, layers, seed):
    """WeightWatcher's rows for `layers` (ids), with its np.random draws seeded; the global state is restored."""
    # WeightWatcher shuffles with the legacy global np.random: seeding that is the only way to pin its draws
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(seed)  # noqa: NPY002
        details = ww.WeightWatcher(model=model).analyze(layers=layers, mp_fit=True, randomize=True)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return {int(r["layer_id"]): r for _, r in details.iterrows()}


def _compare(rows, weights, seed):
    """ww_layer_metrics on each weight (as WeightWatcher reads it: float32), drawing from the same stream."""
    gen = np.random.RandomState(seed)
    ours = {}
    for lid, w in weights.items():  # ascending layer ids: WeightWatcher's order of draws
        ours[lid] = row = E.ww_layer_metrics(w.detach().float().numpy(), rng=gen)
        ref = rows[lid]
        for col, v in row.items():
            want = float(ref[col])
            if col in INT_COLUMNS:
                assert v == want, (lid, col, v, want)
            else:
                rtol = 1e-6 if col in MP_COLUMNS else 1e-9
                assert v == pytest.approx(want, rel=rtol, abs=1e-12), (lid, col, v, want)
    return ours


def _planted_gpt2():
    """A d=128 GPT-2 whose first attention matrix has a heavy-tailed low-rank term and six large single
    elements (correlation traps); returns (model, generator for further plants)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    h = model.transformer.h[0]
    with torch.no_grad():
        s = 0.01 * torch.arange(1, 25, dtype=torch.float32) ** -0.8  # power-law low-rank term: heavy tail
        h.attn.c_attn.weight += (torch.randn(128, 24, generator=g) * s) @ torch.randn(24, 384, generator=g)
        flat = h.attn.c_attn.weight.view(-1)  # and six large single elements: correlation traps
        flat[torch.randperm(flat.numel(), generator=g)[:6]] = torch.tensor([1.5, -1.2, 1.0, -0.9, 0.8, 1.1])
    return model, g


def test_gpt2_layers_match_weightwatcher(weightwatcher):
    model, g = _planted_gpt2()
    h = model.transformer.h[0]
    with torch.no_grad():
        h.attn.c_proj.weight += 0.05 * torch.randn(128, 1, generator=g) @ torch.randn(1, 128, generator=g)
        wpe = model.transformer.wpe.weight  # heavy-tailed elements, 64 eigenvalues (5 replicas)
        wpe.copy_(0.02 * torch.distributions.StudentT(2.5).sample(wpe.shape))
    modules = dict(enumerate(model.named_modules()))  # WeightWatcher's layer ids (start_ids=0)
    names = ["transformer.wpe", "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]
    names += ["lm_head"]  # HF Conv1D (dense for WeightWatcher, the first three) and nn.Linear
    ids = [i for i, (n, _) in modules.items() if n in names]
    rows = _analyze(weightwatcher, model, ids, seed=7)
    assert sorted(rows) == ids
    ours = _compare(rows, {i: modules[i][1].weight for i in ids}, seed=7)
    by_name = {modules[i][0]: ours[i] for i in ids}
    # the paths the comparison covered
    assert by_name["transformer.h.0.attn.c_proj"]["Q"] == 1.0  # quarter-circle fit
    assert by_name["transformer.h.0.attn.c_attn"]["num_traps"] == 6
    assert by_name["transformer.wpe"]["num_traps"] > 0 and by_name["transformer.wpe"]["M"] < 100
    assert by_name["transformer.h.0.attn.c_attn"]["num_spikes"] > 0
    assert by_name["transformer.h.0.attn.c_attn"]["alpha"] < 4 < by_name["lm_head"]["alpha"]


def test_conv2d_layers_match_weightwatcher(weightwatcher):
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 16, 3),  # weight (16, 8, 3, 3): 72 pooled eigenvalues, 5 replicas
        nn.Conv2d(16, 8, 3),  # (8, 16, 3, 3): slices transposed
        nn.Conv2d(16, 8, 2),  # (8, 16, 2, 2): WeightWatcher's N < M quirk (ww_conv2d_dims)
        nn.Conv2d(16, 32, 1),  # (32, 16, 1, 1): 16 eigenvalues, the small-N power-law fit
        nn.Conv2d(2, 1, 5),  # (1, 2, 5, 5): its "channels first" branch
    )
    with torch.no_grad():
        net[0].weight[3, 2, 1, 1] = 2.0
        net[1].weight[0, 5, 0, 2] = -1.5
    rows = _analyze(weightwatcher, net, [1, 2, 3, 4, 5], seed=3)
    assert sorted(rows) == [1, 2, 3, 4, 5]
    ours = _compare(rows, {i + 1: conv.weight for i, conv in enumerate(net)}, seed=3)
    assert ours[1]["num_traps"] > 0 and ours[2]["num_traps"] > 0
    assert (ours[3]["N"], ours[3]["M"]) == (8, 16)
    assert ours[4]["num_evals"] < E.SMALL_N


def test_weight_spectra_carry_weightwatchers_columns(weightwatcher):
    """weight_spectra(fit="ww", mp=True, traps=True), phasescope's own eigenvalue route (float32 Gram of the smaller
    side, float64 eigvalsh, batched), gives WeightWatcher 0.7.7's analyze() columns per matrix: its tail
    fit, norm metrics, MP fit and, on the layer with six planted large elements, its six traps."""
    from phasescope.spectra import weights as W

    model, _ = _planted_gpt2()
    modules = dict(enumerate(model.named_modules()))
    names = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_proj"]
    ids = [i for i, (n, _) in modules.items() if n in names]
    rows = _analyze(weightwatcher, model, ids, seed=7)
    ours = W.weight_spectra(model, fit="ww", mp=True, traps=True, select=lambda n: n.removesuffix(".weight") in names)
    assert len(ours) == len(names)
    columns = {
        "alpha": "alpha",
        "xmin": "xmin",
        "D": "ks_distance",
        "num_pl_spikes": "n_tail",
        "log_norm": "log_norm",
        "log_spectral_norm": "log_spectral_norm",
        "alpha_weighted": "alpha_weighted",
        "log_alpha_norm": "log_alpha_norm",
        "stable_rank": "stable_rank",
        "mp_softrank": "mp_soft_rank",
        "bulk_max": "mp_bulk_max",
        "num_spikes": "num_spikes",
    }
    for i in ids:
        ws = ours[f"{modules[i][0]}.weight"]
        for col, attr in columns.items():
            want, got = float(rows[i][col]), float(getattr(ws, attr))
            assert got == pytest.approx(want, rel=1e-5, abs=1e-12), (modules[i][0], col, got, want)
    assert ours["transformer.h.0.attn.c_attn.weight"].num_traps == 6  # the planted elements, whatever the draw
    # the default fit is phasescope's own; WeightWatcher's columns that do not depend on α stay equal
    key = "transformer.h.0.mlp.c_fc.weight"
    own = W.weight_spectra(model, mp=True, select=lambda n: n == key)[key]
    assert own.fit == "clauset" and own.log_norm == ours[key].log_norm and own.mp_soft_rank == ours[key].mp_soft_rank
    assert "traps" in own.reasons and np.isnan(own.num_traps)
    with pytest.raises(PhasescopeError, match="weight fit must be one of 'clauset', 'ww'"):
        W.weight_spectra(model, fit="WW")


def test_weight_spectra_read_conv2d_weights_as_weightwatcher(weightwatcher):
    from torch import nn

    from phasescope.spectra import weights as W

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 1))
    rows = _analyze(weightwatcher, net, [1, 2], seed=3)
    ours = W.weight_spectra(net, fit="ww", mp=True)
    assert list(ours) == ["0.weight", "1.weight"]
    for i, name in ((1, "0.weight"), (2, "1.weight")):
        for col, attr in (("alpha", "alpha"), ("log_norm", "log_norm"), ("mp_softrank", "mp_soft_rank")):
            assert getattr(ours[name], attr) == pytest.approx(float(rows[i][col]), rel=1e-9), (name, col)
    assert W.weight_spectra(net, conv2d=False) == {}
