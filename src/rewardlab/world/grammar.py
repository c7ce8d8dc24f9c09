"""The review world's grammar: short movie reviews whose sentiment words come from the VADER lexicon.

Texts are lower-case words with punctuation as separate tokens, so splitting on whitespace gives
the tokens: "the plot was very dull . i loved the soundtrack ."

A sentence is one of `TEMPLATES`: literal words plus slots in braces. `{SUBJ}` is a subject
noun, `{ADJ}`, `{VERB}`, `{NOUN}` are sentiment slots (their word classes end in `+` or `-`),
`{X?}` is an optional slot; after the literal "but" the sentiment flips. Intensifiers (`{INT}`) and
verb adverbs (`{VADV}`) are neutral words (not in the lexicon), but which ones a sentence uses
depends on its sentiment (`POLAR_CUES`: "absolutely wonderful", "utterly dull"): they predict the
reward without counting toward it, and they let a small model learn the words' polarity fast.
A document is 2-5 sentences. Each document draws a latent tone `p_positive ~ Beta(TONE, TONE)`
and each sentence's sentiment is positive with that probability, so sentences of one document
tend to agree (the prompt predicts the reward of its completion) while documents differ (the
reward of base-model samples is centred and wide). Each document also draws one of `N_TOPICS`
topics: every word slot picks from the topic's share of its word class (every `N_TOPICS`-th word,
starting at the topic) with probability `TOPIC_RATE`, and from the whole class otherwise. Topics
change no rule of the language, the checker or the reward; they give the documents structure
beyond tone and template, so a sparse dictionary has more directions to find. Without topics, 16
dimensions held 99% of the variance of every site of the tiny base model; in the demo, topics took
the dead fraction of the 4x, k = 16 SAE from 0.19 to 0.07 and the MMCS of its 1x and 2x
dictionaries from 0.25 to 0.32 above random ones.

`is_grammatical(text)` says whether `text` is a prefix of a document of this grammar: at most 5
complete sentences, then optionally a strict prefix of a sentence (a completion cut at the length
limit). An `<eos>` ends the document: what comes before it must be 2-5 complete sentences and
what comes after it is ignored. A leading `<bos>` and any `<pad>` are ignored.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from rewardlab.review_words import WORD_CLASSES  # every word class; sentiment classes end in + / -

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
MIN_SENTENCES, MAX_SENTENCES = 2, 5
TONE = 0.6  # Beta(TONE, TONE) concentration of a document's p_positive; < 1 puts most documents near one pole
NEUTRAL_RATE = 0.08  # probability that a sentence is a neutral (sentiment-free) template
OPTIONAL_RATE = 0.5  # probability that an optional slot is filled
N_TOPICS = 16  # topics a document draws from; a topic owns every N_TOPICS-th word of each class that has that many
TOPIC_RATE = 0.85  # probability that a slot picks from its document's topic (else from the whole class)

SENTIMENT_SLOTS = ("ADJ", "VERB", "NOUN")
# Neutral classes whose word choice follows the sentence's sentiment (the checker accepts any of them).
POLAR_CUES: dict[str, dict[bool, tuple[str, ...]]] = {
    "INT": {True: ("very", "incredibly", "absolutely", "extremely", "so"),
            False: ("utterly", "totally", "rather", "quite", "so")},
    "VADV": {True: ("really", "simply"), False: ("just", "actually")},
}
SLOTS: dict[str, tuple[str, ...]] = {  # slot -> the classes it accepts
    **{s: (f"{s}+", f"{s}-") for s in SENTIMENT_SLOTS},
    **{c: (c,) for c in ("SUBJ", "INT", "VADV", "DAY", "PERSON", "NUM")},
}

# (template, weight). Sentiment templates carry at least one sentiment slot; neutral ones none.
TEMPLATES: tuple[tuple[str, float], ...] = (
    ("the {SUBJ} was {INT?} {ADJ} .", 4.0),
    ("i {VADV?} {VERB} the {SUBJ} .", 3.0),
    ("the {SUBJ} was {INT?} {ADJ} and the {SUBJ} was {INT?} {ADJ} .", 1.5),
    ("the {SUBJ} was {INT?} {ADJ} but the {SUBJ} was {INT?} {ADJ} .", 0.5),
    ("this {SUBJ} is {INT?} {ADJ} .", 1.5),
    ("it was a {NOUN} .", 1.5),
    ("the {SUBJ} was a {NOUN} .", 1.0),
    ("i found the {SUBJ} {INT?} {ADJ} .", 1.0),
    ("the {SUBJ} felt {INT?} {ADJ} .", 1.0),
    ("overall , the {SUBJ} was {INT?} {ADJ} .", 1.0),
    ("the {SUBJ} and the {SUBJ} were {INT?} {ADJ} .", 1.0),
    ("i {VADV?} {VERB} it .", 1.0),
    ("the {SUBJ} was {INT?} {ADJ} , {INT?} {ADJ} .", 1.5),
    ("i saw it on {DAY} .", 1.0),
    ("i watched it with my {PERSON} .", 1.0),
    ("it runs about {NUM} minutes .", 1.0),
)
SLOT_RE = re.compile(r"\{([A-Z]+)(\??)\}")


@dataclass(frozen=True)
class Slot:
    name: str
    optional: bool


def _parse(template: str) -> list[str | Slot]:
    parts: list[str | Slot] = []
    for tok in template.split():
        m = SLOT_RE.fullmatch(tok)
        parts.append(Slot(m.group(1), m.group(2) == "?") if m else tok)
    return parts


PARSED = [(_parse(t), w) for t, w in TEMPLATES]
SENTIMENT_TEMPLATES = [(p, w) for p, w in PARSED
                       if any(isinstance(x, Slot) and x.name in SENTIMENT_SLOTS for x in p)]
NEUTRAL_TEMPLATES = [(p, w) for p, w in PARSED if (p, w) not in SENTIMENT_TEMPLATES]
LITERALS = sorted({x for p, _ in PARSED for x in p if isinstance(x, str)})
SENTENCE_END = "."


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    return sorted(set(LITERALS) | {w for ws in WORD_CLASSES.values() for w in ws})


def _symbol_table() -> dict[str, str]:
    """token -> grammar symbol (its class name, or the literal itself)."""
    table = {lit: lit for lit in LITERALS}
    for cls, ws in WORD_CLASSES.items():
        for w in ws:
            if w in table:
                raise AssertionError(f"word {w!r} is in two classes ({table[w]}, {cls})")
            table[w] = cls
    return table


SYMBOL = _symbol_table()


def _expansions(parts: list[str | Slot]) -> Iterable[tuple[str, ...]]:
    """All symbol sequences a parsed template can produce."""
    choices = []
    for x in parts:
        if isinstance(x, str):
            choices.append((x,))
        else:
            choices.append(SLOTS[x.name] + ((None,) if x.optional else ()))
    for combo in itertools.product(*choices):
        yield tuple(s for s in combo if s is not None)


SENTENCES: frozenset[tuple[str, ...]] = frozenset(s for p, _ in PARSED for s in _expansions(p))
STRICT_PREFIXES: frozenset[tuple[str, ...]] = frozenset(s[:i] for s in SENTENCES for i in range(1, len(s)))


def is_grammatical(text: str, prompt: str | None = None) -> bool:
    """Whether `text` (or `prompt + " " + text`) is a prefix of a document of the grammar (see module doc)."""
    if prompt is not None:
        text = f"{prompt} {text}"
    tokens = text.split()
    if tokens and tokens[0] == BOS:
        tokens = tokens[1:]
    ended = EOS in tokens
    if ended:
        tokens = tokens[:tokens.index(EOS)]
    n_complete, current = 0, []
    for tok in tokens:
        if tok == PAD:
            continue
        sym = SYMBOL.get(tok)
        if sym is None:
            return False
        current.append(sym)
        if tok == SENTENCE_END:
            if tuple(current) not in SENTENCES:
                return False
            n_complete += 1
            if n_complete > MAX_SENTENCES:
                return False
            current = []
    if ended:
        return not current and MIN_SENTENCES <= n_complete <= MAX_SENTENCES
    return not current or (n_complete < MAX_SENTENCES and tuple(current) in STRICT_PREFIXES)


def grammatical_rate(texts: Sequence[str], prompts: Sequence[str] | None = None) -> float:
    """Fraction of texts (each optionally after its prompt) that `is_grammatical`."""
    if not texts:
        raise ValueError("grammatical_rate of no texts")
    prompts = prompts if prompts is not None else [None] * len(texts)
    return sum(is_grammatical(t, p) for t, p in zip(texts, prompts)) / len(texts)


def _weighted(rng: random.Random, templates: list) -> list[str | Slot]:
    return rng.choices([p for p, _ in templates], weights=[w for _, w in templates])[0]


def _pick(rng: random.Random, words: Sequence[str], topic: int) -> str:
    """A word of a class: from the topic's share with probability TOPIC_RATE (classes with fewer
    than N_TOPICS words have no shares)."""
    if len(words) >= N_TOPICS and rng.random() < TOPIC_RATE:
        words = words[topic::N_TOPICS]
    return rng.choice(words)


def sample_sentence(rng: random.Random, positive: bool | None, topic: int) -> list[str]:
    """One sentence of a document on `topic`: a sentiment template with the given sentiment, or a
    neutral one if `positive` is None."""
    parts = _weighted(rng, NEUTRAL_TEMPLATES if positive is None else SENTIMENT_TEMPLATES)
    words = []
    for x in parts:
        if isinstance(x, str):
            words.append(x)
            if x == "but":
                positive = not positive
            continue
        if x.optional and rng.random() >= OPTIONAL_RATE:
            continue
        if x.name in SENTIMENT_SLOTS:
            words.append(_pick(rng, WORD_CLASSES[f"{x.name}{'+' if positive else '-'}"], topic))
        elif x.name in POLAR_CUES:
            words.append(rng.choice(POLAR_CUES[x.name][positive]))
        else:
            pool = [w for cls in SLOTS[x.name] for w in WORD_CLASSES[cls]]
            words.append(_pick(rng, pool, topic))
    return words


def sample_document(rng: random.Random) -> list[list[str]]:
    """A review: 2-5 sentences sharing a latent tone p_positive ~ Beta(TONE, TONE) and a topic."""
    p_positive = rng.betavariate(TONE, TONE)
    topic = rng.randrange(N_TOPICS)
    n = rng.randint(MIN_SENTENCES, MAX_SENTENCES)
    return [sample_sentence(rng, None if rng.random() < NEUTRAL_RATE else rng.random() < p_positive, topic)
            for _ in range(n)]


def iter_corpus(seed: int, stream: str = "train") -> Iterator[str]:
    """Endless documents (space-joined) from the seeded stream `stream` (e.g. train, heldout)."""
    rng = random.Random(f"review-world/{stream}/{seed}")
    while True:
        yield " ".join(w for s in sample_document(rng) for w in s)


def sample_corpus(n_docs: int, seed: int, stream: str = "train") -> list[str]:
    """The first `n_docs` documents of `iter_corpus(seed, stream)`."""
    return list(itertools.islice(iter_corpus(seed, stream), n_docs))


def sample_openers(n: int, seed: int, max_words: int = 4, exclude: Iterable[str] = ()) -> list[str]:
    """`n` distinct review openers: the first 1-`max_words` words of a document's first sentence
    (always a strict prefix of it), none of them in `exclude`."""
    rng = random.Random(f"review-world/openers/{seed}")
    seen, out = set(exclude), []
    while len(out) < n:
        first = sample_document(rng)[0]
        k = rng.randint(1, min(max_words, len(first) - 1))
        opener = " ".join(first[:k])
        if opener not in seen:
            seen.add(opener)
            out.append(opener)
    return out


def lexicon_problems(lexicon: dict[str, float], min_valence: float = 1.0) -> list[str]:
    """Words that break the world's contract with the lexicon: a sentiment word missing from it, with
    the wrong sign or |valence| < `min_valence`, or a neutral word that is in it. Empty when all is well."""
    problems = []
    for cls, ws in WORD_CLASSES.items():
        sign = {"+": 1, "-": -1}.get(cls[-1], 0)
        for w in ws:
            v = lexicon.get(w)
            if sign == 0 and v is not None:
                problems.append(f"neutral word {w!r} ({cls}) has valence {v}")
            elif sign != 0 and (v is None or v * sign < min_valence):
                problems.append(f"sentiment word {w!r} ({cls}) has valence {v}")
    problems += [f"literal {w!r} has valence {lexicon[w]}" for w in LITERALS if w in lexicon]
    return problems
