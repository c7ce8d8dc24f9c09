"""Site names resolve to the right activations on every supported family; hooks never leak."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_config
from transformers import AutoModelForSequenceClassification

from rewardlab import sites
from rewardlab.errors import InputError
from rewardlab.sites import (Site, add_vector, all_sites, capture, intervene, last_position, parse_site,
                             project_out, replace_with, run_with_capture)

N_LAYERS = 3
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def padded_batch(vocab_size: int = 64, seed: int = 0):
    """input_ids [3, 7] and an attention mask with left padding in row 1 and right padding in row 2."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, -2:] = 0
    return input_ids, mask


def forward_with_all_sites(model):
    input_ids, mask = padded_batch()
    with torch.no_grad(), capture(model, all_sites(model)) as acts:
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    return acts, out


def hook_count(model) -> int:
    return sum(len(getattr(m, name)) for m in model.modules() for name in HOOK_DICTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_match_hidden_states(tiny_model, family):
    model = tiny_model(family)
    acts, out = forward_with_all_sites(model)
    hidden = out.hidden_states
    assert len(hidden) == N_LAYERS + 1
    for layer in range(N_LAYERS):
        assert acts[f"blocks.{layer}.hook_resid_pre"].shape == (3, 7, 32)
        assert torch.equal(acts[f"blocks.{layer}.hook_resid_pre"], hidden[layer])
    for layer in range(N_LAYERS - 1):
        assert torch.equal(acts[f"blocks.{layer}.hook_resid_post"], acts[f"blocks.{layer + 1}.hook_resid_pre"])
    assert torch.equal(acts["ln_final.hook_out"], hidden[-1])
    # The last block's resid_post is the raw block output: the final norm of it is HF's last hidden state.
    last_post = acts[f"blocks.{N_LAYERS - 1}.hook_resid_post"]
    assert not torch.allclose(last_post, hidden[-1])
    assert torch.equal(sites.final_norm(model)(last_post), hidden[-1])
    assert torch.allclose(sites.unembed(model)(hidden[-1]), out.logits, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_attn_plus_mlp_plus_resid_pre_is_resid_post(tiny_model, family):
    acts, _ = forward_with_all_sites(tiny_model(family))
    for layer in range(N_LAYERS):
        site = f"blocks.{layer}.hook_"
        total = acts[site + "resid_pre"] + acts[site + "attn_out"] + acts[site + "mlp_out"]
        torch.testing.assert_close(total, acts[site + "resid_post"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("deepest, attn_calls, mlp_calls", [
    ("blocks.1.hook_resid_pre", 1, 1),
    ("blocks.1.hook_attn_out", 2, 1),
    ("blocks.1.hook_mlp_out", 2, 2),
    ("blocks.1.hook_resid_post", 2, 2),
    ("ln_final.hook_out", 3, 3),
])
def test_stop_early_same_tensors_and_nothing_later(tiny_model, family, deepest, attn_calls, mlp_calls):
    model = tiny_model(family)
    input_ids, mask = padded_batch()
    wanted = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", deepest]
    full = run_with_capture(model, input_ids, mask, wanted, stop_early=False)

    calls = {"attn": 0, "mlp": 0, "head": 0}
    def counter(key):
        def hook(*_):
            calls[key] += 1
        return hook
    layout = sites._layout(model)
    handles = [sites.unembed(model).register_forward_pre_hook(counter("head"))]
    for block in sites.block_modules(model):
        handles.append(block.get_submodule(layout.attn).register_forward_pre_hook(counter("attn")))
        handles.append(block.get_submodule(layout.mlp).register_forward_pre_hook(counter("mlp")))
    try:
        early = run_with_capture(model, input_ids, mask, wanted, stop_early=True)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"attn": attn_calls, "mlp": mlp_calls, "head": 0}
    assert early.keys() == full.keys() == set(wanted)
    for name in wanted:
        assert torch.equal(early[name], full[name])


def test_capture_keeps_dtype_and_detaches(tiny_model):
    model = tiny_model("llama").to(torch.bfloat16)
    input_ids, mask = padded_batch()
    with capture(model, "blocks.2.hook_mlp_out") as acts:
        model(input_ids=input_ids, attention_mask=mask)
    act = acts["blocks.2.hook_mlp_out"]
    assert act.dtype == torch.bfloat16 and not act.requires_grad and act.shape == (3, 7, 32)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_hooks_removed_on_exit_and_on_exceptions(tiny_model, family):
    model = tiny_model(family)
    input_ids, mask = padded_batch()
    assert hook_count(model) == 0
    with capture(model, all_sites(model)) as acts, intervene(model, "blocks.1.hook_resid_pre",
                                                              add_vector(torch.ones(32))):
        model(input_ids=input_ids, attention_mask=mask)
    assert len(acts) == 4 * N_LAYERS + 1 and hook_count(model) == 0
    run_with_capture(model, input_ids, mask, ["blocks.0.hook_attn_out"], stop_early=True)
    assert hook_count(model) == 0
    with pytest.raises(ZeroDivisionError):
        with capture(model, all_sites(model)), intervene(model, "blocks.0.hook_mlp_out", lambda a: a * 2):
            model(input_ids=input_ids, attention_mask=mask)
            1 / 0
    assert hook_count(model) == 0
    with pytest.raises(InputError, match="returned shape"):
        with intervene(model, "blocks.0.hook_attn_out", lambda a: a[:, :1]):
            model(input_ids=input_ids, attention_mask=mask)
    assert hook_count(model) == 0
    with pytest.raises(InputError, match="does not exist"):
        with capture(model, ["blocks.0.hook_resid_pre", "blocks.9.hook_resid_pre"]):
            pass
    assert hook_count(model) == 0


def test_parse_site_and_all_sites(tiny_model):
    assert parse_site("blocks.2.hook_attn_out", 3) == Site(2, "attn_out")
    assert parse_site("ln_final.hook_out", 3) == Site(3, "ln_final")
    assert Site(0, "resid_post").name == "blocks.0.hook_resid_post"
    for bad in ["blocks.1.hook_resid", "blocks.x.hook_resid_pre", "hook_resid_pre", "ln_final", ""]:
        with pytest.raises(InputError, match="unknown site"):
            parse_site(bad, 3)
    for layer in [3, -1, 12]:
        with pytest.raises(InputError, match=r"layer .* does not exist[\s\S]*layers 0\.\.2"):
            parse_site(f"blocks.{layer}.hook_resid_post", 3)
    model = tiny_model("gpt2")
    names = all_sites(model)
    assert len(names) == 4 * N_LAYERS + 1 and names[:4] == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    assert names[-1] == "ln_final.hook_out"
    assert all_sites(model, kinds=["resid_post"]) == [f"blocks.{i}.hook_resid_post" for i in range(N_LAYERS)]
    with pytest.raises(InputError, match="unknown site kinds"):
        all_sites(model, kinds=["resid"])
    assert (sites.n_layers(model), sites.d_model(model)) == (N_LAYERS, 32)


def test_layouts_resolve_classifiers_and_unknown_types(tiny_model, monkeypatch):
    classifier = AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=1)).eval()
    assert sites.n_layers(classifier) == N_LAYERS
    with pytest.raises(InputError, match="no unembedding"):
        sites.unembed(classifier)
    # A model type missing from the table gets the first layout that fits.
    monkeypatch.delitem(sites.LAYOUTS, "qwen2")
    acts, out = forward_with_all_sites(tiny_model("qwen2"))
    assert torch.equal(acts["blocks.1.hook_resid_pre"], out.hidden_states[1])
    monkeypatch.delitem(sites.LAYOUTS, "gpt2")
    with pytest.raises(InputError, match="no site layout fits"):
        sites.n_layers(tiny_model("gpt2"))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_interventions(tiny_model, family):
    model = tiny_model(family)
    input_ids, mask = padded_batch()
    clean = run_with_capture(model, input_ids, mask, all_sites(model), stop_early=False)
    vec = torch.linspace(-1, 1, 32)

    # add_vector on resid_post 0 is what block 1 reads.
    with intervene(model, "blocks.0.hook_resid_post", add_vector(vec)):
        edited = run_with_capture(model, input_ids, mask, ["blocks.1.hook_resid_pre"])
    assert torch.equal(edited["blocks.1.hook_resid_pre"], clean["blocks.0.hook_resid_post"] + vec)

    # A tensor mask edits only its positions.
    positions = torch.zeros(3, 7, dtype=torch.bool)
    positions[:, 4] = True
    with intervene(model, "blocks.1.hook_resid_pre", add_vector(vec, positions)):
        edited = run_with_capture(model, input_ids, mask, ["blocks.1.hook_resid_pre"])
    diff = edited["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"]
    assert torch.allclose(diff[:, 4], vec.expand(3, 32), atol=1e-6) and diff[:, [0, 1, 2, 3, 5, 6]].abs().max() == 0

    # project_out leaves no component along the direction.
    with intervene(model, "blocks.1.hook_mlp_out", project_out(vec * 3)):
        edited = run_with_capture(model, input_ids, mask, ["blocks.1.hook_mlp_out"])
    assert (edited["blocks.1.hook_mlp_out"] @ vec).abs().max() < 1e-5

    # Patching every resid_pre 0 with another input's gives that input's logits.
    other_ids = (input_ids + 1) % 64
    with torch.no_grad():
        other = run_with_capture(model, other_ids, mask, ["blocks.0.hook_resid_pre"])
        with intervene(model, "blocks.0.hook_resid_pre", replace_with(other["blocks.0.hook_resid_pre"])):
            patched = model(input_ids=input_ids, attention_mask=mask).logits
        torch.testing.assert_close(patched, model(input_ids=other_ids, attention_mask=mask).logits)
    with pytest.raises(InputError, match="does not fit"):
        with intervene(model, "blocks.0.hook_resid_pre", replace_with(torch.zeros(2, 32))):
            model(input_ids=input_ids, attention_mask=mask)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_interventions_in_kv_cached_generation(tiny_model, family):
    """Cached decoding under add_vector (all positions) gives the logits of uncached full passes."""
    model = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 64, (2, 8), generator=g)
    steer = intervene(model, "blocks.1.hook_resid_pre", add_vector(torch.linspace(-2, 2, 32)))
    with torch.no_grad(), steer:
        out = model(input_ids=tokens[:, :5], use_cache=True)
        cache, cached_logits = out.cache, [out.logits[:, -1]]
        for step in range(5, 8):
            out = model(input_ids=tokens[:, step:step + 1], cache=cache, use_cache=True)
            cache = out.cache
            cached_logits.append(out.logits[:, -1])
        full = model(input_ids=tokens, use_cache=False).logits
    assert hook_count(model) == 0
    for i, logits in enumerate(cached_logits):
        torch.testing.assert_close(logits, full[:, 4 + i], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        plain = model(input_ids=tokens, use_cache=False).logits
    assert not torch.allclose(plain, full, atol=1e-3)

    # A callable mask is evaluated per pass; a fixed [batch, seq] mask refuses a one-token step.
    seen = []
    def spy(act):
        seen.append(act.shape[1])
        return last_position(act)
    with torch.no_grad():
        with intervene(model, "blocks.1.hook_resid_pre", add_vector(torch.ones(32), spy)):
            model.generate(tokens[:, :5], attention_mask=torch.ones(2, 5, dtype=torch.long), max_new_tokens=3,
                           do_sample=False, pad_token_id=0)
        assert seen == [5, 1, 1]
        fixed = add_vector(torch.ones(32), torch.ones(2, 5, dtype=torch.bool))
        with pytest.raises(InputError, match="positions_mask has shape"):
            with intervene(model, "blocks.1.hook_resid_pre", fixed):
                model.generate(tokens[:, :5], attention_mask=torch.ones(2, 5, dtype=torch.long),
                               max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert hook_count(model) == 0
