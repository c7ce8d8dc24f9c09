"""Probes against sklearn on fixed data, save/load, directions in the raw basis, baselines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from rewardlab.probes.baselines import bag_of_words, control_labels
from rewardlab.probes.linear import (fit_bradley_terry, fit_logistic, fit_mlp, fit_ridge, fit_sgd, load_probe,
                                     standardizer)


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([1, 10, 0.1, 1, 3, 1]) + 5
    w = np.array([1.0, -0.2, 4.0, 0.0, 0.5, 0.0])
    y = x @ w + 2.0 + rng.normal(scale=0.3, size=200)
    return x, y


def _z(x):
    mean, std = standardizer(x)
    return (x - mean) / std


def test_ridge_matches_sklearn(xy):
    x, y = xy
    for l2 in (0.0, 1.0, 50.0):
        probe = fit_ridge(x, y, l2=l2)
        ref = Ridge(alpha=l2).fit(_z(x), y) if l2 else Ridge(alpha=1e-12).fit(_z(x), y)
        np.testing.assert_allclose(probe.predict(x), ref.predict(_z(x)), rtol=1e-7, atol=1e-7)
    wide = np.hstack([x, np.random.default_rng(1).normal(size=(200, 300))])  # d > n: the dual solve
    np.testing.assert_allclose(fit_ridge(wide, y, l2=3.0).predict(wide),
                               Ridge(alpha=3.0).fit(_z(wide), y).predict(_z(wide)), rtol=1e-6, atol=1e-6)


def test_direction_is_in_raw_basis(xy):
    x, y = xy
    probe = fit_ridge(x, y, l2=1e-6)
    d = probe.direction()
    assert np.linalg.norm(d) == pytest.approx(1.0)
    # the score grows along the direction at rate |w/std|
    step = probe.predict(x[:1] + d) - probe.predict(x[:1])
    assert step[0] == pytest.approx(np.linalg.norm(probe.weight / probe.std))
    true = np.array([1.0, -0.2, 4.0, 0.0, 0.5, 0.0])
    assert np.dot(d, true / np.linalg.norm(true)) > 0.999


def test_logistic_matches_sklearn(xy):
    x, y = xy
    labels = (y > np.median(y)).astype(float)
    probe = fit_logistic(x, labels, l2=2.0)
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=10000).fit(_z(x), labels)
    np.testing.assert_allclose(probe.weight, ref.coef_[0], rtol=1e-5, atol=1e-6)
    assert probe.bias == pytest.approx(ref.intercept_[0], abs=1e-5)
    np.testing.assert_allclose(probe.predict(x), ref.decision_function(_z(x)), atol=1e-5)


def test_bradley_terry_matches_sklearn_on_symmetric_pairs(xy):
    x, y = xy
    chosen_first = y[:100] > y[100:]
    xc = np.where(chosen_first[:, None], x[:100], x[100:])
    xr = np.where(chosen_first[:, None], x[100:], x[:100])
    probe = fit_bradley_terry(xc, xr, l2=1.0)
    _, std = standardizer(np.vstack([xc, xr]))
    diff = (xc - xr) / std
    # sum over pairs counted twice (d, 1) and (-d, 0): C = 1 / (2 * l2)
    ref = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-12, max_iter=10000).fit(
        np.vstack([diff, -diff]), np.r_[np.ones(100), np.zeros(100)])
    np.testing.assert_allclose(probe.weight, ref.coef_[0], rtol=1e-5, atol=1e-6)
    assert np.mean(probe.predict(xc) > probe.predict(xr)) > 0.9


def test_sgd_is_seeded_and_learns(xy):
    x, y = xy
    a, b = fit_sgd(x, y, epochs=30, seed=0), fit_sgd(x, y, epochs=30, seed=0)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.meta["lr"] == 1e-4 and a.meta["batch_size"] == 8 and a.meta["weight_decay"] == 1e-4
    assert np.corrcoef(a.predict(x), y)[0, 1] > 0.9


def test_mlp_fits_a_nonlinear_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3))
    y = x[:, 0] ** 2 + 0.1 * rng.normal(size=256)
    mlp = fit_mlp(x, y, hidden=32, lr=1e-2, epochs=40, batch_size=64, seed=0)
    ridge = fit_ridge(x, y)
    mse = lambda p: np.mean((p.predict(x) - y) ** 2)  # noqa: E731
    assert mse(mlp) < 0.3 * mse(ridge)


def test_save_load_roundtrip(xy, tmp_path):
    x, y = xy
    for probe in (fit_ridge(x, y, meta={"site": "blocks.1.hook_resid_post", "position": "last_completion",
                                          "model": "m"}),
                  fit_mlp(x, y, epochs=2)):
        probe.save(tmp_path / "p.safetensors")
        back = load_probe(tmp_path / "p.safetensors")
        np.testing.assert_allclose(back.predict(x), probe.predict(x), rtol=1e-6)
        assert back.meta == probe.meta and back.kind == probe.kind


def test_baseline_features():
    texts = ["good good movie", "bad plot", "a great movie"]
    counts = bag_of_words(texts, [0, 1])
    assert counts.shape == (3, 4)  # bad good movie plot
    assert counts[0].tolist() == [0, 2, 1, 0] and counts[2].tolist() == [0, 0, 1, 0]
    y = np.arange(10.0)
    shuffled = control_labels(y, seed=0)
    assert sorted(shuffled) == list(y) and not np.array_equal(shuffled, y)


def test_sweep_two_models_shared_split(tiny_model, word_tokenizer, tmp_path):
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.probes.sweep import SweepConfig, sweep

    rng = np.random.default_rng(0)
    vocab = ["good", "bad", "great", "plot", "movie", "acting", "and", "but"]
    records = []
    for p in range(24):
        prompt = " ".join(rng.choice(["the", "movie", "plot", "acting"], size=2))
        prompt = f"{prompt} {p % 7}"  # distinct prompts; the number is an <unk> word
        for _ in range(4):
            words = list(rng.choice(vocab, size=rng.integers(2, 7)))
            reward = words.count("good") + 2 * words.count("great") - words.count("bad")
            records.append({"prompt": prompt + " " + "x" * (p // 7), "completion": " ".join(words), "reward": reward})
    tok = word_tokenizer()
    cfg = CacheConfig(sites=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_out"],
                      positions=["last_completion", "mean_completion", "last_prompt"])
    stores = {name: cache_activations(tiny_model("gpt2", seed=seed), tok, records, tmp_path / name, cfg, name)
              for name, seed in (("post", 0), ("base", 1))}
    result = sweep(stores, SweepConfig(n_boot=100), tmp_path / "sweep")
    post = result["models"]["post"]
    assert len(post["cells"]) == 9 and post["split"] == result["models"]["base"]["split"]
    best = post["best"]
    assert best["val_spearman"] == max(c["val_spearman"] for c in post["cells"])
    assert best["position"] == "mean_completion" and best["test"]["spearman"]["value"] > 0.6
    selectivity = best["selectivity"]
    assert selectivity["value"] == pytest.approx(best["test"]["spearman"]["value"] - best["control_spearman"])
    assert selectivity["ci"][0] < selectivity["value"] < selectivity["ci"][1]
    assert selectivity["n_groups"] == best["test"]["spearman"]["n_groups"]
    assert post["prompt_only"]["position"] == "last_prompt"
    assert set(post["baselines"]) == {"length", "bag_of_tokens", "embedding"}
    # the strongest baseline is the one with the highest test Spearman, and the paired difference is exact
    versus = best["versus_baselines"]
    strongest = max(post["baselines"], key=lambda k: post["baselines"][k]["spearman"]["value"])
    assert versus["baseline"] == strongest
    diff = versus["difference"]
    assert diff["value"] == pytest.approx(best["test"]["spearman"]["value"]
                                          - post["baselines"][strongest]["spearman"]["value"])
    assert diff["ci"][0] <= diff["value"] <= diff["ci"][1]
    prompt_only = post["prompt_only"]
    assert set(prompt_only["baselines"]) == {"bag_of_prompt_tokens", "embedding"}
    assert prompt_only["versus_baselines"]["baseline"] in prompt_only["baselines"]
    for name in ("post", "base"):
        assert load_probe(tmp_path / "sweep" / f"probe-{name}.safetensors").meta["model"] == name
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    assert not list((tmp_path / "sweep").glob("*.png"))  # the callers draw the figures (report.figures)


@pytest.mark.slow
def test_probes_stage_end_to_end(tiny_model, word_tokenizer, tmp_path):
    from rewardlab.io import write_jsonl
    from rewardlab.rl.value_head import ValueHead
    from rewardlab.stages import probes
    from rewardlab.stages.common import Context, ModelsSection
    from rewardlab.stages.registry import REGISTRY

    tok = word_tokenizer(("the", "movie", "was", "good", "bad", "great", "awful", "plot", "and", "."))
    folders = {"policy": tmp_path / "ppo" / "policy", "base": tmp_path / "base"}
    for name, seed in (("policy", 0), ("base", 1)):
        model = tiny_model("gpt2", seed=seed, n_layers=2)
        model.save_pretrained(folders[name])
        tok.save_pretrained(folders[name])
    ValueHead(32, "linear").save(tmp_path / "ppo")
    prompts = [f"the {w} {v}" for w in ("movie", "plot") for v in ("was", "and", ".", "the", "good", "bad")]
    write_jsonl(tmp_path / "prompts" / "train.jsonl", [{"prompt": p} for p in prompts])
    write_jsonl(tmp_path / "prompts" / "heldout.jsonl", [{"prompt": p} for p in prompts[:4]])
    cfg = probes.Config(samples_per_prompt=3, max_new_tokens=6, sites="blocks.1.hook_resid_post,ln_final.hook_out",
                        steer_alphas=(-1.0, 0.0, 0.5, 1.0), n_steer_prompts=4, n_random=2, n_boot=50)
    (tmp_path / "out").mkdir()
    setting = ModelsSection(base=str(folders["base"]), prompts="p.jsonl")
    ctx = Context(tmp_path, tmp_path / "out", 0, {"base": str(folders["base"]), "ppo": str(folders["policy"])},
                  setting, REGISTRY)
    res = probes.run(cfg, ctx)
    probe, steering = res.probe, res.steering
    assert probe.spearman.ci[0] <= probe.spearman.value <= probe.spearman.ci[1]
    assert probe.prompt_only is not None and probe.versus_baselines.baseline in probe.baselines_test
    assert -1 <= probe.value_head.cosine_with_probe_at_value_site <= 1 and probe.value_head.kind == "linear"
    assert probe.value_head.d_model == 32
    assert "probe~true_reward" in probe.correlations_test and "true_reward~value_head" in probe.correlations_test
    assert steering.alphas == [-1.0, 0.0, 0.5, 1.0]
    assert steering.random_max_abs_effect >= 0
    assert set(steering.directions) == {"mean_diff", "reward_gradient", "probe"}
    for direction in steering.directions.values():
        assert len(direction.reward_mean) == 4 and direction.summary.random_max_abs_effect >= 0
        assert direction.perplexity is not None and direction.grammatical_rate is None  # outside the review world
    assert -1 <= steering.cosines["mean_diff~reward_gradient_at_steer_site"] <= 1
    assert len(steering.random_effects) == 2 and steering.n == 4 * cfg.steer_samples_per_prompt
    for name in ("records", "probe", "steering", "probe_heatmap_policy_png", "probe_heatmap_base_png",
                 "dose_response_png"):
        assert (tmp_path / "out" / probes.ARTIFACTS[name]).is_file(), name