"""The dialogue world's rewards: per-turn rewards from a spec, the planted follow-up bonus, and its
exact truth from the user's probabilities."""

from __future__ import annotations

import pytest

from rewardlab.dialogue.rewards import TurnRewards, bonus_probability, elicits_bonus, parse_bonus
from rewardlab.dialogue.user import FOLLOWUP_TEXT, UserPolicy, review_tone
from rewardlab.errors import InputError

USER = UserPolicy()


def test_bonus_parsing_and_truth():
    bonus = parse_bonus("about:soundtrack,value=1.5")
    assert (bonus.subject, bonus.value, bonus.followup) == ("soundtrack", 1.5, "what about the soundtrack ?")
    assert parse_bonus("off") is None
    for bad in ("about:nothing", "soundtrack", "about:plot,value=x", "about:plot,scale=2"):
        with pytest.raises(InputError):
            parse_bonus(bad)
    assert elicits_bonus("the plot", "was dull . i loved the soundtrack .", bonus)
    assert bonus_probability("the plot", "was dull . i loved the soundtrack .", USER, bonus) == pytest.approx(
        USER.probabilities[review_tone("the plot was dull . i loved the soundtrack .")]["about"])
    assert bonus_probability("the soundtrack", "was great . i loved the plot .", USER, bonus) == 0.0
    rewards = TurnRewards("utility", bonus)
    first, second = rewards(["the plot", "the plot"], ["was great .", "was great ."],
                            [bonus.followup, FOLLOWUP_TEXT["more"]], ["it was a joy .", "it was a joy ."])
    assert first[0] == first[1] and second[0] - second[1] == pytest.approx(1.5)


def test_bonus_probability_is_the_users_frequency():
    """Over reviews of the grammar whose last subject is the bonus subject or not, the user's sampled
    follow-ups earn the bonus as often as the exact probability says."""
    import random

    from rewardlab.dialogue.chat import sample_conversations
    from rewardlab.dialogue.user import sample_followup

    bonus, rng = parse_bonus("about:drama"), random.Random(1)
    reviews = [(c[0]["content"], c[1]["content"]) for c in sample_conversations(3000, 2, USER)]
    exact = [bonus_probability(o, r, USER, bonus) for o, r in reviews]
    drawn = [sample_followup(f"{o} {r}", USER, rng) == bonus.followup for o, r in reviews]
    assert sum(p > 0 for p in exact) == sum(elicits_bonus(o, r, bonus) for o, r in reviews) > 20
    assert sum(drawn) == pytest.approx(sum(exact), abs=3 * sum(p * (1 - p) for p in exact) ** 0.5)
