"""LLM-as-a-judge: a chat model rates a response on a stated scale under a stated rubric.

Pointwise (the reward `judge:ENDPOINT_OR_PATH`): the judge reads a system turn with the rubric and
the scale, and a user turn with the prompt and the response, and answers with one whole number in
[low, high]. Two ways to read its answer:

- `sample` (endpoints): the reply is generated (temperature 0) and read by `parse_rating`. A reply
  with no readable rating is asked again, the bad reply kept in the conversation and a correction
  turn added, up to `retries` times; then one InputError shows the last reply.
- `logprob` (local Hugging Face judges): the expected rating sum_k k p(k), p(k) proportional to
  P(reply = "k", then end of turn | prompt), over the scale's values (G-Eval's probability-weighted
  score; multi-token values such as "10" are scored whole). Continuous, never unparseable. Rated
  `batch_size` conversations per forward pass (left-padded); the cache is per conversation.

Pairwise (`prefer`, for the position-bias audit): the judge sees two responses as A and B and says
which rates higher under the rubric; the verdict is P(A) (logprob: P("A") / (P("A") + P("B"));
sample: 1.0 or 0.0 from the parsed letter).

Rubrics: `RUBRICS` by name, or any text ({low} and {high} stand for the scale's ends). The review
world's default, `review`, asks how positive the review's opinion of the film is: the quality the
world's known reward (the utility sum) measures, so their agreement is a check of the judge.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

from rewardlab.errors import InputError
from rewardlab.interp.clients import Messages, map_concurrent

RUBRICS = {
    "review": "The response continues a movie review. How positive is the review's opinion of the film? "
              "{low} means very negative, {high} very positive.",
    "helpful": "How helpful, correct and clearly written is the response to the prompt? "
               "{low} means useless, {high} excellent.",
}
MODES = ("auto", "logprob", "sample")
RATING_KEYS = ("rating", "score", "grade")
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


@dataclass
class JudgeConfig:
    rubric: str = RUBRICS["review"]  # rubric text; {low}/{high} are replaced by the scale's ends
    low: int = 1  # lowest rating
    high: int = 10  # highest rating
    mode: str = "auto"  # logprob | sample | auto (logprob when the client gives log-probs, else sample)
    retries: int = 3  # re-asks after an unparseable reply (sample mode)
    max_tokens: int = 16  # reply budget (sample mode)
    workers: int = 8  # concurrent requests (endpoints; a local model runs one at a time)
    batch_size: int = 16  # conversations per forward pass (local models, logprob mode)

    def validate(self) -> None:
        if not self.low < self.high:
            raise InputError(f"judge scale {self.low}-{self.high} is empty", "judge scale", "e.g. scale=1-10")
        if self.high - self.low > 100:
            raise InputError(f"judge scale {self.low}-{self.high} has more than 101 values", "judge scale",
                             "use a short scale such as 1-10")
        if self.mode not in MODES:
            raise InputError(f"unknown judge mode {self.mode!r}", "judge mode", f"use one of {', '.join(MODES)}")
        if self.retries < 0:
            raise InputError("judge retries must be >= 0", "judge retries")
        if self.batch_size < 1:
            raise InputError("judge batch size must be >= 1", "judge batch", "e.g. batch=16")


def _in_scale(value: float, low: int, high: int) -> float | None:
    return value if math.isfinite(value) and low <= value <= high else None


def parse_rating(reply: str, low: int, high: int) -> float | None:
    """The rating in a judge's reply, or None when there is none or it is ambiguous. Read in order:
    a JSON object's rating/score/grade; "N/high" or "N out of high"; "rating: N" (or score/grade); a
    reply that is only a number; else the one distinct number of the reply inside [low, high]."""
    text = reply.strip()
    for blob in re.findall(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(blob)
        except ValueError:
            continue
        hits = [v for k, v in obj.items() if isinstance(k, str) and k.lower() in RATING_KEYS] if isinstance(
            obj, dict) else []
        for v in hits:
            try:
                found = _in_scale(float(v), low, high)
            except (TypeError, ValueError):
                found = None
            if found is not None:
                return found
    for num, den in re.findall(rf"({_NUMBER})\s*(?:/|out of)\s*(\d+)", text, re.I):
        if int(den) == high:
            return _in_scale(float(num), low, high)
    labelled = re.search(rf"\b(?:{'|'.join(RATING_KEYS)})\b\W{{0,3}}\s*(?:is\s*)?({_NUMBER})", text, re.I)
    if labelled:
        return _in_scale(float(labelled.group(1)), low, high)
    if re.fullmatch(rf"{_NUMBER}\.?", text):
        return _in_scale(float(text.rstrip(".")), low, high)
    inside = {float(n) for n in re.findall(_NUMBER, text) if _in_scale(float(n), low, high) is not None}
    return inside.pop() if len(inside) == 1 else None


def parse_choice(reply: str) -> str | None:
    """"A" or "B" from a pairwise reply ("A", "Response B", "**B**", {"winner": "A"}), None if neither or both."""
    found = set(re.findall(r"(?<![A-Za-z])([AB])(?![A-Za-z])", reply.strip()))
    return found.pop() if len(found) == 1 else None


def expected_rating(logps: Sequence[float], values: Sequence[int]) -> float:
    """sum_k values[k] * softmax(logps)[k]: the rating's expectation over the scale."""
    top = max(logps)
    weights = [math.exp(lp - top) for lp in logps]
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


class Judge:
    """A chat client as a rater: `rate(prompts, responses) -> ratings`, `prefer(prompts, a, b) -> P(a)`."""

    def __init__(self, client, cfg: JudgeConfig | None = None):
        cfg = cfg or JudgeConfig()
        cfg.validate()
        self.client, self.cfg = client, cfg
        has_logprobs = getattr(client, "gives_logprobs", False)
        if cfg.mode == "logprob" and not has_logprobs:
            raise InputError("logprob judging needs a local chat model; an endpoint gives only text",
                             client.model_id, "use mode=sample for an endpoint")
        self.mode = "logprob" if cfg.mode == "logprob" or (cfg.mode == "auto" and has_logprobs) else "sample"
        self.workers = 1 if has_logprobs else cfg.workers  # a local model answers one prompt at a time
        self.values = list(range(cfg.low, cfg.high + 1))

    def rubric(self) -> str:
        return self.cfg.rubric.replace("{low}", str(self.cfg.low)).replace("{high}", str(self.cfg.high))

    def rating_messages(self, prompt: str, response: str) -> Messages:
        system = (f"You are a judge. {self.rubric()} Reply with one whole number from {self.cfg.low} to "
                  f"{self.cfg.high} and nothing else.")
        shown = f"Prompt: {prompt}\n\nResponse: {response}" if prompt else f"Response: {response}"
        return [{"role": "system", "content": system},
                {"role": "user", "content": f"{shown}\n\nRating ({self.cfg.low}-{self.cfg.high}):"}]

    def pair_messages(self, prompt: str, a: str, b: str) -> Messages:
        system = (f"You are a judge. {self.rubric()} You see two responses, A and B. Reply with the letter "
                  "of the response that rates higher, A or B, and nothing else.")
        shown = f"Prompt: {prompt}\n\n" if prompt else ""
        return [{"role": "system", "content": system},
                {"role": "user", "content": f"{shown}Response A: {a}\n\nResponse B: {b}\n\nBetter (A or B):"}]

    def _ask(self, messages: Messages, parse, what: str):
        """Sample mode: the parsed reply, re-asking with a correction turn after an unparseable one."""
        history, reply = list(messages), ""
        for _ in range(self.cfg.retries + 1):
            reply = self.client.complete(history, max_tokens=self.cfg.max_tokens)
            parsed = parse(reply)
            if parsed is not None:
                return parsed
            history = [*history, {"role": "assistant", "content": reply},
                       {"role": "user", "content": f"That is not {what}. Reply with {what} only."}]
        raise InputError(f"the judge gave no readable {what} in {self.cfg.retries + 1} tries; last reply "
                         f"{reply[:200]!r}", self.client.model_id,
                         "raise retries=, use another judge model, or a rubric the model follows")

    def _option_logprobs(self, conversations: list[Messages], options: list[str]) -> list[list[float]]:
        """Logprob mode: the options' log-probs for each conversation, `batch_size` conversations per
        forward pass, in order of length (less padding); results in the given order."""
        order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
        out: list = [None] * len(conversations)
        for start in range(0, len(order), self.cfg.batch_size):
            chunk = order[start:start + self.cfg.batch_size]
            for i, row in zip(chunk, self.client.option_logprobs_batch([conversations[i] for i in chunk], options)):
                out[i] = row
        return out

    def _rate_one(self, pr: tuple[str, str]) -> float:
        what = f"one whole number from {self.cfg.low} to {self.cfg.high}"
        return self._ask(self.rating_messages(*pr), lambda r: parse_rating(r, self.cfg.low, self.cfg.high), what)

    def _prefer_one(self, pab: tuple[str, str, str]) -> float:
        return 1.0 if self._ask(self.pair_messages(*pab), parse_choice, "the letter A or B") == "A" else 0.0

    def rate(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One rating in [low, high] per (prompt, response); float (an expectation in logprob mode)."""
        if self.mode == "logprob":
            conversations = [self.rating_messages(p, r) for p, r in zip(prompts, responses)]
            return [expected_rating(lps, self.values)
                    for lps in self._option_logprobs(conversations, [str(v) for v in self.values])]
        return map_concurrent(self._rate_one, list(zip(prompts, responses)), self.workers)

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(the judge says response A rates higher), A shown first: one float in [0, 1] per triple."""
        if self.mode == "logprob":
            rows = self._option_logprobs([self.pair_messages(*t) for t in zip(prompts, a, b)], ["A", "B"])
            return [1.0 / (1.0 + math.exp(lp_b - lp_a)) for lp_a, lp_b in rows]
        return map_concurrent(self._prefer_one, list(zip(prompts, a, b)), self.workers)
