"""gradients/: every statistic against a direct torch.linalg computation on the same gradients."""

import math

import numpy as np
import pytest
import torch

from phasescope.errors import PhasescopeError
from phasescope.gradients import (
    MATRIX_STATS,
    UpdateTracker,
    block_index,
    current_scale,
    global_norm,
    grad_norms,
    gradient_matrix_stats,
    matrix_group,
    nonfinite,
    select_matrices,
)


def _gpt2_with_grads(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    m = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    x = torch.randint(0, 128, (4, 16))
    m(input_ids=x, labels=x).loss.backward()
    return m


def test_grad_norms_equal_vector_norm_and_clip_grad_norm():
    m = _gpt2_with_grads()
    params = list(m.parameters())
    norms, present = grad_norms(params)
    assert all(present) and norms.dtype == torch.float32 and norms.shape == (len(params),)
    want = torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
    torch.testing.assert_close(norms, want)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=float("inf"))
    assert math.isclose(global_norm(norms.numpy(), present), float(total), rel_tol=1e-5)
    assert not nonfinite(norms.numpy(), present)


def test_grad_norms_mixed_dtypes_missing_grads_and_nonfinite():
    a = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    c = torch.nn.Parameter(torch.randn(2))  # no gradient
    d = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))
    a.grad, b.grad, d.grad = torch.randn(3, 4), torch.randn(5, dtype=torch.float64), torch.randn(6).to(torch.bfloat16)
    norms, present = grad_norms([a, b, c, d])
    assert present == [True, True, False, True]
    assert math.isclose(float(norms[0]), float(a.grad.norm()), rel_tol=1e-6)
    assert math.isclose(float(norms[1]), float(b.grad.norm()), rel_tol=1e-6)
    assert math.isnan(float(norms[2]))
    assert math.isclose(float(norms[3]), float(d.grad.float().norm()), rel_tol=1e-2)
    ref = math.sqrt(sum(float(t.grad.double().norm()) ** 2 for t in (a, b, d)))
    assert math.isclose(global_norm(norms.numpy(), present), ref, rel_tol=1e-2)
    assert not nonfinite(norms.numpy(), present)  # a missing gradient is not a non-finite one
    b.grad[2] = float("nan")
    norms, present = grad_norms([a, b, c, d])
    assert nonfinite(norms.numpy(), present) and math.isnan(global_norm(norms.numpy(), present))


def _reference(g):
    g = g.double()
    s = torch.linalg.svdvals(g)
    nuc = torch.linalg.matrix_norm(g, ord="nuc")
    spec = torch.linalg.matrix_norm(g, ord=2)
    fro = torch.linalg.matrix_norm(g, ord="fro")
    return {
        "grad_nuclear": nuc,
        "grad_spectral": spec,
        "grad_frobenius": fro,
        "grad_stable_rank": fro**2 / spec**2,
        "grad_top_ratio": spec / nuc,
        "grad_sigma_min": s[-1],
    }


def test_matrix_stats_equal_linalg_per_matrix_batched_by_shape():
    m = _gpt2_with_grads(1)
    names = [n for n, p in m.named_parameters() if p.dim() == 2 and matrix_group(n)["block"] is not None]
    grads = [dict(m.named_parameters())[n].grad for n in names]
    assert len({tuple(g.shape) for g in grads}) == 4 and len(grads) == 8  # shapes shared across layers
    stats = gradient_matrix_stats(grads)
    assert set(stats) == set(MATRIX_STATS)
    for j, g in enumerate(grads):
        ref = _reference(g)
        for k in MATRIX_STATS:
            # float32 SVD: absolute error ~1e-6 of the largest singular value (matters for σ_min ≈ 0)
            tol = 1e-6 * float(ref["grad_spectral"]) if k == "grad_sigma_min" else 0.0
            assert math.isclose(float(stats[k][j]), float(ref[k]), rel_tol=2e-4, abs_tol=tol), (names[j], k)
    # scaled gradients (as under a GradScaler) give the same unscaled statistics
    scaled = gradient_matrix_stats([g * 1024.0 for g in grads], scale=torch.tensor(1024.0))
    for k in MATRIX_STATS:
        torch.testing.assert_close(scaled[k], stats[k], rtol=1e-4, atol=0)


def test_matrix_stats_known_answer_and_nonfinite_isolated():
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    sig = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    g = (u[:, :4] * sig) @ v.T  # exact singular values 4, 2, 1, 0.5
    bad = g.clone()
    bad[0, 0] = float("inf")
    out = gradient_matrix_stats([g.float(), bad.float(), None])
    assert math.isclose(float(out["grad_nuclear"][0]), 7.5, rel_tol=1e-5)
    assert math.isclose(float(out["grad_spectral"][0]), 4.0, rel_tol=1e-5)
    assert math.isclose(float(out["grad_stable_rank"][0]), (16 + 4 + 1 + 0.25) / 16, rel_tol=1e-5)
    assert math.isclose(float(out["grad_top_ratio"][0]), 4 / 7.5, rel_tol=1e-5)
    assert math.isclose(float(out["grad_sigma_min"][0]), 0.5, rel_tol=1e-4)
    for k in MATRIX_STATS:
        assert math.isnan(float(out[k][1])) and math.isnan(float(out[k][2]))


@pytest.mark.parametrize(
    ("name", "block", "kind"),
    [
        ("transformer.h.3.attn.c_attn.weight", 3, "qkv"),
        ("transformer.h.0.attn.c_proj.weight", 0, "o"),
        ("transformer.h.1.mlp.c_fc.weight", 1, "mlp_in"),
        ("transformer.h.1.mlp.c_proj.weight", 1, "mlp_out"),
        ("gpt_neox.layers.2.attention.query_key_value.weight", 2, "qkv"),
        ("gpt_neox.layers.2.attention.dense.weight", 2, "o"),
        ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", 0, "mlp_in"),
        ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", 0, "mlp_out"),
        ("model.layers.5.self_attn.q_proj.weight", 5, "q"),
        ("model.layers.5.self_attn.k_proj.weight", 5, "k"),
        ("model.layers.5.self_attn.v_proj.weight", 5, "v"),
        ("model.layers.5.self_attn.o_proj.weight", 5, "o"),
        ("model.layers.5.mlp.gate_proj.weight", 5, "gate"),
        ("model.layers.5.mlp.up_proj.weight", 5, "up"),
        ("model.layers.5.mlp.down_proj.weight", 5, "down"),
        ("encoder.layer.1.attention.self.query.weight", 1, "q"),
        ("encoder.layer.1.attention.output.dense.weight", 1, "o"),
        ("encoder.layer.1.intermediate.dense.weight", 1, "mlp_in"),
        ("encoder.layer.1.output.dense.weight", 1, "mlp_out"),
        ("transformer.wte.weight", None, "embedding"),
        ("model.embed_tokens.weight", None, "embedding"),
        ("lm_head.weight", None, "other"),
    ],
)
def test_matrix_group(name, block, kind):
    assert matrix_group(name) == {"block": block, "kind": kind}
    assert block_index(name) == block


def test_select_matrices_on_names_and_ndim_only():
    """One rule live and offline: numpy arrays (or meta tensors) are enough, nothing is computed."""
    named = [
        ("transformer.wte.weight", np.zeros((8, 4))),
        ("transformer.h.0.ln_1.weight", np.zeros(4)),
        ("transformer.h.0.attn.c_attn.weight", np.zeros((4, 12))),
        ("transformer.h.1.mlp.c_fc.weight", np.zeros((4, 16))),
        ("lm_head.weight", np.zeros((8, 4))),
    ]
    assert select_matrices(named, "blocks") == [2, 3]
    assert select_matrices(named, "all") == [0, 2, 3, 4]
    assert select_matrices(named, "none") == select_matrices(named, None) == []
    assert select_matrices(named, lambda name, p: "mlp" in name) == [3]
    with pytest.raises(PhasescopeError, match="'blocks', 'all', 'none' or a predicate"):
        select_matrices(named, "some")


def test_update_tracker_equals_direct_ratio():
    m = _gpt2_with_grads(2)
    params = list(m.parameters())
    before = [p.detach().clone() for p in params]
    tr = UpdateTracker(params)
    assert tr.ratios() is None
    tr.snapshot()
    torch.optim.SGD(params, lr=0.1).step()
    r = tr.ratios()
    assert not tr.pending
    for j, (p, w0) in enumerate(zip(params, before)):
        n0 = float(w0.norm())
        want = float((p.detach() - w0).norm()) / n0 if n0 > 0 else float("nan")
        got = float(r[j])
        assert (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=1e-4)
    assert np.isfinite(r.numpy()).sum() > len(params) // 2


def test_current_scale_with_cpu_grad_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([p], lr=0.1)
    assert current_scale(None) is None
    assert current_scale(torch.amp.GradScaler("cpu", enabled=False)) is None
    scaler.scale((p**2).sum()).backward()
    assert float(current_scale(scaler, opt)) == 256.0
    scaler.unscale_(opt)
    assert current_scale(scaler, opt) is None  # already unscaled: nothing to divide
    assert float(current_scale(scaler)) == 256.0  # without the optimizer we cannot know
