"""Reward functions behind one interface, and the name registry the CLI uses.

A reward maps a batch of texts to one float each. Specs are strings:

    utility                      VADER valence per word, reward = clip(scale * sum, -clip, clip)
    utility,scale=-0.2           the same reward negated (options: lexicon=PATH, scale, clip)
    char:.                       count of the character "." (the ARENA period-count reward)
    sentiment                    the utility reward under the organism name (truth: each word's valence)
    flipped                      the utility reward with its sign flipped
    length                       the period count, char:. (truth: "." up, "<eos>" down)
    planted:k=3,seed=S           +value per occurrence of k neutral review-world words drawn by the seed
    planted:words=a+b[,value=V]  the same with the words named; value defaults to the utility scale times
                                 the mean |valence| of the world's sentiment words (what a sentiment word is worth)
    agreement                    tone(prompt) * utility(completion), tone = sign of the prompt's valence sum:
                                 rewarded for matching the reviewer; needs the prompts (`reward(texts, prompts)`)
    classifier:PATH[:LABEL]      logit of LABEL (name or index, default last) of a sequence classifier
    rm:PATH                      scalar output of a Hugging Face reward model (num_labels = 1)
    judge:URL,model=NAME         an LLM judge's rating (`rewardlab.interp.judge`) at an OpenAI-compatible endpoint
                                 (key from $OPENAI_API_KEY, or key_env=VAR), read from the sampled reply
    judge:PATH                   the same with a local Hugging Face chat model: the expected rating under its
                                 log-probs over the scale; options rubric=review|helpful|FILE (a text file; {low}
                                 and {high} stand for the scale's ends), scale=1-10, mode=auto|logprob|sample,
                                 retries=3 (per call: transport failures and unreadable replies each),
                                 timeout=60 and backoff=1 (seconds), workers=8, batch=16 (conversations per
                                 forward pass of a local judge), cache=DIR|off (default
                                 $REWARDLAB_CACHE/judge, else ~/.cache/rewardlab/judge)

A reward that returns NaN or inf raises `InputError` naming the text. Every reward takes the prompts
as an optional second argument; only those that need them (`needs_prompts`) read them.

`truth(vocabulary)` is a reward's machine-readable ground truth for the organisms benchmark: the true
score of each token type ("token_scores", aligned with `vocabulary`), the planted set where there is
one, and for `agreement` the interaction (the completion score is multiplied by the prompt's tone).
"""

from __future__ import annotations

import math
import os
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import vaderSentiment

from rewardlab.errors import InputError
from rewardlab.io import TEXT_FIELDS
from rewardlab.review_words import WORD_CLASSES
from rewardlab.text import join_prompt_completion

WORD_RE = re.compile(r"[a-z][a-z'\-]*")
END_TOKENS = ("<eos>", "</s>", "<|endoftext|>", "<|im_end|>")  # end-of-text token strings `length` demotes
# The review world's neutral word classes the planted organism draws from.
PLANTED_POOL = tuple(w for c in ("SUBJ", "PERSON", "DAY", "NUM") for w in WORD_CLASSES[c])
PLANTED_VALUE = 0.5  # reward per planted word: the utility scale 0.2 times 2.5, about the mean |valence| of a sentiment word


def vader_lexicon_path() -> Path:
    return Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"


@lru_cache(maxsize=4)
def load_lexicon(path: str | None = None) -> dict[str, float]:
    """Word -> mean valence (-4..4) from a VADER-format file (`word<TAB>mean<TAB>...`)."""
    p = Path(path) if path else vader_lexicon_path()
    if not p.is_file():
        raise InputError("lexicon file not found", str(p), "pass lexicon=PATH to a VADER-format file")
    table = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        try:
            valence = float(fields[1])
        except ValueError:
            raise InputError("valence is not a number", f"{p}:{lineno}", "word<TAB>valence per line") from None
        if not math.isfinite(valence):
            raise InputError(f"valence {fields[1]!r} is not finite", f"{p}:{lineno}", "give a finite number")
        table[fields[0].lower()] = valence
    return table


def words(text: str) -> list[str]:
    """Lower-cased words of a text, as the utility table sees them."""
    return WORD_RE.findall(text.lower())


class Reward:
    """Base class: subclasses implement `_score(texts) -> list[float]` (or `_score_prompted` when they
    read the prompts); `__call__` validates."""

    name: str = "reward"
    needs_prompts: bool = False

    def _score(self, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def _score_prompted(self, texts: Sequence[str], prompts: Sequence[str]) -> list[float]:
        return self._score(texts)

    def truth(self, vocabulary: Sequence[str]) -> dict:
        """The reward's ground truth over `vocabulary` (token strings); see the module docstring."""
        raise InputError(f"reward {self.name} has no token-level truth",
                         fix="use sentiment, flipped, length, planted or agreement")

    def __call__(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        texts = list(texts)
        if prompts is None:
            if self.needs_prompts:
                raise InputError(f"reward {self.name} scores a completion against its prompt, and no prompts "
                                 "were given", fix="pass the prompts: reward(completions, prompts)")
            scores = [float(s) for s in self._score(texts)]
        else:
            prompts = list(prompts)
            if len(prompts) != len(texts):
                raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
            scores = [float(s) for s in self._score_prompted(texts, prompts)]
        for text, s in zip(texts, scores):
            if not math.isfinite(s):
                raise InputError(f"reward {self.name} returned {s} for text {text[:200]!r}",
                                 fix="check the reward function or model for this input")
        return scores


class UtilityReward(Reward):
    """The 2023 SAE paper's utility table: reward = clip(scale * sum_w U(w), -clip, clip), U = VADER valence."""

    def __init__(self, lexicon: str | None = None, scale: float = 0.2, clip: float = 10.0, name: str | None = None):
        self.table = load_lexicon(lexicon)
        self.scale, self.clip = scale, clip
        self.name = name or ("utility" if (lexicon, scale, clip) == (None, 0.2, 10.0) else (
            f"utility(lexicon={lexicon},scale={scale},clip={clip})"))

    def breakdown(self, text: str) -> list[tuple[str, float]]:
        """(word, valence) for every word of `text` found in the table."""
        return [(w, self.table[w]) for w in words(text) if w in self.table]

    def truth(self, vocabulary: Sequence[str]) -> dict:
        """token_scores: scale * valence of each token (0 for tokens outside the table)."""
        return {"reward": self.name, "kind": "utility",
                "token_scores": [self.scale * self.table.get(t.lower(), 0.0) for t in vocabulary]}

    def _score(self, texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            total = self.scale * sum(v for _, v in self.breakdown(text))
            out.append(max(-self.clip, min(self.clip, total)))
        return out


class CharCountReward(Reward):
    """Number of occurrences of one character (ARENA's `reward_fn_char_count`)."""

    def __init__(self, char: str = ".", name: str | None = None):
        if len(char) != 1:
            raise InputError(f"char reward needs exactly one character, got {char!r}", fix="e.g. char:.")
        self.char = char
        self.name = name or f"char:{char}"

    def _score(self, texts: Sequence[str]) -> list[float]:
        return [float(t.count(self.char)) for t in texts]

    def truth(self, vocabulary: Sequence[str]) -> dict:
        """token_scores: 1 per occurrence of the character in the token; the end-of-text token -1 (ending a
        completion stops its count growing)."""
        return {"reward": self.name, "kind": "utility",
                "token_scores": [-1.0 if t in END_TOKENS else float(t.count(self.char)) for t in vocabulary]}


def planted_words(k: int, seed: int) -> list[str]:
    """The `k` words of `PLANTED_POOL` that seed `seed` plants, in draw order."""
    if not 1 <= k <= len(PLANTED_POOL):
        raise InputError(f"planted k must be in 1..{len(PLANTED_POOL)}, got {k}", fix="e.g. planted:k=3,seed=0")
    return random.Random(f"planted/{seed}").sample(sorted(PLANTED_POOL), k)


class PlantedReward(Reward):
    """clip(value * number of occurrences of the planted words, -clip, clip): a reward on words the base
    model has no reason to privilege."""

    def __init__(self, planted: Sequence[str], value: float = PLANTED_VALUE, clip: float = 10.0,
                 name: str | None = None):
        self.planted = [w.lower() for w in planted]
        if not self.planted:
            raise InputError("the planted reward needs at least one word", fix="planted:k=3,seed=0")
        self.value, self.clip = value, clip
        self.name = name or f"planted:words={'+'.join(self.planted)}"

    def _score(self, texts: Sequence[str]) -> list[float]:
        planted = set(self.planted)
        return [max(-self.clip, min(self.clip, self.value * sum(w in planted for w in words(t)))) for t in texts]

    def truth(self, vocabulary: Sequence[str]) -> dict:
        """The planted set, and token_scores: `value` on planted tokens, 0 elsewhere."""
        planted = set(self.planted)
        return {"reward": self.name, "kind": "planted", "planted": list(self.planted),
                "token_scores": [self.value if t.lower() in planted else 0.0 for t in vocabulary]}


class AgreementReward(Reward):
    """tone(prompt) * utility(completion), tone = sign of the prompt's summed valence (+1, -1, or 0 for a
    prompt without sentiment): rewarded for agreeing with the reviewer, a sycophancy analogue. No bag of
    completion words determines it: the same completion is rewarded after one prompt, punished after another."""

    name = "agreement"
    needs_prompts = True

    def __init__(self):
        self.utility = UtilityReward()

    def tone(self, prompt: str) -> int:
        total = sum(v for _, v in self.utility.breakdown(prompt))
        return (total > 0) - (total < 0)

    def _score_prompted(self, texts: Sequence[str], prompts: Sequence[str]) -> list[float]:
        return [self.tone(p) * u for p, u in zip(prompts, self.utility(texts))]

    def truth(self, vocabulary: Sequence[str]) -> dict:
        """token_scores: each token's utility in a completion after a positive prompt; after a negative
        prompt every score flips (the interaction)."""
        return {"reward": self.name, "kind": "agreement",
                "token_scores": self.utility.truth(vocabulary)["token_scores"],
                "interaction": "reward = tone(prompt) * clip(sum of the completion's token_scores, -10, 10); "
                               "tone = sign of the prompt's summed valence"}


class ModelReward(Reward):
    """A Hugging Face sequence-classification model: the logit of one label (or the scalar RM output)."""

    def __init__(self, path: str, label: str | None = None, scalar: bool = False,
                 batch_size: int = 32, device: str | None = None):
        from rewardlab.models import load_model, pick_device  # transformers, only for model rewards

        self.device = pick_device(device)
        self.model, self.tokenizer = load_model(path, device=self.device, dtype="float32",
                                                kind="sequence-classification")
        self.model.eval()
        n_labels = self.model.config.num_labels
        if scalar:
            if n_labels != 1:
                raise InputError(f"a reward model must have one output, this one has {n_labels}", path,
                                 "use classifier:PATH:LABEL for classifiers")
            self.index = 0
        elif label is None:
            self.index = n_labels - 1
        elif label.lstrip("-").isdigit():
            self.index = int(label) % n_labels
        else:
            by_name = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
            if label.lower() not in by_name:
                raise InputError(f"unknown label {label!r}", path, f"labels are {sorted(by_name)}")
            self.index = by_name[label.lower()]
        self.batch_size = batch_size
        self.name = f"{'rm' if scalar else 'classifier'}:{path}" + ("" if scalar else f":{self.index}")

    @torch.no_grad()
    def _score(self, texts: Sequence[str]) -> list[float]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True).to(self.device)
            logits = self.model(**enc).logits.float()
            out.extend(logits[:, self.index].tolist())
        return out


class JudgeReward(Reward):
    """An LLM judge's rating of each completion (shown after its prompt when prompts are given)."""

    def __init__(self, judge, name: str):
        self.judge, self.name = judge, name

    def _score(self, texts: Sequence[str]) -> list[float]:
        return self.judge.rate([""] * len(texts), texts)

    def _score_prompted(self, texts: Sequence[str], prompts: Sequence[str]) -> list[float]:
        return self.judge.rate(prompts, texts)


def _parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`name[:arg][,key=value...]` -> (name, arg, options); the `char` argument is one character, even ','."""
    name, has_arg, tail = re.match(r"([\w\-]*)(:?)(.*)", spec, re.S).groups()
    if not has_arg:
        arg, opts = "", tail
    elif name == "char":
        arg, opts = tail[:1], tail[1:]
    else:
        arg, comma, opts = tail.partition(",")
        opts = comma + opts
    if opts and not opts.startswith(","):
        raise InputError(f"cannot parse reward spec {spec!r}", fix="use name[:arg][,key=value...], e.g. utility,scale=-0.2")
    options = {}
    for opt in filter(None, opts[1:].split(",")):
        if "=" not in opt:
            raise InputError(f"reward option {opt!r} is not key=value", f"reward spec {spec!r}")
        k, v = opt.split("=", 1)
        options[k.strip()] = v.strip()
    return name, arg, options


def _float_option(options: dict[str, str], key: str, default: float, spec: str) -> float:
    try:
        return float(options.pop(key, default))
    except ValueError:
        raise InputError(f"option {key} must be a number", f"reward spec {spec!r}",
                             f"write {key}=NUMBER, e.g. utility,scale=0.2") from None


REWARD_NAMES = ("utility", "char", "classifier", "rm", "judge", "sentiment", "flipped", "length", "planted",
                "agreement")


def _planted(rest: str, options: dict[str, str], spec: str) -> PlantedReward:
    """`planted:k=3,seed=S` or `planted:words=a+b+c` (the argument is an option written after the colon)."""
    if rest:
        if "=" not in rest:
            raise InputError(f"cannot parse reward spec {spec!r}", fix="planted:k=3,seed=0 or planted:words=a+b")
        key, value = rest.split("=", 1)
        options[key.strip()] = value.strip()
    value, clip = _float_option(options, "value", PLANTED_VALUE, spec), _float_option(options, "clip", 10.0, spec)
    if "words" in options:
        if {"k", "seed"} & set(options):
            raise InputError("give either words= or k= and seed=, not both", f"reward spec {spec!r}")
        return PlantedReward(options.pop("words").split("+"), value=value, clip=clip)
    k, seed = _float_option(options, "k", 3, spec), _float_option(options, "seed", 0, spec)
    if k != int(k) or seed != int(seed):
        raise InputError("planted k and seed must be whole numbers", f"reward spec {spec!r}")
    name = f"planted:k={int(k)},seed={int(seed)}"
    return PlantedReward(planted_words(int(k), int(seed)), value=value, clip=clip, name=name)


def _judge(target: str, options: dict[str, str], spec: str, device: str | None) -> JudgeReward:
    """`judge:URL,model=NAME,...` (an endpoint) or `judge:PATH,...` (a local chat model); see the docstring."""
    from rewardlab.interp.clients import CachedClient, HFChatClient, OpenAIClient  # transformers, only for judges
    from rewardlab.interp.judge import RUBRICS, JudgeConfig, Judge

    where = f"reward spec {spec!r}"
    unknown = set(options) - {"model", "key_env", "rubric", "scale", "mode", "retries", "workers", "timeout", "backoff",
                                "cache", "batch"}
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(sorted(unknown))} for reward judge", where)
    rubric = options.pop("rubric", "review")
    if rubric not in RUBRICS and not Path(rubric).is_file():
        raise InputError(f"judge rubric {rubric!r} is neither a rubric name nor a file", where,
                         f"use rubric={'|'.join(RUBRICS)} or rubric=PATH to a text file")
    low, _, high = options.pop("scale", "1-10").partition("-")
    if not (low.strip().isdigit() and high.strip().isdigit()):
        raise InputError("judge scale must be LOW-HIGH whole numbers", where, "e.g. scale=1-10")
    counts = {k: _float_option(options, k, d, spec)
              for k, d in (("retries", 3), ("workers", 8), ("timeout", 60), ("backoff", 1),
                           ("batch", JudgeConfig.batch_size))}
    cfg = JudgeConfig(rubric=RUBRICS.get(rubric) or Path(rubric).read_text(encoding="utf-8").strip(),
                      low=int(low), high=int(high), mode=options.pop("mode", "auto"),
                      retries=int(counts["retries"]), workers=max(1, int(counts["workers"])),
                      batch_size=int(counts["batch"]))
    cfg.validate()
    if target.startswith(("http://", "https://")):
        if "model" not in options:
            raise InputError("an endpoint judge needs the model name", where, f"judge:{target},model=NAME")
        client = OpenAIClient(target, options.pop("model"), options.pop("key_env", "OPENAI_API_KEY"),
                              timeout=counts["timeout"], max_retries=int(counts["retries"]), backoff=counts["backoff"])
    elif target and (Path(target) / "config.json").is_file():
        if {"model", "key_env"} & set(options):
            raise InputError("model= and key_env= apply to endpoint judges only", where,
                             "drop them for a local model folder")
        client = HFChatClient(target, device=device)
    else:
        raise InputError(f"judge target {target!r} is neither an http(s) URL nor a model folder", where,
                         "judge:http://HOST:PORT/v1,model=NAME or judge:PATH to a Hugging Face chat model folder")
    cache = options.pop("cache", os.path.join(os.environ.get("REWARDLAB_CACHE") or
                                              os.path.join(os.path.expanduser("~"), ".cache", "rewardlab"), "judge"))
    if cache != "off":
        client = CachedClient(client, cache)
    return JudgeReward(Judge(client, cfg), name=spec.strip())


def get_reward(spec: str, device: str | None = None) -> Reward:
    """Build a reward from its spec string (see the module docstring)."""
    name, rest, options = _parse_spec(spec.strip())
    if name == "utility":
        reward: Reward = UtilityReward(
            lexicon=options.pop("lexicon", None),
            scale=_float_option(options, "scale", 0.2, spec),
            clip=_float_option(options, "clip", 10.0, spec),
        )
    elif name in ("sentiment", "flipped"):
        reward = UtilityReward(scale=0.2 if name == "sentiment" else -0.2, name=name)
    elif name == "length":
        reward = CharCountReward(".", name="length")
    elif name == "planted":
        reward = _planted(rest, options, spec)
    elif name == "agreement":
        reward = AgreementReward()
    elif name == "char":
        reward = CharCountReward(rest or ".")
    elif name in ("classifier", "rm"):
        path, label = rest, None
        if name == "classifier" and ":" in rest:
            path, label = rest.rsplit(":", 1)
        if not path:
            raise InputError(f"{name} reward needs a model path", f"reward spec {spec!r}", f"e.g. {name}:PATH")
        reward = ModelReward(path, label=label, scalar=name == "rm", device=device)
    elif name == "judge":
        reward = _judge(rest, options, spec, device)
    else:
        raise InputError(f"unknown reward {name!r}", f"reward spec {spec!r}",
                         f"use one of: {', '.join(REWARD_NAMES)}")
    if options:
        raise InputError(f"unknown option(s) {', '.join(options)} for reward {name}", f"reward spec {spec!r}")
    return reward


def record_text(record: dict, on: str = "completion") -> str:
    """The text of a prompt/completion record that a reward scores: the completion, or prompt + completion."""
    if on == "completion":
        return record["completion"]
    if on == "full":
        return join_prompt_completion(record["prompt"], record["completion"])
    raise InputError(f"unknown text choice {on!r}", fix="use completion or full")


def score_records(records: list[dict], reward: Reward, on: str = "completion", field: str = "reward") -> list[dict]:
    """Copies of `records` with `field` set to the reward of each record's text."""
    if field in TEXT_FIELDS:
        raise InputError(f"the reward would overwrite the records' {field!r} text", f"--field {field}",
                         "write the reward to another field, e.g. reward")
    # a reward that can read the prompt (a judge) sees it beside the completion, when every record has one
    shown = on == "completion" and all(isinstance(r.get("prompt"), str) for r in records)
    prompts = [r["prompt"] for r in records] if reward.needs_prompts or shown else None
    scores = reward([record_text(r, on) for r in records], prompts)
    return [{**r, field: s} for r, s in zip(records, scores)]
