"""The difference dictionary on the real model (SmolLM2-135M-Instruct, a middle layer): against itself the
identity prediction is exact (FVU 0) and the dictionaries refuse to train; against a copy with one block's
MLP perturbed, the difference dictionary trains and every prediction's FVU is finite with its CI."""

import copy

import numpy as np
import pytest
import torch

from rewardlab.acts import collect_activations
from rewardlab.sae import diffdict as dd
from rewardlab.sae.train import TrainConfig
from test_real_model import smol  # noqa: F401  (the module-scoped real-model fixture)

pytestmark = pytest.mark.real_model

SITE = "blocks.12.hook_resid_post"
RECORDS = [{"prompt": p, "completion": c} for p, c in [
    ("Write one sentence about a film you liked.", " The acting was wonderful and the story moved me deeply."),
    ("Is the plot of this movie any good?", " Honestly, it was boring and far too long for what it said."),
    ("Review:", " a quiet, funny film with a warm heart and a great final scene."),
    ("Describe the soundtrack.", " Lush strings, a few sharp drums, and one song I still hum."),
]]


def tokens_of(model, tokenizer):
    acts = collect_activations(model, tokenizer, RECORDS, [SITE], ["tokens"], batch_size=4)[f"{SITE}|tokens"]
    return acts


def test_real_model_against_itself_and_a_perturbed_copy(smol):  # noqa: F811
    model, tokenizer = smol
    x_b = tokens_of(model, tokenizer)
    groups = np.arange(len(x_b)) // 8
    same = dd.fvu_estimates({"identity": x_b}, tokens_of(model, tokenizer), groups)["fvu"]["identity"]
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0]
    from rewardlab.errors import InputError
    with pytest.raises(InputError, match="equal the base"):
        dd.train_dictionaries(x_b, x_b.clone(), 64, 4, SITE)
    post = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = post.model.layers[10].mlp.down_proj.weight
        w.add_(0.05 * w.std() * torch.randn(w.shape, generator=gen))
    x_p = tokens_of(post, tokenizer)
    assert not torch.equal(x_b, x_p)
    train = TrainConfig(batch_size=len(x_b) // 2, n_tokens=10 * len(x_b), progress=False)
    dicts = dd.train_dictionaries(x_b, x_p, x_b.shape[1], 8, SITE, train)
    res = dd.evaluate(dicts, x_b, x_p, groups)
    for est in res["fvu"].values():
        assert np.isfinite(est["value"]) and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert 0 < res["fvu"]["identity"]["value"] < 1
