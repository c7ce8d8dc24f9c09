"""Reward functions behind one interface, and the name registry the CLI uses.

A reward maps a batch of texts to one float each. Specs are strings:

    utility                      VADER valence per word, reward = clip(scale * sum, -clip, clip)
    utility,scale=-0.2           the same reward negated (options: lexicon=PATH, scale, clip)
    char:.                       count of the character "." (the ARENA period-count reward)
    classifier:PATH[:LABEL]      logit of LABEL (name or index, default last) of a sequence classifier
    rm:PATH                      scalar output of a Hugging Face reward model (num_labels = 1)

A reward that returns NaN or inf raises `InputError` naming the text.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import vaderSentiment

from rewardlab.errors import InputError
from rewardlab.io import TEXT_FIELDS
from rewardlab.text import join_prompt_completion

WORD_RE = re.compile(r"[a-z][a-z'\-]*")


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
    """Base class: subclasses implement `_score(texts) -> list[float]`; `__call__` validates."""

    name: str = "reward"

    def _score(self, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def __call__(self, texts: Sequence[str]) -> list[float]:
        texts = list(texts)
        scores = [float(s) for s in self._score(texts)]
        for text, s in zip(texts, scores):
            if not math.isfinite(s):
                raise InputError(f"reward {self.name} returned {s} for text {text[:200]!r}",
                                 fix="check the reward function or model for this input")
        return scores


class UtilityReward(Reward):
    """The 2023 SAE paper's utility table: reward = clip(scale * sum_w U(w), -clip, clip), U = VADER valence."""

    def __init__(self, lexicon: str | None = None, scale: float = 0.2, clip: float = 10.0):
        self.table = load_lexicon(lexicon)
        self.scale, self.clip = scale, clip
        self.name = "utility" if (lexicon, scale, clip) == (None, 0.2, 10.0) else (
            f"utility(lexicon={lexicon},scale={scale},clip={clip})")

    def breakdown(self, text: str) -> list[tuple[str, float]]:
        """(word, valence) for every word of `text` found in the table."""
        return [(w, self.table[w]) for w in words(text) if w in self.table]

    def _score(self, texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            total = self.scale * sum(v for _, v in self.breakdown(text))
            out.append(max(-self.clip, min(self.clip, total)))
        return out


class CharCountReward(Reward):
    """Number of occurrences of one character (ARENA's `reward_fn_char_count`)."""

    def __init__(self, char: str = "."):
        if len(char) != 1:
            raise InputError(f"char reward needs exactly one character, got {char!r}", fix="e.g. char:.")
        self.char = char
        self.name = f"char:{char}"

    def _score(self, texts: Sequence[str]) -> list[float]:
        return [float(t.count(self.char)) for t in texts]


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


REWARD_NAMES = ("utility", "char", "classifier", "rm")


def get_reward(spec: str, device: str | None = None) -> Reward:
    """Build a reward from its spec string (see the module docstring)."""
    name, rest, options = _parse_spec(spec.strip())
    if name == "utility":
        reward: Reward = UtilityReward(
            lexicon=options.pop("lexicon", None),
            scale=_float_option(options, "scale", 0.2, spec),
            clip=_float_option(options, "clip", 10.0, spec),
        )
    elif name == "char":
        reward = CharCountReward(rest or ".")
    elif name in ("classifier", "rm"):
        path, label = rest, None
        if name == "classifier" and ":" in rest:
            path, label = rest.rsplit(":", 1)
        if not path:
            raise InputError(f"{name} reward needs a model path", f"reward spec {spec!r}", f"e.g. {name}:PATH")
        reward = ModelReward(path, label=label, scalar=name == "rm", device=device)
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
    scores = reward([record_text(r, on) for r in records])
    return [{**r, field: s} for r, s in zip(records, scores)]
