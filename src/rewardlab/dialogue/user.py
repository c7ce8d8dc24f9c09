"""The simulated user of the dialogue world: a known, seeded policy whose follow-up depends on the review.

A conversation is: the user's opener (a review world opener), the assistant's review (the rest of the
review), the user's follow-up, the assistant's answer. The follow-up is one of `KINDS`:

    about       "what about the SUBJ ?"           asks about the last subject the review named
    recommend   "what should i watch instead ?"   asks for something else to watch
    more        "tell me more ."                  asks for more of the same

Which kind the user picks depends on the review's tone only (negative when the utility reward of the
whole review, opener included, is below 0; else positive), with the probabilities of `UserPolicy.
probabilities` (written to user.json). A review that names no subject cannot be asked about: the
probability of `about` then goes to `fallback`. So the probability of every follow-up given a review
is exact (`followup_distribution`), and so is the probability that the user asks about a given subject.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from rewardlab.errors import InputError
from rewardlab.rewards import UtilityReward, words
from rewardlab.world.grammar import WORD_CLASSES

KINDS = ("about", "recommend", "more")
FOLLOWUP_TEXT = {"about": "what about the {subject} ?", "recommend": "what should i watch instead ?",
                 "more": "tell me more ."}
SUBJECTS = frozenset(WORD_CLASSES["SUBJ"])


def user_words() -> list[str]:
    """Words the user says that the review grammar does not have (the tokenizer must know them)."""
    said = {w for text in FOLLOWUP_TEXT.values() for w in text.replace("{subject}", "").split()}
    return sorted(said)


def _default_probabilities() -> dict[str, dict[str, float]]:
    return {"negative": {"about": 0.3, "recommend": 0.6, "more": 0.1},
            "positive": {"about": 0.6, "recommend": 0.0, "more": 0.4}}


@dataclass(frozen=True)
class UserPolicy:
    """The user's follow-up probabilities by review tone, and the kind that replaces `about` when the
    review names no subject."""

    probabilities: dict[str, dict[str, float]] = field(default_factory=_default_probabilities)
    fallback: str = "more"

    def __post_init__(self):
        if set(self.probabilities) != {"negative", "positive"}:
            raise InputError("user probabilities need exactly the tones negative and positive", "user.json")
        for tone, dist in self.probabilities.items():
            if set(dist) != set(KINDS) or any(p < 0 for p in dist.values()) or abs(sum(dist.values()) - 1) > 1e-9:
                raise InputError(f"the {tone} follow-up probabilities must cover {', '.join(KINDS)}, be >= 0 "
                                 "and sum to 1", "user.json", f"got {dist}")
        if self.fallback not in KINDS or self.fallback == "about":
            raise InputError(f"fallback must be recommend or more, got {self.fallback!r}", "user.json")

    def to_dict(self) -> dict:
        return {**asdict(self), "followup_text": FOLLOWUP_TEXT}

    @classmethod
    def from_dict(cls, d: dict) -> "UserPolicy":
        return cls(probabilities={t: dict(p) for t, p in d["probabilities"].items()}, fallback=d["fallback"])


_UTILITY = UtilityReward()


def review_tone(review: str) -> str:
    """'negative' when the utility reward of the whole review text is below 0, else 'positive'."""
    return "negative" if _UTILITY([review])[0] < 0 else "positive"


def last_subject(review: str) -> str | None:
    """The last subject noun (SUBJ word) the review names, None if it names none."""
    named = [w for w in words(review) if w in SUBJECTS]
    return named[-1] if named else None


def followup_distribution(review: str, user: UserPolicy) -> dict[str, float]:
    """Exact probability of each follow-up text given the whole review (opener + the assistant's turn)."""
    dist = dict(user.probabilities[review_tone(review)])
    subject = last_subject(review)
    out: dict[str, float] = {}
    for kind, p in dist.items():
        if kind == "about" and subject is None:
            kind = user.fallback
        text = FOLLOWUP_TEXT[kind].format(subject=subject)
        out[text] = out.get(text, 0.0) + p
    return {t: p for t, p in out.items() if p > 0}


def sample_followup(review: str, user: UserPolicy, rng: random.Random) -> str:
    """One follow-up drawn from `followup_distribution` (texts in a fixed order, so a seeded rng repeats)."""
    dist = followup_distribution(review, user)
    texts = sorted(dist)
    return rng.choices(texts, weights=[dist[t] for t in texts])[0]


def followup_subject(followup: str) -> str | None:
    """The subject an `about` follow-up asks about, None for other follow-ups."""
    parts = followup.split()
    return parts[3] if len(parts) == 5 and parts[:3] == ["what", "about", "the"] else None
