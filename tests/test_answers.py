"""Verdicts are consistent with their evidence: "yes" only when the evidence beats the strongest
baseline with a CI that excludes it (constructed results on top of a real demo run)."""

import dataclasses
import json

import pytest

from rewardlab.answers import EMBEDDING_SITE, QUESTIONS, answer_all, versus
from rewardlab.schema import from_json
from rewardlab.stages.probes import Comparison
from rewardlab.stages.registry import Results
from rewardlab.stats import Estimate


@pytest.fixture
def results(fast_demo) -> Results:
    return from_json(Results, json.loads((fast_demo / "results.json").read_text()))


def est(value, lo, hi, n=100):
    return Estimate(value, (lo, hi), n)


def with_probe(r: Results, **changes) -> Results:
    """The probe section changed, and no value section: questions 1 and 2 then read the probe."""
    return dataclasses.replace(r, probe=dataclasses.replace(r.probe, **changes), value_probe=None)


def test_every_question_has_an_answer_consistent_with_the_rule(results):
    answers = answer_all(results)
    assert list(answers) == list(QUESTIONS)
    assert {a.verdict for a in answers.values()} <= {"yes", "no", "inconclusive"}
    assert not answers["q8-dialogue"].text.startswith("Not run")  # the fast demo's dialogue stage
    no_dialogue = answer_all(dataclasses.replace(results, dialogue=None))["q8-dialogue"]
    assert no_dialogue.verdict == "inconclusive" and no_dialogue.text.startswith("Not run")
    for qid in ("q1-probe", "q2-prompt-probe"):  # from the value section in the demo (tests/test_value_stage.py)
        a = answers[qid]
        if a.verdict == "yes":
            assert a.evidence["difference"].ci[0] > 0
        assert a.evidence["baseline"].replace("_", " ") in a.text
    probe_only = answer_all(dataclasses.replace(results, value_probe=None))["q1-probe"]
    if probe_only.verdict == "yes":
        assert results.probe.versus_baselines.difference.ci[0] > 0
    assert results.probe.versus_baselines.baseline.replace("_", " ") in probe_only.text


def test_versus():
    assert versus((0.1, 0.3), 0.0) == "yes" and versus((-0.3, -0.1), 0.0) == "no"
    assert versus((-0.1, 0.3), 0.0) == "inconclusive" and versus((0.4, 0.6), 0.5) == "inconclusive"


def test_a_probe_that_the_bag_of_tokens_beats_is_not_yes(results):
    """The demo's own situation before this check: probe 0.944, bag of tokens 0.998."""
    r = with_probe(results, best_site="blocks.2.hook_resid_post", spearman=est(0.944, 0.924, 0.957),
                   versus_baselines=Comparison("bag_of_tokens", est(-0.054, -0.07, -0.04)))
    a = answer_all(r)["q1-probe"]
    assert a.verdict == "no" and "bag of tokens" in a.text and "not an estimate of reward" in a.text
    r = with_probe(r, versus_baselines=Comparison("bag_of_tokens", est(0.01, -0.02, 0.04)))
    assert answer_all(r)["q1-probe"].verdict == "inconclusive"  # the CI contains the baseline


def test_a_probe_that_beats_its_baseline_is_yes_unless_it_is_the_embedding(results):
    r = with_probe(results, best_site="blocks.2.hook_resid_post", spearman=est(0.8, 0.75, 0.85),
                   versus_baselines=Comparison("length", est(0.3, 0.2, 0.4)))
    assert answer_all(r)["q1-probe"].verdict == "yes"
    r = with_probe(r, best_site=EMBEDDING_SITE)
    a = answer_all(r)["q1-probe"]
    assert a.verdict == "no" and "embedding layer" in a.text and "reads the completion's words" in a.text


def test_prompt_only_probe_against_its_prompt_baselines(results):
    po = results.probe.prompt_only
    beaten = dataclasses.replace(po, site="blocks.1.hook_resid_post",
                                 versus_baselines=Comparison("bag_of_prompt_tokens", est(-0.2, -0.3, -0.1)))
    assert answer_all(with_probe(results, prompt_only=beaten))["q2-prompt-probe"].verdict == "no"
    beating = dataclasses.replace(beaten, versus_baselines=Comparison("embedding", est(0.2, 0.1, 0.3)))
    assert answer_all(with_probe(results, prompt_only=beating))["q2-prompt-probe"].verdict == "yes"
    assert answer_all(with_probe(results, prompt_only=None))["q2-prompt-probe"].verdict == "inconclusive"


def _steering(r: Results, up: Estimate, random_up: float) -> Results:
    s = r.steering
    d = s.directions[s.direction]
    top = s.alphas.index(d.summary.alpha_up)  # the answer reads the largest alpha whose fluency holds
    low = min(range(len(s.alphas)), key=lambda i: s.alphas[i])
    effect = list(d.effect)
    effect[top], effect[low] = up, est(0.0, -0.1, 0.1)
    per_alpha = [0.05] * len(s.alphas)
    per_alpha[top] = random_up
    summary = dataclasses.replace(d.summary, random_max_abs_effect_per_alpha=per_alpha)
    directions = {**s.directions, s.direction: dataclasses.replace(d, effect=effect, summary=summary)}
    return dataclasses.replace(r, steering=dataclasses.replace(s, directions=directions))


def test_steering_is_yes_only_when_the_effect_ci_clears_the_strongest_random_direction(results):
    assert answer_all(_steering(results, est(0.9, 0.6, 1.2), 0.5))["q3-steering"].verdict == "yes"
    assert answer_all(_steering(results, est(0.9, 0.4, 1.2), 0.5))["q3-steering"].verdict == "inconclusive"
    a = answer_all(_steering(results, est(0.1, 0.0, 0.2), 0.5))["q3-steering"]
    assert a.verdict == "inconclusive" and "random" in a.text  # below random up, unclear down


def test_model_diff_says_no_difference_detected_when_the_ci_contains_zero(results):
    rr = dataclasses.replace(results.reward_relevance, post_minus_base=est(0.3, -0.1, 0.7), seed_control=0.05)
    a = answer_all(dataclasses.replace(results, reward_relevance=rr))["q5-model-diff"]
    assert a.verdict == "inconclusive" and a.text.startswith("No difference detected")
    rr = dataclasses.replace(rr, post_minus_base=est(0.3, 0.1, 0.5), seed_control=0.4)  # within the seed control
    assert answer_all(dataclasses.replace(results, reward_relevance=rr))["q5-model-diff"].verdict == "inconclusive"
    rr = dataclasses.replace(rr, seed_control=0.05)
    assert answer_all(dataclasses.replace(results, reward_relevance=rr))["q5-model-diff"].verdict == "yes"


def test_audit_against_chance_and_implicit_reward_against_zero(results):
    audit = dataclasses.replace(results.audit, accuracy=est(0.55, 0.45, 0.65))
    assert answer_all(dataclasses.replace(results, audit=audit))["q6-audit"].verdict == "inconclusive"
    ir = dataclasses.replace(results.implicit_reward, spearman_true=est(-0.3, -0.4, -0.2))
    assert answer_all(dataclasses.replace(results, implicit_reward=ir))["q4-implicit-reward"].verdict == "no"
