"""The difference dictionary (`sae.diffdict`): an encoder on base activations, a decoder predicting post
activations, beside the difference SAE, the crosscoder and the identity / affine baselines."""

import json

import numpy as np
import pytest
import torch

from rewardlab.sae import diffdict as dd
from rewardlab.sae.export import load_sae
from rewardlab.sae.model import SAEConfig
from rewardlab.sae.train import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = TrainConfig(batch_size=128, n_tokens=60_000, lr=1e-2, dead_window=5_000, progress=False)
QUICK = TrainConfig(batch_size=128, n_tokens=10_000, lr=1e-2, dead_window=2_000, progress=False)


def sparse_pair(n=4000, d=8, m=16, n_changed=4, seed=0):
    """x_b = c F_b, x_p = c F_p with the same sparse codes c [n, m] (one active of m > d features); F_p = F_b
    except that the first `n_changed` features write another direction in post. Returns x_b, x_p, groups
    (20 tokens per group)."""
    gen = torch.Generator().manual_seed(seed)
    f_b = torch.randn(m, d, generator=gen)
    f_b = f_b / f_b.norm(dim=1, keepdim=True)
    f_p = f_b.clone()
    f_p[:n_changed] = torch.randn(n_changed, d, generator=gen)
    f_p[:n_changed] /= f_p[:n_changed].norm(dim=1, keepdim=True)
    idx = torch.randint(0, m, (n, 1), generator=gen)
    c = torch.zeros(n, m).scatter_(1, idx, 1 + 3 * torch.rand(n, 1, generator=gen))
    return c @ f_b, c @ f_p, np.arange(n) // 20


def test_targets_equal_to_inputs_train_the_plain_sae_bit_for_bit():
    x, _, _ = sparse_pair(n=2000)
    cfg = SAEConfig(d_in=8, d_sae=24, architecture="batchtopk", k=1)
    plain, paired = train_sae(x, cfg, QUICK).sae, train_sae(x, cfg, QUICK, targets=x).sae
    for (name, a), b in zip(plain.state_dict().items(), paired.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="shaped like the inputs"):
        train_sae(x, cfg, QUICK, targets=x[:, :4])


def test_difference_dictionary_predicts_post_from_base_where_identity_and_affine_cannot():
    x_b, x_p, groups = sparse_pair()
    n_train = 3000
    dicts = dd.train_dictionaries(x_b[:n_train], x_p[:n_train], 32, 1, "blocks.0.hook_resid_post", TRAIN)
    res = dd.evaluate(dicts, x_b[n_train:], x_p[n_train:], groups[n_train:])
    fvu = {k: v["value"] for k, v in res["fvu"].items()}
    assert res["n_tokens"] == 1000 and res["n_groups"] == 50
    assert set(fvu) == set(dd.PREDICTIONS)
    # identity's FVU by hand
    y = x_p[n_train:]
    assert fvu["identity"] == pytest.approx(float(((y - x_b[n_train:]) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()),
                                            rel=1e-6)
    assert fvu["diffdict"] < 0.05 < fvu["affine"] < fvu["identity"]  # post is a sparse, not linear, function of base
    assert res["diffdict_minus"]["affine"]["ci"][1] < 0 and res["diffdict_minus"]["identity"]["ci"][1] < 0
    for est in (*res["fvu"].values(), *res["diffdict_minus"].values()):
        assert est["ci"][0] <= est["value"] <= est["ci"][1] and est["n"] == 1000 and est["n_groups"] == 50
    assert res["metrics"]["diffdict"]["fvu"] == pytest.approx(fvu["diffdict"], rel=1e-5)
    # the changed features are what the difference vectors carry: the most important latents of each
    # dictionary point along the post - base change of a changed feature
    changes = (x_p - x_b)[:n_train]
    for name, v in dd.difference_vectors(dicts).items():
        f = dd.codes(dicts, x_b[:n_train], x_p[:n_train])[name]
        top = torch.argsort(f.mean(0) * v.norm(dim=1), descending=True)[:4]
        # the top latents' vectors span most of the change (least squares on them)
        coef = torch.linalg.lstsq(v[top].T, changes.T).solution
        assert ((v[top].T @ coef - changes.T) ** 2).sum() < 0.5 * (changes ** 2).sum(), name


def test_encoder_sees_only_base_activations():
    x_b, x_p, _ = sparse_pair(n=2000)
    dicts = dd.train_dictionaries(x_b, x_p, 32, 1, None, QUICK)
    b, p = x_b[:50].clone().requires_grad_(True), x_p[:50].clone().requires_grad_(True)
    with torch.enable_grad():
        for name, pred in dd.predict_post(dicts, b, p).items():
            grad_b, grad_p = torch.autograd.grad(pred.pow(2).sum(), (b, p), allow_unused=True)
            reads_post = grad_p is not None and bool(grad_p.abs().sum() > 0)
            assert reads_post == (name in ("diff_sae", "crosscoder")), name
            assert grad_b is not None and grad_b.abs().sum() > 0, name
    # and the codes are those of the base activations: changing post changes no code
    torch.testing.assert_close(dd.codes(dicts, x_b, x_p + 1.0)["diffdict"], dd.codes(dicts, x_b, x_p)["diffdict"],
                               rtol=0, atol=0)


def test_post_equal_to_base_gives_identity_fvu_zero_and_is_refused_for_the_difference_sae():
    x, _, groups = sparse_pair(n=1000)
    est = dd.fvu_estimates({"identity": x}, x, groups)
    assert est["fvu"]["identity"] == {"value": 0.0, "ci": [0.0, 0.0], "n": 1000, "n_groups": 50}
    from rewardlab.errors import InputError
    with pytest.raises(InputError, match="post activations equal the base"):
        dd.train_dictionaries(x, x.clone(), 32, 1, "blocks.0.hook_resid_post", QUICK)


def test_export_round_trip_and_least_squares(tmp_path):
    x_b, x_p, _ = sparse_pair(n=2000)
    dicts = dd.train_dictionaries(x_b, x_p, 32, 1, "blocks.0.hook_resid_post", QUICK)
    dd.save_dictionaries(dicts, tmp_path, "base-model", "post-model")
    for name in dd.DICTIONARIES:
        cfg = json.loads((tmp_path / name / "cfg.json").read_text())
        assert cfg["architecture"] == "jumprelu"
    meta = json.loads((tmp_path / "diffdict" / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "base-model" and meta["target_model_name"] == "post-model"
    loaded = load_sae(tmp_path / "diffdict")
    assert torch.equal(loaded(x_b), dicts.diffdict(x_b))
    # the affine baseline is the least-squares solution (numpy's lstsq on [x, 1])
    xa = np.concatenate([x_b.double().numpy(), np.ones((len(x_b), 1))], 1)
    exact = np.linalg.lstsq(xa, x_p.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(dicts.affine.numpy(), exact, atol=1e-4)


def test_cli_sae_diffdict_on_a_tiny_pair(tmp_path, capsys):
    from rewardlab.cli import main
    from rewardlab.interp.explain import explanation_words
    from tiny_lm import WORDS, save_pair

    base, post = save_pair(tmp_path, scale=0.2)
    rng = np.random.default_rng(1)
    rows = [{"prompt": " ".join(rng.choice(WORDS[4:], 3)), "completion": " " + " ".join(rng.choice(WORDS[4:], 8))}
            for _ in range(60)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["sae", "diffdict", "--base", base, "--post", post, "--in", str(data), "--out", str(tmp_path / "dd"),
            "--site", "blocks.1.hook_resid_post", "--k", "4", "--batch-size", "64", "--n-tokens", "4000",
            "--diffdict-expansion", "2"]
    assert main(args) == 0
    assert "FVU of the post activations" in capsys.readouterr().out
    res = json.loads((tmp_path / "dd" / "diffdict.json").read_text())
    assert set(res["fvu"]) == set(dd.PREDICTIONS) and res["d_sae"] == 64
    assert all(est["ci"][0] <= est["value"] <= est["ci"][1] for est in res["fvu"].values())
    assert set(res["latents"]) == set(dd.DICTIONARIES)
    top = res["latents"]["diffdict"][0]
    assert len(top["promoted"]) == 10 and set(top["promoted"]) <= set(WORDS) and top["top_examples"]
    # every dictionary's latents are explained and scored like SAE features (offline lexical trio here): a
    # latent that fires on held-out tokens gets an explanation naming words of the text, with a simulation score
    for name, latents in res["latents"].items():
        assert res["interp"][name]["backend"]["explainer"] == "lexical"
        for latent in latents:
            if latent["explanation"] is None:
                continue
            words = explanation_words(latent["explanation"])
            assert words and set(words) <= {w.lower() for w in WORDS}
            assert -1 <= latent["simulation"] <= 1
        assert any(latent["explanation"] for latent in latents)
    assert load_sae(tmp_path / "dd" / "diffdict").cfg.hook_name == "blocks.1.hook_resid_post"
    # bad input: an unknown site, and models of different widths, are one clear error each (exit 2)
    site = args.index("--site") + 1
    assert main(args[:site] + ["blocks.9.hook_resid_post"] + args[site + 1:]) == 2
    assert "layer 9 does not exist" in capsys.readouterr().err
    from tiny_lm import word_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel
    other = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=len(WORDS),
                                             bos_token_id=2, eos_token_id=3, pad_token_id=0))
    other.save_pretrained(tmp_path / "wide")
    word_tokenizer().save_pretrained(tmp_path / "wide")
    assert main(args[:5] + [str(tmp_path / "wide")] + args[6:]) == 2
    assert "architectures differ" in capsys.readouterr().err


def test_mean_differences_match_resampling_by_hand():
    x_b, x_p, _ = sparse_pair(n=600)
    dicts = dd.train_dictionaries(x_b, x_p, 32, 1, None, QUICK)
    units = torch.arange(600) // 7  # 86 units of 7 tokens (the last of 5)
    got = dd.mean_differences(dicts, x_b, x_p, units, 3, np.random.default_rng(5))
    draws = np.random.default_rng(5).integers(0, 86, (3, 86))
    vectors, codes = dd.difference_vectors(dicts), dd.codes(dicts, x_b, x_p)
    for name, v in vectors.items():
        per_token = (codes[name] @ v).double()
        torch.testing.assert_close(got[name][0].double(), per_token.mean(0), rtol=1e-5, atol=1e-6)
        for r in range(3):
            rows = torch.cat([torch.nonzero(units == u).squeeze(1) for u in draws[r]])
            torch.testing.assert_close(got[name][r + 1].double(), per_token[rows].mean(0), rtol=1e-5, atol=1e-6)


def test_dictionary_hypotheses_read_the_mean_difference_through_the_logit_lens():
    from rewardlab.organisms import hypotheses as H
    from tiny_lm import COMPLETIONS, PROMPTS, tiny_pair

    base, post, tok = tiny_pair(scale=0.2, layer=0)  # the middle site of 2 blocks is blocks.0.hook_resid_post
    prompts, completions = PROMPTS * 4, COMPLETIONS * 4
    hyps = H.dictionary_hypotheses(base, post, tok, prompts, completions, seed=0, k=4, n_tokens=2000,
                                   n_replicates=5, batch_size=8)
    assert list(hyps) == list(H.DICTIONARY_METHODS)
    for name, h in hyps.items():
        assert h.method == name and h.scores.shape == (len(tok),) and h.replicates.shape == (5, len(tok))
        assert np.isfinite(h.scores).all() and h.replicates.std(0).max() > 0
    again = H.dictionary_hypotheses(base, post, tok, prompts, completions, seed=0, k=4, n_tokens=2000,
                                    n_replicates=5, batch_size=8)
    assert all(np.array_equal(hyps[m].scores, again[m].scores) for m in hyps)  # deterministic


@pytest.mark.slow
def test_the_fast_demo_trains_the_difference_dictionary_and_reports_it(fast_demo):
    """demo-fast.yaml turns the sae stage's diffdict option on: its typed section and the report's section."""
    results = json.loads((fast_demo / "results.json").read_text())
    section = results["diffdict"]
    assert section["site"] == results["sae"]["site"] and set(section["fvu"]) == set(dd.PREDICTIONS)
    for est in (*section["fvu"].values(), *section["diffdict_minus"].values()):
        assert est["ci"][0] <= est["value"] <= est["ci"][1] and est["n"] > 0
    assert set(section["diffdict_minus"]) == set(dd.PREDICTIONS) - {"diffdict"}
    assert set(section["top_latents"]) == set(dd.DICTIONARIES)
    assert set(section["latent_explanations"]) == set(dd.DICTIONARIES)
    assert all(len(section["latent_explanations"][m]) == len(section["top_latents"][m]) for m in dd.DICTIONARIES)
    assert any(text and text.startswith("words: ") for texts in section["latent_explanations"].values() for text in texts)
    written = json.loads((fast_demo / "sae" / "diffdict" / "diffdict.json").read_text())
    assert written["fvu"] == section["fvu"] and written["n_tokens"] == section["fvu"]["identity"]["n"]
    assert load_sae(fast_demo / "sae" / "diffdict" / "diffdict").cfg.hook_name == section["site"]
    report = (fast_demo / "report.html").read_text()
    assert "Difference dictionary: predicting post activations from base" in report
    assert "no difference dictionary in this run" not in report
    assert "what their top-activating held-out tokens are explained as" in report
