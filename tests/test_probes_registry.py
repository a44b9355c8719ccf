"""Probe selection on real transformers models built from configs: presets per family, selectors,
closest-name errors, and token selection against direct indexing."""

import pytest
import torch

from phasescope.errors import PhasescopeError
from phasescope.probes.presets import find_layout
from phasescope.probes.registry import resolve_probes
from phasescope.probes.tokens import TokenSelection, select

L = 3  # layers


def _build(family):
    import transformers as T

    small = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=L)
    if family == "gpt2":
        return T.GPT2LMHeadModel(
            T.GPT2Config(n_layer=L, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
        )
    if family == "gpt2-base":
        return T.GPT2Model(
            T.GPT2Config(n_layer=L, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
        )
    if family == "neox":
        return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**small, bos_token_id=0, eos_token_id=0))
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=2))
    if family == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**small, num_key_value_heads=2))
    if family == "mistral":
        return T.MistralForCausalLM(T.MistralConfig(**small, num_key_value_heads=2))
    if family == "olmo":
        return T.OlmoForCausalLM(T.OlmoConfig(**small, pad_token_id=1, bos_token_id=0, eos_token_id=0))
    if family == "olmo2":
        return T.Olmo2ForCausalLM(T.Olmo2Config(**small, pad_token_id=1, bos_token_id=0, eos_token_id=0))
    if family == "bert":
        return T.BertModel(T.BertConfig(**small))
    raise KeyError(family)


EXPECTED = {  # family -> (block list, attention child, mlp child, final norm)
    "gpt2": ("transformer.h", "attn", "mlp", "transformer.ln_f"),
    "gpt2-base": ("h", "attn", "mlp", "ln_f"),
    "neox": ("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
    "llama": ("model.layers", "self_attn", "mlp", "model.norm"),
    "qwen2": ("model.layers", "self_attn", "mlp", "model.norm"),
    "mistral": ("model.layers", "self_attn", "mlp", "model.norm"),
    "olmo": ("model.layers", "self_attn", "mlp", "model.norm"),
    "olmo2": ("model.layers", "self_attn", "mlp", "model.norm"),
    "bert": ("encoder.layer", "attention", "output.dense", None),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def family_model(request):
    torch.manual_seed(0)
    return request.param, _build(request.param).eval()


def test_presets_resolve_on_each_family(family_model):
    family, model = family_model
    blocks, attn, mlp, final = EXPECTED[family]
    lay = find_layout(model)
    assert lay.blocks == tuple(f"{blocks}.{i}" for i in range(L))
    assert lay.attn == tuple(f"{blocks}.{i}.{attn}" for i in range(L))
    assert lay.mlp == tuple(f"{blocks}.{i}.{mlp}" for i in range(L))
    assert lay.final_norm == final
    auto = resolve_probes(model, "auto")
    want = [f"block.{i}" for i in range(L)] + (["final_norm"] if final else [])
    assert [p.name for p in auto] == want
    named = dict(model.named_modules())
    for p in auto:
        assert named[p.module_name] is p.module
    everything = [p.name for p in resolve_probes(model, "all")]
    assert {f"attn.{i}" for i in range(L)} <= set(everything)
    assert {f"mlp.{i}" for i in range(L)} <= set(everything)


def test_auto_block_outputs_equal_hidden_states(family_model):
    """The block.i probe reads exactly hidden_states[i+1] (the residual stream after block i)."""
    _family, model = family_model
    ids = torch.randint(2, 60, (3, 7))
    probes = resolve_probes(model, "blocks")
    seen = {}
    hs = [
        p.module.register_forward_hook(
            lambda m, a, o, n=p.name: seen.__setitem__(n, o[0] if isinstance(o, tuple) else o)
        )
        for p in probes
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        for h in hs:
            h.remove()
    for i in range(L - 1):  # the last hidden state may already include the final norm
        torch.testing.assert_close(seen[f"block.{i}"], out.hidden_states[i + 1])


def test_selectors_glob_regex_predicate_dict():
    model = _build("gpt2")
    g = resolve_probes(model, "transformer.h.*.mlp")
    assert [p.name for p in g] == ["block.0.mlp", "block.1.mlp", "block.2.mlp"]
    r = resolve_probes(model, "re:transformer\\.h\\.[01]\\.attn")
    assert [p.module_name for p in r] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    pred = resolve_probes(model, lambda name, m: isinstance(m, torch.nn.LayerNorm) and name.endswith("ln_f"))
    assert [p.name for p in pred] == ["final_norm"]
    d = resolve_probes(model, {"resid_mid": "transformer.h.1", "out": "transformer.ln_f"})
    assert [(p.name, p.module_name) for p in d] == [("resid_mid", "transformer.h.1"), ("out", "transformer.ln_f")]
    # duplicates across selectors are dropped, order kept
    both = resolve_probes(model, ["blocks", "transformer.h.0", "final_norm"])
    assert [p.name for p in both] == ["block.0", "block.1", "block.2", "final_norm"]


def test_unknown_selector_lists_closest_names():
    model = _build("gpt2")
    with pytest.raises(PhasescopeError) as ei:
        resolve_probes(model, "transformer.h.1.mpl")
    msg = str(ei.value)
    assert "transformer.h.1.mlp" in msg and "matches no module" in msg and "\n" not in msg
    with pytest.raises(PhasescopeError, match=r"transformer\.ln_f"):
        resolve_probes(model, ["blocks", "transformer.ln_ff"])
    with pytest.raises(PhasescopeError, match="regular expression"):
        resolve_probes(model, "re:(")
    with pytest.raises(PhasescopeError, match="exactly one"):
        resolve_probes(model, {"x": "transformer.h.*"})
    with pytest.raises(PhasescopeError, match="empty"):
        resolve_probes(model, [])


def test_token_selection_against_direct_indexing():
    torch.manual_seed(0)
    h = torch.randn(4, 6, 5)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    left = torch.flip(right, [1])
    last = select(h, right, TokenSelection("last"))
    torch.testing.assert_close(last, torch.stack([h[0, 2], h[1, 5], h[2, 1], h[3, 0]]))
    last_left = select(h, left, TokenSelection("last"))
    torch.testing.assert_close(last_left, h[:, 5])
    mean = select(h, right, TokenSelection("mean"))
    torch.testing.assert_close(mean[0], h[0, :3].mean(0))
    torch.testing.assert_close(mean[3], h[3, 0])
    allt = select(h, right, TokenSelection("all", max_tokens=None))
    assert allt.shape == (12, 5)
    torch.testing.assert_close(allt, h[right.bool()])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    capped = select(h, right, TokenSelection("all", max_tokens=5), generator=g1)
    again = select(h, right, TokenSelection("all", max_tokens=5), generator=g2)
    assert capped.shape == (5, 5)
    torch.testing.assert_close(capped, again)  # seeded
    pool = h[right.bool()]
    for row in capped:  # subset of non-pad states, no repeats
        assert (pool == row).all(1).sum() == 1
    assert len({tuple(r.tolist()) for r in capped}) == 5
    torch.testing.assert_close(select(h, None, TokenSelection("last")), h[:, -1])
    with pytest.raises(PhasescopeError, match="tokens must be one of"):
        TokenSelection("middle")
