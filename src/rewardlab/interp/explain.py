"""Explainers: records -> a short description of what a feature responds to.

- `LexicalExplainer` (offline default): the words that drive the feature. Each word's score is its
  summed 0-10 activation over the explanation records divided by (occurrences + 1), so a word that
  fires strongly and reliably ranks above one seen once; the explanation is "words: w1, w2, ...".
- `LLMExplainer`: the OpenAI automated-interpretability prompt: `token<TAB>activation` lines with
  activations 0-10 (max over all of the feature's records), non-zero tokens repeated underneath when
  fewer than 20% of tokens fire; the reply is the explanation.
"""

from __future__ import annotations

import re
from collections import defaultdict

from rewardlab.interp.clients import ChatClient
from rewardlab.interp.records import ActivationRecord, FeatureRecords

_WORD_PREFIX = re.compile(r"^[\sĠ▁]+")


def normalize_token(token: str) -> str:
    """Token text without BPE/SentencePiece space markers, lowercased."""
    return _WORD_PREFIX.sub("", token).strip().lower()


def explanation_words(explanation: str) -> list[str]:
    """The words of an explanation: after 'words:' if present, else every alphabetic word."""
    text = explanation.split("words:", 1)[1] if "words:" in explanation else explanation
    return [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'\-]*", text)]


class LexicalExplainer:
    name = "lexical"

    def __init__(self, n_words: int = 5):
        self.n_words = n_words

    def explain(self, fr: FeatureRecords) -> str:
        total, count = defaultdict(float), defaultdict(int)
        for rec in fr.explain:
            for tok, act in zip(rec.tokens, rec.scaled(fr.max_activation)):
                word = normalize_token(tok)
                if word:
                    total[word] += act
                    count[word] += 1
        ranked = sorted((w for w in total if total[w] > 0), key=lambda w: (-total[w] / (count[w] + 1), w))
        return "words: " + ", ".join(ranked[:self.n_words])


def format_records(records: list[ActivationRecord], max_activation: float) -> str:
    """OpenAI-style `token<TAB>activation` blocks, activations rounded to 0-10."""
    blocks = []
    for rec in records:
        scaled = [round(a) for a in rec.scaled(max_activation)]
        lines = [f"{tok}\t{a}" for tok, a in zip(rec.tokens, scaled)]
        nonzero = [f"{tok}\t{a}" for tok, a in zip(rec.tokens, scaled) if a > 0]
        if len(nonzero) < 0.2 * len(scaled):
            lines += ["", "Same activations, but with all zeros filtered out:", *nonzero]
        blocks.append("<start>\n" + "\n".join(lines) + "\n<end>")
    return "\n\n".join(blocks)


EXPLAIN_SYSTEM = ("We're studying neurons in a neural network. Each neuron looks for some particular thing in a "
                  "short document. Look at the parts of the document the neuron activates for and summarize in "
                  "a single sentence what the neuron is looking for. Don't list examples of words. The activation "
                  "format is token<tab>activation. Activation values range from 0 to 10. A neuron finding what "
                  "it's looking for is represented by a non-zero activation value. The higher the activation "
                  "value, the stronger the match.")


class LLMExplainer:
    name = "llm"

    def __init__(self, client: ChatClient, max_tokens: int = 80):
        self.client, self.max_tokens = client, max_tokens

    def explain(self, fr: FeatureRecords) -> str:
        user = (f"Neuron {fr.feature}\nActivations:\n{format_records(fr.explain, fr.max_activation)}\n\n"
                f"Explanation of neuron {fr.feature} behavior: the main thing this neuron does is find")
        reply = self.client.complete([{"role": "system", "content": EXPLAIN_SYSTEM},
                                      {"role": "user", "content": user}], self.max_tokens)
        return reply.strip().split("\n")[0]
