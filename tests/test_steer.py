"""Steering: hooks always removed, zero vector = unsteered, effects against random controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.steer import (SteerConfig, dose_response, fluency, next_token_kl, random_directions,
                             steered_samples, steering, summarize, typical_norm)

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


def test_steering_runs_sampled_together_equal_one_at_a_time(setup):
    """`steered_runs` (several vectors per decoding loop, rows capped by max_rows) gives each vector the samples
    of a run of its own (one hook with that vector, one generator of seed cfg.seed); next_token_kl of
    several vectors equals its value per vector."""
    from rewardlab.sampling import generate
    from rewardlab.steer import run_groups, steered_runs

    model, tok = setup
    vectors = 4 * random_directions(32, 5, seed=2)
    cfg = SteerConfig(site="blocks.1.hook_resid_post", where="completion", max_new_tokens=6, batch_size=4, max_rows=8,
                      seed=3)
    assert [list(g) for g in run_groups(5, cfg)] == [[0, 1], [2, 3], [4]]
    together = steered_runs(model, tok, PROMPTS, vectors, cfg)
    for v, samples in zip(vectors, together):
        with steering(model, cfg.site, v, cfg.where):
            alone = generate(model, tok, PROMPTS, max_new_tokens=6, generator=torch.Generator().manual_seed(3),
                             batch_size=4)
        assert [s.completion_ids for s in samples] == [s.completion_ids for s in alone]
    assert [s.completion_ids for s in steered_samples(model, tok, PROMPTS, vectors[1], cfg)] == \
        [s.completion_ids for s in together[1]]
    assert len({str([s.completion_ids for s in run]) for run in together}) > 1  # the vectors matter
    kl = next_token_kl(model, tok, PROMPTS, vectors, cfg)
    assert kl.shape == (5, len(PROMPTS))
    for v, row in zip(vectors, kl):
        np.testing.assert_allclose(row, next_token_kl(model, tok, PROMPTS, v, cfg), rtol=1e-4, atol=1e-7)


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

    seen_prompts = set()

    def reward(texts, prompts):  # a prompt-aware reward gets each sample's own prompt
        assert len(prompts) == len(texts)
        seen_prompts.update(prompts)
        return [t.split().count("good") for t in texts]

    cfg = SteerConfig(site="blocks.1.hook_resid_post", alphas=(-1.0, 0.0, 0.5, 1.0, 2.0), n_random=8,
                      max_new_tokens=5, n_boot=100)
    result = dose_response(model, tok, PROMPTS * 2, {"good": direction}, cfg, reward,
                           checker=lambda c, p: "good" in c)
    rows, s = result["directions"]["good"]["rows"], result["directions"]["good"]["summary"]
    assert s["monotone_positive"] and s["positive_alphas"] == 3
    assert s["effect_over_random"] >= 3
    assert s["negative_lowers"]
    assert seen_prompts == set(PROMPTS)
    assert len(result["random_effects"]) == 8
    assert rows[1]["kl_neutral"] == 0.0 and rows[-1]["kl_neutral"]["value"] > 0
    assert "grammatical_rate" in rows[0]
    # fluency beside every effect; the checker here ("good" in the text) only rises with alpha
    assert all(r["fluent"] for r in rows[1:]) and s["alpha_up"] == 2.0 and s["alpha_down"] in (-1.0, None)
    assert [r["fluency"] for r in rows] == [r["grammatical_rate"]["value"] for r in rows]
    # every steered text of every direction and alpha, with its reward
    samples = result["samples"]
    assert len(samples) == 5 * len(PROMPTS) * 2
    at_two = [x for x in samples if x["alpha"] == 2.0]
    assert np.mean([x["reward"] for x in at_two]) == pytest.approx(rows[-1]["reward_mean"]["value"])
    assert {x["prompt"] for x in at_two} == set(PROMPTS)


def test_a_zero_or_nan_direction_is_refused_before_sampling(setup):
    model, tok = setup
    cfg = SteerConfig(site="blocks.1.hook_resid_post", alphas=(0.0, 1.0), n_random=1, max_new_tokens=2)
    for bad in (np.zeros(model.config.n_embd), np.full(model.config.n_embd, np.nan)):
        with pytest.raises(InputError, match="zero or not finite"):
            dose_response(model, tok, PROMPTS, {"flat": bad}, cfg, lambda texts, prompts: [0.0] * len(texts), progress=False)
    wide = np.ones(model.config.n_embd + 1)
    with pytest.raises(InputError, match=f"the wide direction has shape .{wide.size},., the model's width is"):
        dose_response(model, tok, PROMPTS, {"wide": wide}, cfg, lambda texts, prompts: [0.0] * len(texts), progress=False)


def test_summarize_and_random_directions():
    v = random_directions(16, 8, seed=3)
    np.testing.assert_allclose(v.norm(dim=-1), 1.0, rtol=1e-6)
    assert torch.equal(v, random_directions(16, 8, seed=3))
    rows = [{"reward_mean": {"value": m}, "effect": {"value": m - 1.0}} for m in (0.5, 1.0, 1.5, 2.0, 3.0)]
    s = summarize([-1.0, 0.0, 0.5, 1.0, 2.0], rows, [[0.1, 0, -0.2, 0.1, 0.3], [0.0, 0, 0.1, -0.4, -0.5]])
    assert s["monotone_positive"] and s["negative_lowers"]
    assert s["random_max_abs_effect"] == pytest.approx(0.5)
    assert s["effect_over_random"] == pytest.approx(2.0 / 0.5)
    assert s["effect_at_min_alpha"] == pytest.approx(-0.5)
    assert s["effect_over_random_at_min_alpha"] == pytest.approx(0.5 / 0.1)
    up_only = summarize([0.0, 1.0], rows[1:4:2], [[0, 0.1]])
    assert up_only["effect_at_min_alpha"] is None and up_only["effect_over_random_at_min_alpha"] is None


def test_effect_over_random_is_read_only_where_fluency_holds():
    rows = [{"reward_mean": {"value": m}, "effect": {"value": m - 1.0}, "fluent": ok, "fluency": f}
            for m, ok, f in ((0.5, False, 9.0), (1.0, True, 1.0), (1.5, True, 1.3), (2.0, True, 1.8),
                             (3.0, False, 40.0))]
    random = [[0.1, 0, -0.2, 0.1, 0.3], [0.0, 0, 0.1, -0.4, -0.5]]
    s = summarize([-1.0, 0.0, 0.5, 1.0, 2.0], rows, random)
    assert s["alpha_up"] == 1.0 and s["fluency_up"] == 1.8  # alpha 2 broke the text: not the headline
    assert s["effect_at_max_alpha"] == 1.0 and s["effect_over_random"] == pytest.approx(1.0 / 0.4)
    assert s["alpha_down"] is None and s["effect_over_random_at_min_alpha"] is None
    assert s["fluent"] == [False, True, True, True, False]
    broken = [dict(r, fluent=r["effect"]["value"] == 0.0) for r in rows]
    none = summarize([-1.0, 0.0, 0.5, 1.0, 2.0], broken, random)
    assert none["alpha_up"] is None and none["effect_over_random"] is None and none["effect_at_max_alpha"] is None


def test_fluency_bounds():
    cfg = SteerConfig(site="blocks.0.hook_resid_post")
    ref = {"perplexity": 26.0}
    assert fluency({"perplexity": 52.0}, ref, cfg)["fluent"]  # 2x: the bound itself
    f = fluency({"perplexity": 1543.0}, ref, cfg)  # the real run
    assert not f["fluent"] and f["fluency"] == pytest.approx(1543 / 26) and "perplexity" in f["fluency_measure"]
    assert not fluency({"perplexity": float("nan")}, ref, cfg)["fluent"]
    gram = {"grammatical_rate": {"value": 0.9}}
    assert fluency({"grammatical_rate": {"value": 0.73}}, gram, cfg)["fluent"]  # 0.8 x 0.9 = 0.72
    assert not fluency({"grammatical_rate": {"value": 0.71}}, gram, cfg)["fluent"]


@pytest.mark.slow
def test_cli_acts_probe_steer(setup, tmp_path):
    from rewardlab.cli import main
    from rewardlab.io import read_json, read_jsonl, write_jsonl

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
    assert all((tmp_path / "s" / f"heatmap-{name}.png").stat().st_size > 1000 for name in ("post", "base"))
    assert main(["steer", "--model", m, "--direction", str(tmp_path / "s" / "probe-post.safetensors"),
                 "--alphas=-1,0,1", "--prompts", str(tmp_path / "p.jsonl"), "--n-random", "1",
                 "--max-new-tokens", "3", "--reward", "char:.", "--out", str(tmp_path / "st")]) == 0
    assert len(read_json(tmp_path / "st" / "steering.json")["directions"]["probe"]["rows"]) == 3
    assert len(read_jsonl(tmp_path / "st" / "steered.jsonl")) == 3 * len(PROMPTS)
    assert (tmp_path / "st" / "dose_response.png").stat().st_size > 1000
    for direction in ("mean-diff", "reward-gradient"):
        assert main(["steer", "--model", m, "--direction", direction, "--site", site, "--records",
                     str(tmp_path / "r.jsonl"), "--alphas=-1,0,1", "--prompts", str(tmp_path / "p.jsonl"),
                     "--n-random", "1", "--max-new-tokens", "3", "--reward", "char:.",
                     "--out", str(tmp_path / direction)]) == 0
        assert len(read_json(tmp_path / direction / "steering.json")["directions"][direction]["rows"]) == 3
    assert main(["steer", "--model", m, "--direction", "reward-gradient", "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "x")]) == 2  # needs --site and --records


def test_steered_logprobs_match_steered_generation(setup, tiny_model):
    """Teacher-forced log-probs with the vector where `steering` adds it equal generation's own."""
    from rewardlab.sampling import generate
    from rewardlab.steer import steered_logprobs

    _, tok = setup
    model = tiny_model("gpt2", n_layers=2, vocab_size=len(tok))  # every sampled id is a word
    vector = 3 * random_directions(32, 1, seed=4)[0]
    for where in ("completion", "all"):
        cfg = SteerConfig(site="blocks.0.hook_resid_post", where=where, max_new_tokens=5)
        with steering(model, cfg.site, vector, where):
            samples = generate(model, tok, PROMPTS * 4, max_new_tokens=5, generator=torch.Generator().manual_seed(0),
                               return_logprobs=True)
        samples = [s for s in samples  # texts that re-tokenize to the sampled ids (no eos, no special tokens)
                   if tok(s.completion, add_special_tokens=False)["input_ids"] == s.completion_ids]
        assert len(samples) >= 2
        with torch.no_grad():
            logp = steered_logprobs(model, tok, [s.prompt for s in samples], [s.completion for s in samples],
                                    vector, cfg.site, where)
        np.testing.assert_allclose(logp.numpy(), [sum(s.logprobs) for s in samples], rtol=1e-4, atol=1e-4)


def test_reward_gradient_against_brute_force(setup):
    """Leave-one-out advantages and the gradient of sum_i A_i log p_i(v) / n, one sample at a time."""
    from rewardlab.steer import reward_gradient_direction, steered_logprobs

    model, tok = setup
    site = "blocks.1.hook_resid_pre"
    prompts = [p for p in PROMPTS[:3] for _ in range(3)] + ["acting and"]
    completions = ["was good .", "bad", "the plot", "good and great", "was", "bad bad .", "movie", "the acting",
                   "good", "was bad"]
    rewards = np.arange(10, dtype=np.float64) ** 1.5
    got = reward_gradient_direction(model, tok, prompts, completions, rewards, site, batch_size=4)
    expected = np.zeros(32)
    for i in range(10):
        same = [j for j in range(10) if prompts[j] == prompts[i] and j != i]
        advantage = rewards[i] - (np.mean(rewards[same]) if same else rewards.mean())
        v = torch.zeros(32, requires_grad=True)
        steered_logprobs(model, tok, [prompts[i]], [completions[i]], v, site)[0].backward()
        expected += advantage * v.grad.double().numpy() / 10
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert np.linalg.norm(got) > 0


def test_decoding_loops_stay_within_their_memory_budget(setup):
    """`decoding_row_bytes` counts a row's KV cache exactly (once: the loop's cache is preallocated) plus four
    float32 logit rows; `run_groups` puts fewer runs in a loop when rows are big, never fewer than one."""
    from rewardlab.sampling import decoding_row_bytes
    from rewardlab.steer import run_groups

    model, tok = setup
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).cache
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert decoding_row_bytes(model, 7) == kv + 16 * model.config.vocab_size
    cfg = SteerConfig(site="blocks.1.hook_resid_post", batch_size=4, max_rows=64, max_loop_mib=1.0)
    assert [len(g) for g in run_groups(10, cfg)] == [10]  # no row size given: max_rows alone (16 runs a loop)
    assert [len(g) for g in run_groups(10, cfg, row_bytes=2**20 // 12)] == [3, 3, 3, 1]  # 12 rows: 3 runs of 4
    assert [len(g) for g in run_groups(3, cfg, row_bytes=2**21)] == [1, 1, 1]  # over budget: one run a loop
