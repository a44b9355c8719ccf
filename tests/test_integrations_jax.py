"""JAX/Flax + optax through FlaxObserver and the framework-neutral Recorder, on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from integrations_data import assert_stored_eigs

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from phasescope.errors import PhasescopeError  # noqa: E402
from phasescope.probes import Recorder  # noqa: E402
from phasescope.probes import schedules as S  # noqa: E402
from phasescope.probes.integrations.jax import FlaxObserver, flatten_tree, select_tokens  # noqa: E402
from phasescope.probes.tokens import TokenSelection, select  # noqa: E402
from phasescope.store import open_run  # noqa: E402

D_IN, H, C = 12, 24, 4


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(H)(x))
        self.sow("intermediates", "hidden", x)
        x = nn.relu(nn.Dense(H)(x))
        return nn.Dense(C)(x)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    centres = rng.standard_normal((C, D_IN)) * 2
    return (centres[y] + rng.standard_normal((n, D_IN))).astype(np.float32), y


def _ref_eigs(x):
    return np.sort(np.linalg.eigvalsh(np.cov(np.asarray(x, np.float64).T, ddof=1)))[::-1]


def test_flax_optax_loop_matches_references(tmp_path):
    model = MLP()
    xp, _ = _data(64, seed=1)
    params = model.init(jax.random.key(0), jnp.ones((1, D_IN)))["params"]
    init = jax.tree_util.tree_map(np.asarray, params)
    lr_fn = optax.linear_schedule(1e-2, 1e-3, 6)
    tx = optax.adam(lr_fn)
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    store = tmp_path / "flax.zarr"
    ref_loss, ref_norms = [], []
    with FlaxObserver(
        model,
        str(store),
        params,
        jnp.asarray(xp),
        probes=["Dense_0", "hidden", "Dense_1"],
        schedule=S.explicit([0, 5]),
        matrices="all",
    ) as obs:
        for step in range(6):
            x, y = _data(32, seed=100 + step)
            loss, grads = grad_fn(params, jnp.asarray(x), jnp.asarray(y))
            obs.step(step, params, grads=grads, loss=loss, lr=lr_fn(step))
            ref_loss.append(float(loss))
            ref_norms.append([np.linalg.norm(np.asarray(g, np.float64)) for g in flatten_tree(grads).values()])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)

    ds = open_run(store)
    assert ds.step.values.tolist() == list(range(6)) and ds.capture_step.values.tolist() == [0, 5]
    assert ds.param.values.tolist() == list(flatten_tree(grads))
    assert ds.probe.values.tolist() == ["Dense_0", "hidden", "Dense_1"]
    np.testing.assert_allclose(ds.loss.values, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(ds.param_grad_norm.values, np.array(ref_norms), rtol=1e-5)
    np.testing.assert_allclose(ds.lr.values, [float(lr_fn(s)) for s in range(6)], rtol=1e-6)
    # Step-0 capture against a numpy forward of the initial weights (pre-activation, post-ReLU sow).
    pre = xp.astype(np.float64) @ init["Dense_0"]["kernel"] + init["Dense_0"]["bias"]
    for probe, ref in (("Dense_0", _ref_eigs(pre)), ("hidden", _ref_eigs(np.maximum(pre, 0)))):
        assert_stored_eigs(
            ds.eigenvalues.sel(capture_step=0, probe=probe).values[:H],
            ref,
            int(ds.n_samples.sel(capture_step=0, probe=probe)),
        )
        p = ref / ref.sum() + 1e-7
        np.testing.assert_allclose(
            float(ds.rankme.sel(capture_step=0, probe=probe)), np.exp(-(p * np.log(p)).sum()), rtol=1e-4
        )
    # Gradient singular values of Dense_1.kernel at the last capture, against numpy.
    s = np.linalg.svd(np.asarray(flatten_tree(grads)["Dense_1.kernel"], np.float64), compute_uv=False)
    np.testing.assert_allclose(
        float(ds.matrix_grad_nuclear.sel(capture_step=5, matrix="Dense_1.kernel")), s.sum(), rtol=1e-4
    )
    assert ds.attrs["finished"] is True and ds.attrs["integration"] == "flax.linen"


def test_recorder_rejects_changed_shapes_and_keeps_committed_steps(tmp_path):
    store = tmp_path / "rec.zarr"
    rng = np.random.default_rng(0)
    rec = Recorder(str(store), write_interval=0.0)
    acts = {"a": jnp.asarray(rng.standard_normal((40, 8)))}
    rec.record(0, activations=acts, grads={"w": jnp.ones((3, 4))}, loss=1.0)
    rec.record(1, grads={"w": jnp.ones((3, 4))}, loss=0.5)
    with pytest.raises(PhasescopeError, match=r"activations\['a'\] has width 6 but this run records width 8"):
        rec.record(2, activations={"a": jnp.ones((40, 6))})
    with pytest.raises(PhasescopeError, match=r"grads\['w'\] has shape \(4, 3\) but had shape \(3, 4\)"):
        rec.record(2, grads={"w": jnp.ones((4, 3))})
    with pytest.raises(PhasescopeError, match="unknown activation name"):
        rec.record(2, activations={"b": jnp.ones((40, 8))})
    with pytest.raises(PhasescopeError, match="not after the last recorded step 1"):
        rec.record(1, loss=0.1)
    rec.close()
    ds = open_run(store)
    assert ds.step.values.tolist() == [0, 1] and ds.capture_step.values.tolist() == [0]
    np.testing.assert_allclose(ds.loss.values, [1.0, 0.5])
    np.testing.assert_allclose(ds.param_grad_norm.values[:, 0], [np.sqrt(12)] * 2, rtol=1e-6)
    np.testing.assert_allclose(
        ds.eigenvalues.sel(capture_step=0, probe="a").values, _ref_eigs(np.asarray(acts["a"])), rtol=1e-5
    )


class TokenMLP(nn.Module):
    """Per-token layers over (batch, seq, D_IN): the (batch, seq, dim) outputs a language model has."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(H)(x))
        self.sow("intermediates", "hidden", x)
        return nn.Dense(C)(x)


def _padded_batch(n=40, length=7, seed=3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, n)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    x = rng.standard_normal((n, length, D_IN)).astype(np.float32)
    x[mask == 0] = 5.0  # pad positions hold one constant vector, nothing like a real token
    return x, mask, lengths


def test_padded_batch_takes_the_last_non_pad_token(tmp_path):
    """With an attention mask, "last" is the last non-pad token (the torch path's rule), not position -1."""
    x, mask, lengths = _padded_batch()
    n = x.shape[0]
    model = TokenMLP()
    params = model.init(jax.random.key(0), jnp.ones((1, *x.shape[1:])))["params"]
    init = jax.tree_util.tree_map(np.asarray, params)
    store = tmp_path / "padded.zarr"
    with FlaxObserver(model, str(store), params, jnp.asarray(x), attention_mask=mask, schedule=S.explicit([0])) as obs:
        assert obs.probes == ["Dense_0", "Dense_1", "hidden"]  # every captured output but the model's own
        obs.step(0, params)
    ds = open_run(store)
    pre = x.astype(np.float64) @ init["Dense_0"]["kernel"] + init["Dense_0"]["bias"]  # (n, seq, H)
    last = pre[np.arange(n), lengths - 1]
    for probe, ref in (("Dense_0", _ref_eigs(last)), ("hidden", _ref_eigs(np.maximum(last, 0)))):
        assert_stored_eigs(
            ds.eigenvalues.sel(capture_step=0, probe=probe).values[:H],
            ref,
            int(ds.n_samples.sel(capture_step=0, probe=probe)),
        )
    assert int(ds.n_samples.sel(capture_step=0, probe="Dense_0")) == n
    assert not np.allclose(_ref_eigs(pre[:, -1]), _ref_eigs(last), rtol=1e-2)  # position -1 is often padding
    assert ds.attrs["tokens"]["mode"] == "last" and ds.attrs["tokens"]["attention_mask"] is True


def test_jax_token_selection_is_the_torch_rule_under_jit():
    """ "last", "mean" and "all" on jax arrays (jitted, with a plan for "all") equal the torch path's select."""
    torch = pytest.importorskip("torch")
    x, mask, _ = _padded_batch(n=6, length=5, seed=4)
    h = x[..., :4]
    for mode in ("last", "mean", "all"):
        want = select(torch.from_numpy(h), torch.from_numpy(mask), TokenSelection(mode, max_tokens=None)).numpy()
        plan = np.nonzero(mask) if mode == "all" else None
        got = jax.jit(lambda a, mode=mode, plan=plan: select_tokens(a, mode, mask, plan))(jnp.asarray(h))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(PhasescopeError, match="attention_mask shape"):
        select_tokens(jnp.asarray(h), "last", mask[:, :3])
