"""Self-preference of an LLM judge (its own completions vs another generator's at matched true reward)
and batched local judging (padded batches give the unbatched ratings; the cache does not see batching)."""

import random

import pytest
from test_judge import FakeJudge, endpoint, judge_spec, save_tiny_chat, tiny_chat_folder  # noqa: F401 (fixtures)
from test_ppo import make_tiny_lm

from rewardlab.audit import (PairConfig, audit, format_table, get_scorer, judge_own_vs_other, minimal_pairs,
                             reward_matched_pairs, self_preference, self_preference_verdict, world_sources,
                             world_words)
from rewardlab.cli import main
from rewardlab.io import read_json
from rewardlab.rewards import get_reward


def test_reward_matched_pairs_take_the_closest_rewards_once_each():
    own = [[0.0, 1.0, 0.5, 0.0], [2.0], []]
    other = [[0.45, 0.0, 0.2], [3.0], [1.0]]
    assert reward_matched_pairs(own, other, 0.1) == [(0, 0, 1), (0, 2, 0)]  # gap 0, then gap 0.05; 1.0 has none
    assert reward_matched_pairs(own, other, 0.0) == [(0, 0, 1)]  # the second 0.0 finds its partner taken
    assert reward_matched_pairs(own, other, 0.2) == [(0, 0, 1), (0, 2, 0), (0, 3, 2)]
    assert reward_matched_pairs(own, other, 1.0)[-1] == (1, 0, 0)
    assert reward_matched_pairs([[0.0, 0.0]], [[0.0, 0.0]], 0.0) == [(0, 0, 0), (0, 1, 1)]


class StubJudge:
    """rate(prompts, texts) and prefer(prompts, a, b) from plain functions of the texts."""

    def __init__(self, rating, p_first):
        self.rating, self.p_first = rating, p_first

    def rate(self, prompts, texts):
        return [self.rating(t) for t in texts]

    def prefer(self, prompts, a, b):
        return [self.p_first(x, y) for x, y in zip(a, b)]


OWN = [f"own completion {i} was good" for i in range(60)]
OTHER = [f"the movie {i} was good" for i in range(60)]
PROMPTS = [f"prompt {i // 2}" for i in range(60)]  # two pairs per prompt: CIs resample the 30 prompts
GROUPS = [i // 2 for i in range(60)]


def test_a_judge_that_favours_one_source_gives_rate_1_and_detection():
    partisan = StubJudge(lambda t: 9.0 if t.startswith("own") else 2.0,
                         lambda a, b: 0.9 if a.startswith("own") else 0.1)
    rates = judge_own_vs_other(partisan, PROMPTS, OWN, OTHER, GROUPS)
    for mode in ("pointwise", "pairwise"):
        assert rates[mode]["prefers_own"] == {"value": 1.0, "ci": [1.0, 1.0], "n": 60, "n_groups": 30}
    assert rates["pointwise"]["rating_gap"]["value"] == 7.0 and rates["pairwise"]["p_own"]["value"] == pytest.approx(0.9)
    assert self_preference_verdict(rates) == (True, "self-preference detected (pointwise, pairwise: CI above 0.5)")
    contrarian = StubJudge(lambda t: 2.0 if t.startswith("own") else 9.0,
                           lambda a, b: 0.5)  # pairwise indifferent, pointwise against its own
    detected, verdict = self_preference_verdict(judge_own_vs_other(contrarian, PROMPTS, OWN, OTHER, GROUPS))
    assert not detected and verdict.startswith("no self-preference; the judge prefers the other's") \
        and "pointwise: CI below" in verdict


def test_a_position_biased_judge_of_the_true_reward_is_exactly_neutral_on_matched_pairs():
    """Rating by the true reward ties every exactly matched pair (0.5 with ties half); always answering A
    is cancelled by showing both orders (P(own) = (0.8 + 1 - 0.8) / 2 = 1/2 for every pair)."""
    utility = get_reward("utility")
    fair = StubJudge(lambda t: utility([t])[0], lambda a, b: 0.8)
    rates = judge_own_vs_other(fair, PROMPTS, OWN, OTHER, GROUPS)
    assert rates["pointwise"]["prefers_own"]["value"] == 0.5 and rates["pairwise"]["prefers_own"]["value"] == 0.5
    assert rates["pairwise"]["p_own"]["value"] == pytest.approx(0.5)
    assert self_preference_verdict(rates) == (False, "no self-preference detected (both CIs include 0.5)")


def test_a_judge_that_ignores_the_source_lands_near_one_half():
    rng = random.Random(3)
    noise = {t: rng.random() for t in OWN + OTHER}
    neutral = StubJudge(lambda t: noise[t], lambda a, b: noise[a] / (noise[a] + noise[b]))
    rates = judge_own_vs_other(neutral, PROMPTS, OWN, OTHER, GROUPS)
    for mode in ("pointwise", "pairwise"):
        est = rates[mode]["prefers_own"]
        assert 0.35 < est["value"] < 0.65 and est["ci"][0] < 0.5 < est["ci"][1]
    assert not self_preference_verdict(rates)[0]


def test_self_preference_of_a_local_judge_against_a_world_model_and_the_grammar(tiny_chat_folder, tmp_path):  # noqa: F811
    judge = get_reward(f"judge:{tiny_chat_folder},cache={tmp_path / 'cache'},scale=1-3").judge
    reference = get_reward("utility")
    other = make_tiny_lm(tmp_path / "other")
    cfg = PairConfig(self_prompts=4, self_samples=3, self_tolerance=0.5, self_other=other, self_max_new_tokens=8)
    got = self_preference(judge, cfg, reference, seed=1)
    assert got["applies"] and got["generator"] == f"hf:{tiny_chat_folder}" and got["other"] == other
    assert got["candidates"] == {"own": 12, "other": 12} and got["num_prompts"] == 4
    assert 1 <= got["num_pairs"] <= 12 and got["mean_abs_reward_gap"] <= 0.5
    for ex in got["examples"]:
        assert abs(reference([ex["own"]])[0] - reference([ex["other"]])[0]) <= 0.5
    for mode in ("pointwise", "pairwise"):
        est = got[mode]["prefers_own"]
        assert est["n"] == got["num_pairs"] and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert self_preference(judge, cfg, reference, seed=1) == got  # deterministic (and the second pass is cached)
    grammar = self_preference(judge, PairConfig(self_prompts=3, self_samples=2, self_tolerance=100.0,
                                                self_max_new_tokens=8), reference)
    assert grammar["other"] == "world grammar documents" and grammar["candidates"] == {"own": 6, "other": 3}
    assert grammar["num_pairs"] == 3  # one grammar document per prompt, every reward within 100
    sources = world_sources(3, 0, 3)
    assert [ex["other"] for ex in grammar["examples"]] == [s["completion"] for s in sources]


def test_audit_reports_self_preference_where_it_applies_and_says_why_not_elsewhere(tiny_chat_folder, endpoint,  # noqa: F811
                                                                                    tmp_path, capsys):
    spec = f"judge:{tiny_chat_folder},cache={tmp_path / 'cache'},scale=1-3"
    assert main(["audit", "--rm", spec, "--n-sources", "4", "--position-pairs", "2", "--self-prompts", "3",
                 "--self-samples", "2", "--self-tolerance", "100", "--self-max-new-tokens", "6",
                 "--out", str(tmp_path / "audit")]) == 0
    sp = read_json(tmp_path / "audit" / "results.json")["judge_biases"]["self_preference"]
    assert sp["applies"] and sp["num_pairs"] == 3 and sp["verdict"] in capsys.readouterr().out
    cfg = PairConfig(n_sources=4, position_pairs=2)
    pairs = minimal_pairs(world_sources(cfg.n_sources, cfg.seed, cfg.prompt_words), world_words(), cfg)
    results = audit(get_scorer(judge_spec(endpoint, tmp_path / "c2", scale="1-100")), pairs, cfg=cfg)[0]
    sp = results["judge_biases"]["self_preference"]
    assert not sp["applies"] and sp["reason"].startswith("does not apply: the judge is an endpoint")
    assert "judge self-preference: does not apply" in format_table(results)
    with_generator = PairConfig(n_sources=4, position_pairs=0, self_prompts=2, self_samples=2, self_tolerance=100.0,
                                self_max_new_tokens=4, self_generator=str(tiny_chat_folder))
    sp = audit(get_scorer(judge_spec(endpoint, tmp_path / "c3", scale="1-100")), pairs, cfg=with_generator)[0][
        "judge_biases"]["self_preference"]
    assert sp["applies"] and sp["generator"] == f"hf:{tiny_chat_folder}" and sp["num_pairs"] == 2
    FakeJudge.calls.clear()
    assert main(["audit", "--rm", judge_spec(endpoint, tmp_path / "c4"), "--n-sources", "4",
                 "--self-other", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad")]) == 2
    assert not FakeJudge.calls and "--self-other" in capsys.readouterr().err  # refused before any rating


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_local_ratings_equal_one_at_a_time_and_share_the_cache(family, tmp_path, tiny_model,
                                                                        word_tokenizer):
    folder = save_tiny_chat(tmp_path / family, family, tiny_model, word_tokenizer)
    texts = ["was good", "the movie was bad . the movie was good", "good", "was bad bad bad ."]
    prompts = ["the movie", "", "the", "the movie was"]
    one = get_reward(f"judge:{folder},cache=off,scale=1-3,batch=1")
    batched = get_reward(f"judge:{folder},cache={tmp_path / 'cache'},scale=1-3,batch=3")
    assert batched(texts, prompts) == pytest.approx(one(texts, prompts), abs=1e-5)
    assert batched.judge.prefer(prompts, texts, texts[::-1]) == pytest.approx(
        one.judge.prefer(prompts, texts, texts[::-1]), abs=1e-5)
    reread = get_reward(f"judge:{folder},cache={tmp_path / 'cache'},scale=1-3,batch=1")
    assert reread(texts, prompts) == batched(texts, prompts)  # stored rows, whatever the batching
    assert (reread.judge.client.hits, reread.judge.client.misses) == (4, 0)


def test_sampled_replies_are_deterministic_and_greedy_matches_complete(tiny_chat_folder):  # noqa: F811
    client = get_reward(f"judge:{tiny_chat_folder},cache=off,scale=1-3").judge.client
    short = [{"role": "user", "content": "the movie"}]
    long = [{"role": "system", "content": "you are a judge ."}, {"role": "user", "content": "the movie was good"}]
    assert client.sample_replies([short, long], 10, 0.0, seed=0) == [
        client.complete(short, 10).strip(), client.complete(long, 10).strip()]  # left padding changes nothing
    sampled = client.sample_replies([short, long, short], 10, 1.0, seed=5)
    assert sampled == client.sample_replies([short, long, short], 10, 1.0, seed=5)
    assert sampled != client.sample_replies([short, long, short], 10, 1.0, seed=6)
