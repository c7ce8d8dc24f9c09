"""Crosscoder: relative decoder norms find planted post-only features; Latent Scaling math."""

import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_thread")

from rewardlab.sae.crosscoder import Crosscoder, classify, diff_summary, latent_scaling
from rewardlab.sae.model import SAEConfig
from rewardlab.sae.train import TrainConfig, train_sae


def paired_data(n=12_000, d=16, n_shared=24, n_post=6, seed=0):
    """Base and post activations sharing n_shared features; n_post features appear in post only."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_shared + n_post, d, generator=gen)
    feats = feats / feats.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_shared + n_post, generator=gen).topk(2, dim=1).indices
    codes = torch.zeros(n, n_shared + n_post).scatter_(1, idx, 1 + 3 * torch.rand(n, 2, generator=gen))
    post = codes @ feats
    base = codes[:, :n_shared] @ feats[:n_shared]
    return torch.cat([base, post], dim=1), feats


def test_crosscoder_finds_post_only_features():
    acts, feats = paired_data()
    cfg = SAEConfig(d_in=32, d_sae=64, architecture="batchtopk", k=2)
    cc = train_sae(acts, cfg, TrainConfig(batch_size=256, n_tokens=400_000, dead_window=20_000),
                   model_cls=Crosscoder).sae
    summary = diff_summary(cc, acts)
    live = [l for l in summary["latents"] if l["class"] != "dead"]
    post_only = [l["latent"] for l in live if l["class"] == "post_only"]
    # every planted post-only feature has a post-only latent pointing at it
    post_dirs = cc.W_dec[post_only, 16:]
    post_dirs = post_dirs / post_dirs.norm(dim=1, keepdim=True)
    assert (feats[24:] @ post_dirs.T).max(dim=1).values.min() > 0.9
    # and shared features are not called post-only
    assert summary["counts_before"]["shared"] >= 20
    assert summary["counts_before"]["post_only"] <= 12
    assert summary["counts_after"]["post_only"] + summary["counts_after"]["false_post_only"] == \
        summary["counts_before"]["post_only"]
    # genuine post-only latents have small scaling ratios
    assert all(abs(summary["latents"][j]["nu_eps"]) < 0.5 for j in post_only
               if (feats[24:] @ post_dirs[post_only.index(j)]).max() > 0.9)


def test_latent_scaling_matches_least_squares():
    gen = torch.Generator().manual_seed(0)
    cc = Crosscoder(SAEConfig(d_in=8, d_sae=6, architecture="batchtopk", k=2), generator=gen)
    with torch.no_grad():
        cc.W_dec.mul_(torch.rand(6, 1, generator=gen) + 0.5)
        cc.threshold.fill_(0.1)
    acts = torch.randn(400, 8, generator=gen)
    out = latent_scaling(cc, acts, batch_size=64)
    f = cc.encode(acts)
    x_hat = cc.decode(f)
    for j in range(6):
        fj = f[:, j:j + 1]
        if fj.abs().sum() == 0:
            continue
        d_post = cc.W_dec[j, 4:]
        for m, sl in (("base", slice(0, 4)), ("post", slice(4, 8))):
            d_m = cc.W_dec[j, sl]
            for kind, y in (("r", x_hat[:, sl] - fj * d_m), ("eps", acts[:, sl] - x_hat[:, sl] + fj * d_m)):
                design = (fj * d_post).reshape(-1, 1)
                beta = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution.item()
                assert abs(out[f"beta_{kind}_{m}"][j].item() - beta) < 1e-4


def test_classify_thresholds():
    assert classify(torch.tensor([0.05, 0.95, 0.5, 0.3])) == ["post_only", "base_only", "shared", "other"]


def test_run_crosscoder_lists_post_only_top_tokens():
    """The pipeline's crosscoder step lists every post-only latent with its top held-out tokens."""
    import numpy as np

    from rewardlab.sae.diffing import DiffConfig, TokenActs, run_crosscoder
    from tiny_lm import word_tokenizer

    acts, _ = paired_data()
    tok = word_tokenizer()
    row_ids = torch.arange(len(acts)) // 10
    token_ids = torch.randint(4, len(tok), (len(acts),), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(len(acts)) % 10 + 1  # none is a sequence's first position
    tokens = {"base": TokenActs(acts[:, :16], row_ids, token_ids, positions),
              "post": TokenActs(acts[:, 16:], row_ids, token_ids, positions)}
    cfg = DiffConfig(k=2, crosscoder_expansion=4,
                     train=TrainConfig(batch_size=256, n_tokens=400_000, dead_window=20_000))
    res = run_crosscoder(tok, {"base": None, "post": None}, tokens, row_ids < 1000, np.arange(1000, 1200),
                         "blocks.0.hook_resid_post", cfg)
    assert res["counts_before"]["post_only"] == len(res["post_only"]) > 0
    for latent in res["post_only"]:
        examples = latent["top_examples"]
        assert examples and all(e["activation"] > 0 and e["token"] in tok.get_vocab() for e in examples)
        assert [e["activation"] for e in examples] == sorted((e["activation"] for e in examples), reverse=True)
