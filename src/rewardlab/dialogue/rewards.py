"""Per-turn rewards of a conversation, and the planted follow-up bonus with its exact truth.

Each assistant turn is scored by any reward spec (`rewardlab.rewards.get_reward`): turn 1 (the
review) with the opener as its prompt, turn 2 (the answer) with the follow-up as its prompt. The
follow-up bonus (`about:SUBJ,value=V`) adds V to the turn-2 reward when the user's follow-up asks
about SUBJ ("what about the SUBJ ?"). Nothing the assistant writes in turn 2 changes the bonus: only
turn 1 can earn it, by making the user ask about SUBJ, which the user does only when SUBJ is the last
subject the review named. So the truth is exact from user.json: a review elicits the bonus follow-up
with probability `user.probabilities[tone]["about"]` if its last subject is SUBJ, else 0
(`bonus_probability`); a policy that anticipates the user gains `value` times that in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rewardlab.dialogue.user import FOLLOWUP_TEXT, SUBJECTS, UserPolicy, followup_distribution, last_subject
from rewardlab.errors import InputError
from rewardlab.rewards import get_reward
from rewardlab.text import join_prompt_completion

DEFAULT_BONUS = "about:soundtrack,value=10"


@dataclass(frozen=True)
class FollowupBonus:
    """+`value` on the turn-2 reward when the follow-up asks about `subject`."""

    subject: str
    value: float

    @property
    def followup(self) -> str:
        """The follow-up text that earns the bonus."""
        return FOLLOWUP_TEXT["about"].format(subject=self.subject)

    def to_dict(self) -> dict:
        return {"subject": self.subject, "value": self.value, "followup": self.followup}


def parse_bonus(spec: str | None) -> FollowupBonus | None:
    """`about:SUBJ[,value=V]` -> the bonus (V defaults to 2); None or "off" -> no bonus."""
    if spec is None or spec.strip() == "off":
        return None
    head, *options = [p.strip() for p in spec.split(",")]
    fix = f"e.g. {DEFAULT_BONUS}, or off"
    if not head.startswith("about:") or head[6:] not in SUBJECTS:
        raise InputError(f"cannot parse follow-up bonus {spec!r}: it must name a subject noun of the grammar",
                         "followup_bonus", fix)
    value = 2.0
    for option in options:
        key, _, text = option.partition("=")
        try:
            value = float(text) if key == "value" else float("nan")
        except ValueError:
            value = float("nan")
        if value != value:
            raise InputError(f"bad option {option!r} in follow-up bonus {spec!r}", "followup_bonus", fix)
    return FollowupBonus(head[6:], value)


def bonus_probability(opener: str, review: str, user: UserPolicy, bonus: FollowupBonus) -> float:
    """Exact probability that the user's follow-up to this review (opener + the assistant's first turn)
    earns the bonus."""
    return followup_distribution(join_prompt_completion(opener, review), user).get(bonus.followup, 0.0)


def elicits_bonus(opener: str, review: str, bonus: FollowupBonus) -> bool:
    """Whether the review's last subject is the bonus subject (the mention that elicits the bonus follow-up)."""
    return last_subject(join_prompt_completion(opener, review)) == bonus.subject


class TurnRewards:
    """The reward of each assistant turn: a reward spec on both turns, plus the follow-up bonus on turn 2."""

    def __init__(self, spec: str, bonus: FollowupBonus | None):
        self.reward, self.bonus = get_reward(spec), bonus

    def __call__(self, openers: Sequence[str], reviews: Sequence[str], followups: Sequence[str],
                 answers: Sequence[str]) -> tuple[list[float], list[float]]:
        """(turn-1 rewards, turn-2 rewards), one per conversation."""
        first = self.reward(reviews, openers)
        second = self.reward(answers, followups)
        if self.bonus is not None:
            second = [r + self.bonus.value * (f == self.bonus.followup) for r, f in zip(second, followups)]
        return first, second
