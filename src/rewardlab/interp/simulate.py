"""Simulators: (explanation, tokens) -> predicted 0-10 activation per token.

- `LexicalSimulator` (offline default): 10 where the token is one of the explanation's words, else 0.
- `LLMSimulator`: the model sees the explanation and the numbered tokens and answers one
  `index<TAB>activation` line per token (the OpenAI simulator's parsed-output mode); unparsable or
  missing lines predict 0, values are clipped to 0-10.
"""

from __future__ import annotations

import re

from rewardlab.interp.clients import ChatClient
from rewardlab.interp.explain import explanation_words, normalize_token


class LexicalSimulator:
    name = "lexical"

    def simulate(self, explanation: str, tokens: list[str]) -> list[float]:
        words = set(explanation_words(explanation))
        return [10.0 if normalize_token(t) in words else 0.0 for t in tokens]


SIMULATE_SYSTEM = ("We're studying neurons in a neural network. Each neuron looks for some particular thing in a "
                   "short document. Given an explanation of what a neuron looks for, predict its activation, an "
                   "integer from 0 to 10, on each token of a document. Answer with exactly one line per token: "
                   "index<tab>activation, and nothing else.")
_LINE = re.compile(r"^\s*(\d+)\s*[\t:,]\s*(-?\d+(?:\.\d+)?)")


class LLMSimulator:
    name = "llm"

    def __init__(self, client: ChatClient):
        self.client = client

    def simulate(self, explanation: str, tokens: list[str]) -> list[float]:
        listing = "\n".join(f"{i}\t{t}" for i, t in enumerate(tokens))
        reply = self.client.complete([
            {"role": "system", "content": SIMULATE_SYSTEM},
            {"role": "user", "content": f"Explanation: the neuron looks for {explanation}\n\nTokens:\n{listing}"}],
            max_tokens=8 * len(tokens) + 16)
        pred = [0.0] * len(tokens)
        for line in reply.splitlines():
            m = _LINE.match(line)
            if m and int(m[1]) < len(tokens):
                pred[int(m[1])] = min(max(float(m[2]), 0.0), 10.0)
        return pred
