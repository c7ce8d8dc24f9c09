"""SAE splice-in metrics on the real model (SmolLM2-135M-Instruct, a middle layer): position 0 is an
attention sink the SAE rule leaves out, the identity splice recovers exactly 1 and zero ablation 0."""

import pytest
import torch

from rewardlab.sae.metrics import spliced_metrics
from rewardlab.sae.model import SAEConfig, SparseAutoencoder
from rewardlab.sae.sinks import SINK_NORM_FACTOR, batch_positions
from rewardlab.sites import run_with_capture
from rewardlab.text import encode, pad_token_id, right_padded, set_chat_template
from test_real_model import smol  # noqa: F401  (the module-scoped real-model fixture)

pytestmark = pytest.mark.real_model

SITE = "blocks.12.hook_resid_post"
PROMPTS = ["Write one sentence about a film you liked.", "Is the plot of this movie any good?",
           "Review:"]
COMPLETIONS = [" The acting was wonderful and the story moved me.", " Honestly, it was boring.",
               " a quiet, funny film with a warm heart."]


def identity_sae(d: int, zero: bool = False) -> SparseAutoencoder:
    """relu(x) - relu(-x) = x (2d latents); with `zero`, the decoder outputs 0 (zero ablation)."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=2 * d, architecture="relu", hook_name=SITE))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.zeros(2 * d, d) if zero else torch.cat([eye, -eye], dim=0))
    return sae


@pytest.fixture(scope="module")
def batch(smol):  # noqa: F811
    """The prompt/completion pairs, right padded, with their completion tokens as the region."""
    model, tokenizer = smol
    encoded = encode(tokenizer, PROMPTS, COMPLETIONS)
    ids, mask = right_padded(encoded, pad_token_id(tokenizer))
    region = torch.zeros_like(mask, dtype=torch.bool)
    for j, e in enumerate(encoded):
        region[j, e.prompt_len:len(e.ids)] = True
    return {"input_ids": ids, "attention_mask": mask, "positions": region}


def test_the_sink_is_not_modeled(smol):  # noqa: F811
    model, tokenizer = smol
    for chat_template in ("off", "on"):
        set_chat_template(tokenizer, chat_template)
        encoded = encode(tokenizer, PROMPTS, COMPLETIONS)
        set_chat_template(tokenizer, "auto")
        ids, mask = right_padded(encoded, pad_token_id(tokenizer))
        acts = run_with_capture(model, ids, mask, [SITE])[SITE]
        norms = acts.norm(dim=-1)
        keep = batch_positions(acts, ids, mask, tokenizer.all_special_ids)
        assert not keep[:, 0].any()
        assert (norms[:, 0] > SINK_NORM_FACTOR * norms[keep].median()).all()  # position 0 is a sink by norm too
        assert keep.sum() >= 0.8 * (mask.sum() - 2 * len(ids))  # ordinary tokens are all kept
        assert not torch.isin(ids[keep], torch.tensor(tokenizer.all_special_ids)).any()


def test_identity_splice_recovers_one_and_zero_ablation_zero(smol, batch):  # noqa: F811
    model, tokenizer = smol
    d = model.config.hidden_size
    one = spliced_metrics(model, identity_sae(d), [batch], SITE, tokenizer.all_special_ids)
    zero = spliced_metrics(model, identity_sae(d, zero=True), [batch], SITE, tokenizer.all_special_ids)
    n_completion = int((batch["positions"] & batch["attention_mask"].bool()).sum())
    assert one["n_spliced_positions"] == n_completion  # every completion token is modeled here
    assert one["n_predictions"] == n_completion - len(PROMPTS)  # the last token predicts nothing
    assert one["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert one["kl_sae"] == pytest.approx(0.0, abs=1e-4) and one["kl_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert zero["kl_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_zero"] > one["ce_clean"] + 1  # zeroing the middle layer hurts
