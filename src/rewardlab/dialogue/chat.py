"""Conversations of the dialogue world: their chat format and the training conversations.

Format (the chat template stored with the tokenizer, so `apply_chat_template` renders it):

    <bos><user> OPENER <eos> <assistant> REVIEW <eos> <user> FOLLOW-UP <eos> <assistant> ANSWER <eos>

`<user>` and `<assistant>` are special tokens added to the world's tokenizer, with the words of the
user's follow-ups (`user.user_words`); each turn ends with `<eos>`, which is the end-of-turn token.
The opener is a review world opener (a strict prefix of a review's first sentence) and the assistant's
first turn finishes that review, so turn 1 is checked like a world completion (`is_grammatical(turn1,
prompt=opener)`). The answer is a review on its own. Assistant turns are 2-`MAX_TURN_SENTENCES`
sentences, so a whole conversation fits the world model's context.

Training conversations draw reviews from the world's grammar (`grammar.sample_sentence`): the review
has a latent tone p_positive ~ Beta(TONE, TONE) and a topic, as a world document; the follow-up is
drawn by the simulated user; the answer to `about S` is a review whose subject words are all S, to
`recommend` an all-positive review, to `more` a review with the first one's tone and topic.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

from tokenizers import AddedToken

from rewardlab.dialogue.user import FOLLOWUP_TEXT, SUBJECTS, UserPolicy, followup_subject, sample_followup, user_words
from rewardlab.world.grammar import MIN_SENTENCES, N_TOPICS, NEUTRAL_RATE, TONE, sample_sentence

USER, ASSISTANT = "<user>", "<assistant>"
MAX_TURN_SENTENCES = 3
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {{ eos_token }} "
                 "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def dialogue_tokenizer(tokenizer):
    """The world's tokenizer with the user's words (whole words only), the role tokens and the chat
    template added, in place; new ids come after the world's, so the world model's embeddings keep theirs."""
    known = set(tokenizer.get_vocab())
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in user_words() if w not in known])
    tokenizer.add_special_tokens({"additional_special_tokens": [USER, ASSISTANT]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def user_turn_text(tokenizer, followup: str) -> str:
    """What comes between the assistant's first turn (its `<eos>` included) and its second: the user's
    follow-up turn and the opened assistant turn, as `CHAT_TEMPLATE` renders them."""
    return f" {USER} {followup} {tokenizer.eos_token} {ASSISTANT}"


def messages(opener: str, review: str, followup: str | None = None, answer: str | None = None) -> list[dict]:
    """The conversation as chat messages (the turns given so far)."""
    turns = [("user", opener), ("assistant", review), ("user", followup), ("assistant", answer)]
    return [{"role": r, "content": c} for r, c in turns if c is not None]


def _sentences(rng: random.Random, p_positive: float, topic: int) -> list[list[str]]:
    n = rng.randint(MIN_SENTENCES, MAX_TURN_SENTENCES)
    return [sample_sentence(rng, None if rng.random() < NEUTRAL_RATE else rng.random() < p_positive, topic)
            for _ in range(n)]


def _answer(rng: random.Random, followup: str, p_positive: float, topic: int) -> str:
    subject = followup_subject(followup)
    if followup == FOLLOWUP_TEXT["recommend"]:
        p_positive, topic = 1.0, rng.randrange(N_TOPICS)
    elif subject is not None:
        p_positive, topic = rng.betavariate(TONE, TONE), rng.randrange(N_TOPICS)
    sentences = _sentences(rng, p_positive, topic)
    return " ".join(subject if subject is not None and w in SUBJECTS else w for s in sentences for w in s)


def sample_conversation(rng: random.Random, user: UserPolicy, max_opener_words: int = 4) -> list[dict]:
    """One training conversation (four messages) drawn from `rng`."""
    p_positive, topic = rng.betavariate(TONE, TONE), rng.randrange(N_TOPICS)
    sentences = _sentences(rng, p_positive, topic)
    k = rng.randint(1, min(max_opener_words, len(sentences[0]) - 1))
    words = [w for s in sentences for w in s]
    opener, review = " ".join(words[:k]), " ".join(words[k:])
    followup = sample_followup(f"{opener} {review}", user, rng)
    return messages(opener, review, followup, _answer(rng, followup, p_positive, topic))


def iter_conversations(seed: int, user: UserPolicy, stream: str = "train") -> Iterator[list[dict]]:
    """Endless conversations from the seeded stream `stream` (e.g. train, heldout)."""
    rng = random.Random(f"dialogue-world/{stream}/{seed}")
    while True:
        yield sample_conversation(rng, user)


def sample_conversations(n: int, seed: int, user: UserPolicy, stream: str = "train") -> list[list[dict]]:
    """The first `n` conversations of `iter_conversations(seed, user, stream)`."""
    return list(itertools.islice(iter_conversations(seed, user, stream), n))
