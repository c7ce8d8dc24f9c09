"""Sites against TransformerLens, the peer whose names rewardlab uses (see rewardlab/sites.py).

The same random GPT-2 (its norms' weights and biases moved away from 1 and 0, as training does) in
both libraries, without TransformerLens's weight processing: every block site equals TransformerLens's
hook of that name. TransformerLens's ln_final.hook_normalized is the point before the final norm's
weight and bias; rewardlab's ln_final.hook_out is the norm's output, after them.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rewardlab.errors import InputError
from rewardlab.sites import all_sites, parse_site, run_with_capture

pytest.importorskip("transformer_lens", reason="the peer library (pip install transformer-lens)")


def _models():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name:
                p.add_(0.5 * torch.randn_like(p))
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=128, d_vocab=64, n_ctx=32,
                                  act_fn="gelu_new", normalization_type="LN", device="cpu")
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    return hf, tl.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TransformerLens deprecates HookedTransformer itself
def test_sites_equal_transformer_lens_and_ln_final_is_after_the_norms_weight_and_bias():
    hf, tl = _models()
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    ours = run_with_capture(hf, ids, None, all_sites(hf), stop_early=False)
    _, cache = tl.run_with_cache(ids)
    blocks = [s for s in all_sites(hf) if s.startswith("blocks.")]
    assert len(blocks) == 8
    for site in blocks:
        torch.testing.assert_close(ours[site], cache[site], atol=1e-5, rtol=1e-5, msg=site)
    norm = hf.transformer.ln_f
    ln_final = ours["ln_final.hook_out"]
    torch.testing.assert_close(ln_final, cache["ln_final.hook_normalized"] * norm.weight + norm.bias,
                               atol=1e-5, rtol=1e-5)
    assert (ln_final - cache["ln_final.hook_normalized"]).abs().max() > 0.1  # the two points differ
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, tl(ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="use ln_final.hook_out"):
        parse_site("ln_final.hook_normalized", 2)
