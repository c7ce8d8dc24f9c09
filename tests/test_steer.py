"""Steering: hooks always removed, zero vector = unsteered, effects against random controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.steer import (SteerConfig, dose_response, next_token_kl, random_directions, steered_samples,
                             steering, summarize, typical_norm)

WORDS = ("the", "movie", "was", "good", "bad", "great", "plot", "acting", "and", "but", ".")
PROMPTS = ["the movie", "the plot was", "acting", "the acting and", "but the", "movie was"]


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def setup(tiny_model, word_tokenizer):
    return tiny_model("gpt2", n_layers=2), word_tokenizer(WORDS)


def test_hooks_removed_after_generation_and_exception(setup):
    model, tok = setup
    before = _n_hooks(model)
    cfg = SteerConfig(site="blocks.1.hook_resid_post", max_new_tokens=4)
    vector = random_directions(32, 1, seed=0)[0]
    steered_samples(model, tok, PROMPTS, vector, cfg)
    assert _n_hooks(model) == before
    with pytest.raises(InputError):
        steered_samples(model, tok, PROMPTS, vector, SteerConfig(site=cfg.site, max_new_tokens=0))
    assert _n_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with steering(model, cfg.site, vector):
            assert _n_hooks(model) == before + 1
            raise RuntimeError("boom")
    assert _n_hooks(model) == before


def test_zero_vector_is_unsteered_and_kl(setup):
    model, tok = setup
    cfg = SteerConfig(site="blocks.0.hook_resid_post", max_new_tokens=6)
    plain = steered_samples(model, tok, PROMPTS, None, cfg)
    zero = steered_samples(model, tok, PROMPTS, torch.zeros(32), cfg)
    assert [s.completion_ids for s in plain] == [s.completion_ids for s in zero]
    np.testing.assert_allclose(next_token_kl(model, tok, PROMPTS, torch.zeros(32), cfg), 0.0, atol=1e-6)
    vector = 5 * random_directions(32, 1, seed=0)[0]  # (a constant vector would vanish in the LayerNorm)
    kl_all = next_token_kl(model, tok, PROMPTS, vector, cfg)
    kl_last = next_token_kl(model, tok, PROMPTS, vector, SteerConfig(site=cfg.site, where="completion"))
    assert np.all(kl_all > 1e-4) and np.all(kl_last > 1e-4)
    assert not np.allclose(kl_all, kl_last)  # editing earlier positions too changes more


def test_typical_norm_is_mean_token_norm(setup):
    from rewardlab.sites import run_with_capture

    model, tok = setup
    site = "blocks.1.hook_mlp_out"
    records = [{"prompt": "the movie", "completion": "was good"}, {"prompt": "acting", "completion": "bad ."}]
    norms = []
    for r in records:
        p = tok(r["prompt"])["input_ids"]
        ids = p + tok(r["completion"], add_special_tokens=False)["input_ids"]
        act = run_with_capture(model, torch.tensor([ids]), None, [site])[site][0]
        norms += act[len(p):].norm(dim=-1).tolist()
    assert typical_norm(model, tok, records, site) == pytest.approx(np.mean(norms), rel=1e-5)


@pytest.mark.slow
def test_dose_response_along_a_word_direction(setup, tmp_path):
    model, tok = setup
    with torch.no_grad():  # a random init's logits are nearly uniform; sharpen them (embeddings are tied)
        model.transformer.wte.weight.mul_(10)
    good = tok.convert_tokens_to_ids("good")
    direction = model.get_output_embeddings().weight[good].detach().numpy().copy()

    def reward(texts):
        return [t.split().count("good") for t in texts]

    cfg = SteerConfig(site="blocks.1.hook_resid_post", alphas=(-1.0, 0.0, 0.5, 1.0, 2.0), n_random=8,
                      max_new_tokens=5, n_boot=100)
    result = dose_response(model, tok, PROMPTS * 2, direction, cfg, reward, out=tmp_path,
                           checker=lambda c, p: "good" in c)
    s = result["summary"]
    assert s["monotone_positive"] and s["positive_alphas"] == 3
    assert s["effect_over_random"] >= 3
    assert s["negative_lowers"]
    assert len(result["random_effects"]) == 8 and (tmp_path / "dose_response.png").is_file()
    assert result["rows"][1]["kl_neutral"] == 0.0 and result["rows"][-1]["kl_neutral"]["value"] > 0
    assert "grammatical_rate" in result["rows"][0]


def test_summarize_and_random_directions():
    v = random_directions(16, 8, seed=3)
    np.testing.assert_allclose(v.norm(dim=-1), 1.0, rtol=1e-6)
    assert torch.equal(v, random_directions(16, 8, seed=3))
    rows = [{"reward_mean": {"value": m}, "effect": {"value": m - 1.0}} for m in (0.5, 1.0, 1.5, 2.0, 3.0)]
    result = {"alphas": [-1.0, 0.0, 0.5, 1.0, 2.0], "rows": rows,
              "random_effects": [[0.1, 0, -0.2, 0.1, 0.3], [0.0, 0, 0.1, -0.4, -0.5]]}
    s = summarize(result)
    assert s["monotone_positive"] and s["negative_lowers"]
    assert s["random_max_abs_effect"] == pytest.approx(0.5)
    assert s["effect_over_random"] == pytest.approx(2.0 / 0.5)


@pytest.mark.slow
def test_cli_acts_probe_steer(setup, tmp_path):
    from rewardlab.cli import main
    from rewardlab.io import read_json, write_jsonl

    model, tok = setup
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    records = [{"prompt": PROMPTS[i % 6] + " " + "and " * (i // 6), "completion": " ".join(rng.choice(WORDS, 4)),
                "reward": float(rng.normal())} for i in range(36)]
    write_jsonl(tmp_path / "r.jsonl", records)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    m = str(tmp_path / "m")
    site = "blocks.0.hook_resid_post"
    assert main(["acts", "cache", "--model", m, "--in", str(tmp_path / "r.jsonl"), "--sites", site,
                 "--positions", "last_completion,tokens", "--out", str(tmp_path / "a")]) == 0
    assert read_json(tmp_path / "a" / "manifest.json")["complete"]
    assert main(["acts", "cache", "--model", m, "--in", str(tmp_path / "r.jsonl"), "--sites",
                 "blocks.9.hook_resid_post", "--out", str(tmp_path / "b")]) == 2
    assert main(["probe", "sweep", "--model", m, "--base", m, "--in", str(tmp_path / "r.jsonl"),
                 "--n-boot", "50", "--out", str(tmp_path / "s")]) == 0
    assert main(["steer", "--model", m, "--direction", str(tmp_path / "s" / "probe-post.safetensors"),
                 "--alphas=-1,0,1", "--prompts", str(tmp_path / "p.jsonl"), "--n-random", "1",
                 "--max-new-tokens", "3", "--reward", "char:.", "--out", str(tmp_path / "st")]) == 0
    assert len(read_json(tmp_path / "st" / "steering.json")["rows"]) == 3


def test_stratified_mean_difference_against_brute_force():
    from rewardlab.probes.cross import mean_difference_direction, project_out, stratified_mean_difference

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    label = rng.choice([-2.0, 0.0, 1.5], size=40)
    strata = rng.integers(0, 4, size=40)
    strata[label == 0] = 9  # a stratum with only unlabelled rows drops out
    total, weight = np.zeros(5), 0.0
    for s in range(4):
        pos = [x[i] for i in range(40) if strata[i] == s and label[i] > 0]
        neg = [x[i] for i in range(40) if strata[i] == s and label[i] < 0]
        if pos and neg:
            w = len(pos) * len(neg) / (len(pos) + len(neg))
            total += w * (np.mean(pos, 0) - np.mean(neg, 0))
            weight += w
    np.testing.assert_allclose(stratified_mean_difference(x, label, strata), total / weight, rtol=1e-12)
    # one stratum: the plain difference of means between the two signs
    y = np.where(label > 0, 1.0, np.where(label < 0, -1.0, 0.0))
    plain = x[y > 0].mean(0) - x[y < 0].mean(0)
    np.testing.assert_allclose(stratified_mean_difference(x, label), plain, rtol=1e-12)
    np.testing.assert_allclose(mean_difference_direction(x[y != 0], y[y != 0]), plain, rtol=1e-12)
    with pytest.raises(ValueError):
        stratified_mean_difference(x, np.abs(label), strata)
    a = rng.normal(size=5)
    assert abs(project_out(plain, a) @ a) < 1e-10
    np.testing.assert_allclose(project_out(plain, np.zeros(5)), plain)


def test_token_valences(word_tokenizer):
    from rewardlab.probes.cross import token_valences

    tok = word_tokenizer(WORDS)
    ids = [tok.convert_tokens_to_ids(w) for w in ("good", "bad", "movie", "good")]
    np.testing.assert_array_equal(token_valences(tok, ids, {"good": 1.9, "bad": -2.5}), [1.9, -2.5, 0.0, 1.9])


def test_next_token_valence_direction_on_a_token_store(setup, tmp_path):
    """Against a brute-force computation from the store's own rows."""
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.probes.cross import project_out
    from rewardlab.probes.study import next_token_valence_direction

    model, tok = setup
    site = "blocks.1.hook_resid_post"
    records = [{"prompt": p, "completion": c} for p in PROMPTS
               for c in ("the movie was good .", "the plot was bad .", "acting was great and good",
                         "the acting was bad but good")]
    store = cache_activations(model, tok, records, tmp_path / "acts", CacheConfig(sites=[site], positions=["tokens"]))
    table = {"good": 1.9, "bad": -2.5, "great": 3.1}
    rows = [i for i in range(len(records)) if i % 4 != 3]
    direction, strata = next_token_valence_direction(store, site, tok, table, rows)
    assert strata == "current token"
    # brute force: walk each training record's completion tokens
    x = store.load(site, "tokens").double().numpy()
    pairs, k = [], 0  # (current token, next token or None, activation)
    for i, r in enumerate(records):
        ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
        for j, t in enumerate(ids):
            if i in rows:
                pairs.append((t, ids[j + 1] if j + 1 < len(ids) else None, x[k]))
            k += 1
    assert k == len(x)

    def contrast(side):  # side(next) -> +1 / -1 / 0, within current token
        total, weight = 0.0, 0.0
        for t in {p[0] for p in pairs}:
            pos = [a for c, n, a in pairs if c == t and side(n) > 0]
            neg = [a for c, n, a in pairs if c == t and side(n) < 0]
            if pos and neg:
                w = len(pos) * len(neg) / (len(pos) + len(neg))
                total, weight = total + w * (np.mean(pos, 0) - np.mean(neg, 0)), weight + w
        return total / weight

    valence = {tok.convert_tokens_to_ids(w): v for w, v in table.items()}
    toward_reward = contrast(lambda n: 0 if n is None else np.sign(valence.get(n, 0.0)))
    toward_end = contrast(lambda n: 1 if n is None else -1)
    np.testing.assert_allclose(direction, project_out(toward_reward, toward_end), rtol=1e-6, atol=1e-9)
