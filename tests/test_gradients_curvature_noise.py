"""gradients/curvature.py and gradients/noise.py against exact Hessians and brute-force numpy statistics."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from phasescope.errors import PhasescopeError
from phasescope.gradients.curvature import CurvatureResult, hessian_top_eigenvalue, hessian_trace, model_loss_fn
from phasescope.gradients.noise import NOISE_STATS, MicroBatchGradients, gradient_noise, micro_batch_gradients

# ---------------------------------------------------------------------------------------------- fixtures


def _mlp(dtype=torch.float64, seed=0):
    """4 → 6 (tanh) → 3: 51 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _data(n=16, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)  # drawn in float64, then cast: the same data in every dtype
    return torch.randn(n, 4, generator=g, dtype=torch.float64).to(dtype), torch.randn(
        n, 3, generator=g, dtype=torch.float64
    ).to(dtype)


def _exact_hessian(loss_fn, params):
    """The full Hessian of loss_fn over the flattened parameter vector (float64)."""
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()

    def flat(t):
        parts = torch.split(t, sizes)
        return loss_fn({n: q.reshape(s) for n, q, s in zip(names, parts, shapes, strict=True)})

    return torch.autograd.functional.hessian(flat, theta)


@pytest.fixture(scope="module")
def mlp_problem():
    model = _mlp()
    x, y = _data()
    params = dict(model.named_parameters())
    loss_fn = model_loss_fn(model, lambda out: nn.functional.mse_loss(out, y), x)
    H = _exact_hessian(loss_fn, params)
    return model, params, loss_fn, H, torch.linalg.eigvalsh(H)


# ---------------------------------------------------------------------------------------------- curvature


def test_top_eigenvalue_matches_exact_hessian(mlp_problem):
    _, params, loss_fn, _, ev = mlp_problem
    assert ev[-1] > abs(ev[0])  # the dominant eigenvalue is the top algebraic one here
    res = hessian_top_eigenvalue(loss_fn, params, iters=1000, tol=1e-12)
    assert isinstance(res, CurvatureResult) and res.reason is None and res.converged
    assert 2 <= res.iterations < 1000 and math.isnan(res.stderr)
    assert res.value == pytest.approx(float(ev[-1]), rel=1e-6)
    # an iteration budget too small to meet the tolerance: the last estimate, flagged as not converged
    short = hessian_top_eigenvalue(loss_fn, params, iters=2, tol=1e-12)
    assert not short.converged and short.iterations == 2 and math.isfinite(short.value) and short.reason is None
    # the seed fixes the start vector: same seed, same answer bit for bit
    assert hessian_top_eigenvalue(loss_fn, params, seed=3) == hessian_top_eigenvalue(loss_fn, params, seed=3)


def test_top_eigenvalue_is_top_algebraic_when_dominant_eigenvalue_is_negative(mlp_problem):
    _, params, loss_fn, _, ev = mlp_problem
    # −loss: the eigenvalue of largest magnitude is −ev[-1] < 0; the top algebraic one is −ev[0] > 0
    res = hessian_top_eigenvalue(lambda p: -loss_fn(p), params, iters=5000, tol=1e-13)
    assert res.converged and res.reason is None
    assert res.value == pytest.approx(float(-ev[0]), rel=1e-4)
    # a quadratic ½θᵀAθ with known spectrum {−5, 1, 2, 3}: the answer is 3, not −5
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    A = q @ torch.diag(torch.tensor([-5.0, 1.0, 2.0, 3.0], dtype=torch.float64)) @ q.T
    w = {"w": torch.randn(4, dtype=torch.float64, requires_grad=True)}
    res = hessian_top_eigenvalue(lambda p: 0.5 * p["w"] @ A @ p["w"], w, iters=2000, tol=1e-14)
    assert res.converged and res.value == pytest.approx(3.0, rel=1e-8)
    assert hessian_trace(lambda p: 0.5 * p["w"] @ A @ p["w"], w, samples=3).value == pytest.approx(
        float(torch.trace(A)), abs=30
    )


def test_float32_model_top_eigenvalue_close_to_float64_exact(mlp_problem):
    _, _, _, _, ev = mlp_problem
    model = _mlp(torch.float32)
    x, y = _data(dtype=torch.float32)
    loss_fn = model_loss_fn(model, lambda out: nn.functional.mse_loss(out, y), x)
    res = hessian_top_eigenvalue(loss_fn, dict(model.named_parameters()), iters=300, tol=1e-7)
    assert res.reason is None and res.value == pytest.approx(float(ev[-1]), rel=1e-4)


def test_hutchinson_single_vector_equals_exact_quadratic_form(mlp_problem):
    _, params, loss_fn, H, _ = mlp_problem
    # the documented draw: one CPU generator seeded with `seed`, int8 bits per parameter in order, 0 → −1
    gen = torch.Generator().manual_seed(7)
    v = torch.cat(
        [
            (torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).double() * 2 - 1).reshape(-1)
            for p in params.values()
        ]
    )
    res = hessian_trace(loss_fn, params, samples=1, seed=7)
    assert res.reason is None and res.iterations == 1 and math.isnan(res.stderr)
    assert res.value == pytest.approx(float(v @ H @ v), rel=1e-10, abs=1e-8)


def test_hutchinson_trace_within_four_standard_errors(mlp_problem):
    _, params, loss_fn, H, _ = mlp_problem
    res = hessian_trace(loss_fn, params, samples=800, seed=1)
    assert res.converged and res.iterations == 800 and 0 < res.stderr < 0.2
    assert abs(res.value - float(torch.trace(H))) < 4 * res.stderr


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    d = torch.tensor([0.5, -2.0, 3.0, 7.25], dtype=torch.float64)
    p = {"a": torch.randn(2, dtype=torch.float64, requires_grad=True), "b": torch.randn(2, 1, dtype=torch.float64)}
    p["b"].requires_grad_(True)

    def loss(q):
        w = torch.cat([q["a"], q["b"].reshape(-1)])
        return 0.5 * (d * w * w).sum()

    res = hessian_trace(loss, p, samples=5)
    assert res.value == pytest.approx(float(d.sum()), abs=1e-12) and res.stderr == pytest.approx(0.0, abs=1e-12)


def test_frozen_parameters_are_left_out_and_model_state_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double().train()
    model[3].bias.requires_grad_(False)
    x, y = _data(n=12)
    x, y = x[:, :3], y[:, :2]
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {n: b.clone() for n, b in model.named_buffers()}
    params = dict(model.named_parameters())
    loss_fn = model_loss_fn(model, lambda out: nn.functional.mse_loss(out, y), x)
    res = hessian_top_eigenvalue(loss_fn, params, iters=500, tol=1e-12)
    tr = hessian_trace(loss_fn, params, samples=3)
    assert res.reason is None and tr.reason is None and res.converged
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    H = _exact_hessian(lambda q: loss_fn({**params, **q}), trainable)
    assert res.value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n  # BatchNorm running statistics are not updated
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")


class _OnceDifferentiableTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _TanhGradNoBackward(torch.autograd.Function):
    """grad · (1 − y²) with no backward of its own: differentiating it raises."""

    @staticmethod
    def forward(ctx, grad, y):
        return grad * (1 - y * y)


class _TanhFirstOrderOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _TanhGradNoBackward.apply(grad, y)


def _bad_losses():
    model = _mlp()
    x, y = _data()
    ok = model_loss_fn(model, lambda out: nn.functional.mse_loss(out, y), x)
    w = model[0].weight

    def detached(p):
        return ok({n: t.detach() for n, t in p.items()})

    def once_differentiable(p):
        h = _OnceDifferentiableTanh.apply(x @ p["0.weight"].T + p["0.bias"])
        return nn.functional.mse_loss(h @ p["2.weight"].T + p["2.bias"], y)

    def first_order_only(p):
        h = _TanhFirstOrderOnly.apply(x @ p["0.weight"].T + p["0.bias"])
        return nn.functional.mse_loss(h @ p["2.weight"].T + p["2.bias"], y)

    def sign(p):
        return (torch.sign(p["0.weight"]) * w.detach()).sum() + 0 * torch.sign(p["2.bias"]).sum()

    def argmax(p):
        return torch.argmax(p["0.weight"]).double()

    def raises(p):
        raise RuntimeError("shape mismatch\nsecond line")

    return {
        "detached parameters": (detached, "no autograd graph"),
        "once_differentiable": (once_differentiable, "not twice differentiable"),
        "no double backward": (first_order_only, "Hessian-vector product failed: NotImplementedError"),
        "sign": (sign, "identically zero"),
        "argmax": (argmax, "no autograd graph"),
        "non-finite loss": (lambda p: ok(p) * float("inf"), "not finite"),
        "loss_fn raises": (raises, "RuntimeError: shape mismatch"),
        "non-scalar loss": (lambda p: p["0.weight"] * 2, "scalar tensor"),
        "nan gradient": (
            lambda p: (p["0.weight"].abs().sqrt() * 0).sum() + 0 * torch.sqrt(p["0.bias"] * 0).sum(),
            "not finite",
        ),
    }, dict(model.named_parameters())


@pytest.mark.parametrize("case", list(_bad_losses()[0]))
def test_bad_losses_give_nan_and_a_reason(case):
    losses, params = _bad_losses()
    loss_fn, expected = losses[case]
    if case == "nan gradient":
        params = {**params, "0.bias": torch.zeros_like(params["0.bias"]).requires_grad_(True)}
        params["0.weight"] = torch.zeros_like(params["0.weight"]).requires_grad_(True)
    for res in (hessian_top_eigenvalue(loss_fn, params), hessian_trace(loss_fn, params, samples=2)):
        assert math.isnan(res.value) and res.reason is not None and "\n" not in res.reason, (case, res)
        assert expected in res.reason, (case, res.reason)
    frozen = {n: p.detach() for n, p in params.items()}
    assert hessian_trace(losses["detached parameters"][0], frozen).reason == "no parameter requires grad"


def test_loss_linear_in_parameters_has_zero_hessian():
    c = torch.tensor([1.0, -2.0, 0.5])
    p = {"w": torch.randn(3, requires_grad=True)}
    for res in (
        hessian_top_eigenvalue(lambda q: (q["w"] * c).sum(), p),
        hessian_trace(lambda q: (q["w"] * c).sum(), p),
    ):
        assert res.value == 0.0 and res.reason is None and res.converged


def test_curvature_argument_errors_raise():
    p = {"w": torch.randn(3, requires_grad=True)}
    f = lambda q: (q["w"] ** 2).sum()  # noqa: E731
    with pytest.raises(PhasescopeError, match="iters"):
        hessian_top_eigenvalue(f, p, iters=0)
    with pytest.raises(PhasescopeError, match="samples"):
        hessian_trace(f, p, samples=0)
    with pytest.raises(PhasescopeError, match="mapping"):
        hessian_trace(f, [p["w"]])
    with pytest.raises(PhasescopeError, match="callable"):
        hessian_trace("loss", p)
    with pytest.raises(PhasescopeError, match="tol"):
        hessian_top_eigenvalue(f, p, tol=-1.0)


# ---------------------------------------------------------------------------------------------- noise


def _mse_loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _bruteforce_micro_grads(model, batch, splits):
    """(B, P) numpy float64 matrix: one deep copy and one loss.backward() per micro-batch."""
    x, y = batch
    b = x.shape[0] // splits
    rows = []
    for i in range(splits):
        m = copy.deepcopy(model)
        _mse_loss(m, (x[i * b : (i + 1) * b], y[i * b : (i + 1) * b])).backward()
        rows.append(np.concatenate([p.grad.detach().double().numpy().ravel() for p in m.parameters()]))
    return np.stack(rows)


def _numpy_stats(G, b):
    """The module's formulas written out directly (explicit projections, no algebraic shortcuts)."""
    B = G.shape[0]
    gbar = G.mean(axis=0)
    g2 = gbar @ gbar
    var = b * G.var(axis=0, ddof=1)
    keep = var > 0
    gsnr = float(np.mean(gbar[keep] ** 2 / var[keep]))
    norm = math.sqrt(sum(np.sum((g - gbar) ** 2) for g in G) / (B - 1) / B / g2)
    inner = math.sqrt(sum((g @ gbar - g2) ** 2 for g in G) / (B - 1) / B / g2**2)
    ortho = math.sqrt(sum(np.sum((g - (g @ gbar / g2) * gbar) ** 2) for g in G) / (B - 1) / B / g2)
    return {"gsnr": gsnr, "norm_test": norm, "inner_product_test": inner, "orthogonality_test": ortho}


def test_gradient_noise_matches_bruteforce_numpy():
    model = _mlp()
    batch = _data(n=24, seed=5)
    mb = micro_batch_gradients(model, _mse_loss, batch, 4)
    assert mb.reason is None and mb.micro_batch_size == 6 and len(mb.grads) == 4
    G = _bruteforce_micro_grads(model, batch, 4)
    mine = np.stack([np.concatenate([g[n].numpy().ravel() for n in g]) for g in mb.grads])
    np.testing.assert_allclose(mine, G, rtol=1e-12, atol=1e-15)

    groups = {"layer0": ["0.weight", "0.bias"], "layer2": ["2.weight", "2.bias"], "biases": ["0.bias", "2.bias"]}
    res = gradient_noise(mb, groups=groups)
    assert res["reason"] is None and res["micro_batches"] == 4 and res["micro_batch_size"] == 6
    for stat, val in _numpy_stats(G, 6).items():
        assert res[stat] == pytest.approx(val, rel=1e-6), stat
    cols, start = {}, 0
    for n, p in model.named_parameters():
        cols[n] = np.arange(start, start + p.numel())
        start += p.numel()
    for group, names in groups.items():
        ref = _numpy_stats(G[:, np.concatenate([cols[n] for n in names])], 6)
        for stat in NOISE_STATS:
            assert res["groups"][group][stat] == pytest.approx(ref[stat], rel=1e-6), (group, stat)
    # default groups: one per parameter; the (B, P) matrix with column groups gives the same numbers
    per_param = gradient_noise(mb.grads, micro_batch_size=6)
    assert set(per_param["groups"]) == {n for n, _ in model.named_parameters()}
    mat = gradient_noise(torch.from_numpy(G), micro_batch_size=6, groups={n: list(c) for n, c in cols.items()})
    for n in cols:
        for stat in NOISE_STATS:
            assert mat["groups"][n][stat] == pytest.approx(per_param["groups"][n][stat], rel=1e-9)
    for stat in NOISE_STATS:
        assert mat[stat] == pytest.approx(res[stat], rel=1e-9)
    # float32 gradients of the same model: statistics still agree with the float64 reference to ~1e-4
    m32 = copy.deepcopy(model).float()
    res32 = gradient_noise(micro_batch_gradients(m32, _mse_loss, tuple(t.float() for t in batch), 4))
    for stat in NOISE_STATS:
        assert res32[stat] == pytest.approx(res[stat], rel=1e-4), stat


def test_hand_computed_two_micro_batches():
    # g1 = (2, 0), g2 = (0, 2): ḡ = (1, 1), Σ‖d_i‖² = 4, d_iᵀḡ = 0, σ̂² = b·2 per entry
    res = gradient_noise(np.array([[2.0, 0.0], [0.0, 2.0]]), micro_batch_size=3, groups={"first": [0]})
    assert res["norm_test"] == pytest.approx(1.0) and res["orthogonality_test"] == pytest.approx(1.0)
    assert res["inner_product_test"] == 0.0 and res["gsnr"] == pytest.approx(1 / 6)
    assert res["groups"]["first"]["gsnr"] == pytest.approx(1 / 6)
    assert res["groups"]["first"]["norm_test"] == pytest.approx(1.0)  # column 0: ḡ = 1, d = ±1
    # ḡ = 0: every test is +inf (noise without signal) and the GSNR is 0
    zero_mean = gradient_noise(np.array([[1.0, -1.0], [-1.0, 1.0]]), micro_batch_size=1)
    assert zero_mean["norm_test"] == math.inf and zero_mean["gsnr"] == 0.0
    # scale invariance of all four statistics; GSNR ∝ 1/b, tests independent of b
    G = np.random.default_rng(0).normal(size=(5, 40)) + 0.3
    base, scaled = gradient_noise(G, micro_batch_size=2), gradient_noise(1e-3 * G, micro_batch_size=8)
    assert scaled["gsnr"] == pytest.approx(base["gsnr"] / 4, rel=1e-10)
    for stat in NOISE_STATS[1:]:
        assert scaled[stat] == pytest.approx(base[stat], rel=1e-10)


def test_identical_micro_batches_have_no_noise():
    model = _mlp()
    x, y = _data(n=5, seed=2)
    batch = (x.repeat(4, 1), y.repeat(4, 1))  # four copies of the same 5 samples
    mb = micro_batch_gradients(model, _mse_loss, batch, 4)
    res = gradient_noise(mb)
    assert res["reason"] is None
    assert res["norm_test"] == 0.0 and res["inner_product_test"] == 0.0 and res["orthogonality_test"] == 0.0
    assert res["gsnr"] == math.inf and all(g["gsnr"] == math.inf for g in res["groups"].values())


def test_unused_parameter_is_left_out_of_gsnr():
    model = _mlp()
    model.register_parameter("unused", nn.Parameter(torch.ones(3, dtype=torch.float64)))
    batch = _data(n=12, seed=3)
    mb = micro_batch_gradients(model, _mse_loss, batch, 3)
    res = gradient_noise(mb)
    assert all(not g["unused"].any() for g in mb.grads)
    assert all(math.isnan(res["groups"]["unused"][s]) for s in NOISE_STATS)
    G = _bruteforce_micro_grads(_mlp(), batch, 3)
    for stat, val in _numpy_stats(G, 4).items():
        assert res[stat] == pytest.approx(val, rel=1e-6), stat


@pytest.mark.parametrize(
    ("n", "splits", "expected"),
    [(3, 4, "smaller than splits"), (10, 4, "equal micro-batches"), (8, 1, "splits >= 2"), (8, 0, "splits >= 2")],
)
def test_too_few_samples_give_nan_and_a_reason(n, splits, expected):
    model = _mlp()
    mb = micro_batch_gradients(model, _mse_loss, _data(n=n), splits)
    assert mb.grads == [] and expected in mb.reason
    res = gradient_noise(mb, groups={"g": ["0.weight"]})
    assert res["reason"] == mb.reason and all(math.isnan(res[s]) for s in NOISE_STATS)
    assert all(math.isnan(v) for v in res["groups"]["g"].values())
    assert all(p.grad is None for p in model.parameters())


def test_runtime_failures_give_nan_and_a_reason():
    model = _mlp()
    x, y = _data(n=8)
    uneven = micro_batch_gradients(model, _mse_loss, (x, y[:6]), 2)
    assert "differ in length" in uneven.reason
    x_bad = x.clone()
    x_bad[5, 0] = float("nan")
    assert "micro-batch 1: loss is not finite" in micro_batch_gradients(model, _mse_loss, (x_bad, y), 2).reason

    def raises(m, b):
        raise ValueError("bad batch")

    assert micro_batch_gradients(model, raises, (x, y), 2).reason == "micro-batch 0: ValueError: bad batch"
    one = gradient_noise([{"w": torch.ones(2)}], micro_batch_size=4)
    assert "at least 2 micro-batches" in one["reason"] and math.isnan(one["gsnr"])
    inf = gradient_noise([{"w": torch.ones(2)}, {"w": torch.tensor([1.0, float("inf")])}], micro_batch_size=4)
    assert "not finite" in inf["reason"] and math.isnan(inf["norm_test"])
    frozen = _mlp().requires_grad_(False)
    assert micro_batch_gradients(frozen, _mse_loss, (x, y), 2).reason == "no parameter requires grad"


def test_micro_batch_gradients_keeps_grad_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double().train()
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    before = {n: b.clone() for n, b in model.named_buffers()}
    batch = {"x": _data(n=8)[0], "y": _data(n=8)[1], "note": "kept"}
    seen = []

    def loss_fn(m, mb):
        seen.append((mb["x"].shape[0], mb["note"]))
        return nn.functional.mse_loss(m(mb["x"]), mb["y"])

    mb = micro_batch_gradients(model, loss_fn, batch, 2)
    assert mb.reason is None and seen == [(4, "kept"), (4, "kept")]
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 3.0))
    assert model[2].weight.grad is None
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


def test_noise_argument_errors_raise():
    g = [{"w": torch.ones(2)}, {"w": torch.zeros(2)}]
    with pytest.raises(PhasescopeError, match="micro_batch_size"):
        gradient_noise(g)
    with pytest.raises(PhasescopeError, match="names"):
        gradient_noise([{"w": torch.ones(2)}, {"v": torch.ones(2)}], micro_batch_size=1)
    with pytest.raises(PhasescopeError, match="shape"):
        gradient_noise([{"w": torch.ones(2)}, {"w": torch.ones(3)}], micro_batch_size=1)
    with pytest.raises(PhasescopeError, match="unknown parameters"):
        gradient_noise(g, micro_batch_size=1, groups={"a": ["nope"]})
    with pytest.raises(PhasescopeError, match="column indices"):
        gradient_noise(np.ones((2, 3)), micro_batch_size=1, groups={"a": [5]})
    with pytest.raises(PhasescopeError, match="micro_grads must be"):
        gradient_noise("grads", micro_batch_size=1)
    with pytest.raises(PhasescopeError, match="disagrees"):
        gradient_noise(MicroBatchGradients(grads=g, micro_batch_size=2), micro_batch_size=3)
    with pytest.raises(PhasescopeError, match="splits"):
        micro_batch_gradients(_mlp(), _mse_loss, _data(), 2.0)
    with pytest.raises(PhasescopeError, match="batch"):
        micro_batch_gradients(_mlp(), _mse_loss, "batch", 2)
