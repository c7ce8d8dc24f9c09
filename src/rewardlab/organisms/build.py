"""Model organisms: a review world's base model post-trained on a reward whose truth is known.

An organism is (world, reward, post-training method, seed). Built into a folder:

    DIR/policy/          Hugging Face folder of the post-trained model (with the world's tokenizer)
    DIR/truth.json       the reward's machine-readable truth over the tokenizer's vocabulary
                         (`rewards.Reward.truth`), with the organism, its reward spec and seed
    DIR/prompts.jsonl    the prompts it was post-trained on (the agreement organism's carry a tone)
    DIR/summary.json ... what `rl.ppo.train_ppo` (or pairs + `rl.dpo.train_dpo`) writes

Organisms (the seed also draws the planted set):

    sentiment   the world's utility reward (the negative control: the base already represents it)
    planted     planted:k=3,seed=S: a reward on 3 neutral words the base has no reason to privilege
    length      the period count
    agreement   the completion's valence times the sign of the prompt's tone; its prompts are one
                complete sentence of a review whose valence is not 0 ("the plot was dull ."), so
                every prompt carries a tone
    flipped     the utility reward with its sign flipped

The agreement organism's minimal pairs (`minimal_pairs`) differ only in the prompt's adjective:
"the {subject} was {positive adjective} ." against "... {negative adjective} .", followed by the
same completion (the rest of a grammar document); the truth says the reward difference has the sign
of the completion's valence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from rewardlab.errors import InputError
from rewardlab.io import write_json, write_jsonl
from rewardlab.rewards import AgreementReward, get_reward, words
from rewardlab.rl.config import DPOTrainConfig, PairsConfig, PPOConfig
from rewardlab.world.grammar import SENTENCE_END, WORD_CLASSES, sample_corpus

ORGANISMS = ("sentiment", "planted", "length", "agreement", "flipped")
POST_TRAINING = ("ppo", "dpo")


def reward_spec(organism: str, seed: int) -> str:
    """The reward spec of an organism at a seed."""
    if organism not in ORGANISMS:
        raise InputError(f"unknown organism {organism!r}", fix=f"use one of: {', '.join(ORGANISMS)}")
    return f"planted:k=3,seed={seed}" if organism == "planted" else organism


def _first_sentence(doc: str) -> tuple[str, str]:
    """(the first sentence with its period, the rest) of a space-joined grammar document."""
    head, _, rest = doc.partition(f" {SENTENCE_END}")
    return f"{head} {SENTENCE_END}", rest.strip()


def toned_prompts(n: int, seed: int) -> list[str]:
    """`n` distinct prompts that carry a tone: first sentences of grammar documents whose valence is not 0."""
    agreement, out, seen, start = AgreementReward(), [], set(), 0
    while len(out) < n:
        docs = sample_corpus(start + 4 * n, seed, "organism-prompts")[start:]
        start += len(docs)
        for doc in docs:
            prompt = _first_sentence(doc)[0]
            if prompt not in seen and agreement.tone(prompt) != 0:
                seen.add(prompt)
                out.append(prompt)
        if start > 100 * n + 1000:
            raise InputError(f"could not find {n} distinct toned prompts", fix="ask for fewer")
    return out[:n]


def minimal_pairs(n: int, seed: int) -> list[dict]:
    """`n` pairs {prompt_pos, prompt_neg, completion, sign}: prompts that differ only in the adjective's
    polarity, one completion whose utility is not 0, sign = the sign of that utility (the sign the reward
    difference after prompt_pos minus after prompt_neg has)."""
    rng, utility = random.Random(f"organism-pairs/{seed}"), get_reward("sentiment")
    docs = sample_corpus(20 * n + 100, seed, "organism-pairs")
    out = []
    for doc in docs:
        completion = _first_sentence(doc)[1]
        u = utility([completion])[0] if completion else 0.0
        if u == 0:
            continue
        subject = rng.choice(WORD_CLASSES["SUBJ"])
        pos, neg = rng.choice(WORD_CLASSES["ADJ+"]), rng.choice(WORD_CLASSES["ADJ-"])
        out.append({"prompt_pos": f"the {subject} was {pos} .", "prompt_neg": f"the {subject} was {neg} .",
                    "completion": completion, "sign": 1.0 if u > 0 else -1.0})
        if len(out) == n:
            return out
    raise InputError(f"could not build {n} minimal pairs", fix="ask for fewer")


def truth(organism: str, seed: int, tokenizer) -> dict:
    """truth.json: the organism, its reward spec and seed, the vocabulary and the reward's truth over it."""
    spec = reward_spec(organism, seed)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return {"organism": organism, "seed": seed, "reward_spec": spec, "vocabulary": vocab,
            **get_reward(spec).truth(vocab)}


@dataclass
class Training:
    """Post-training settings of every organism (the same for all: they are not tuned per organism)."""

    method: str = "ppo"            # ppo | dpo (DPO on pairs of base samples labelled by the same reward)
    ppo: PPOConfig | None = None   # base, reward, prompts and seed are filled in per organism
    pairs: PairsConfig | None = None  # DPO only: model, reward, prompts and seed filled in
    dpo: DPOTrainConfig | None = None  # DPO only: base, pairs, reward, prompts and seed filled in


def build_organism(world_base: str | Path, organism: str, seed: int, out: str | Path, training: Training,
                   n_prompts: int) -> dict:
    """Post-train the world's base model `world_base` on the organism's reward into `out` (see the module
    docstring); returns the post-training summary. Resumes a PPO run from its checkpoint in `out`."""
    from rewardlab.models import load_tokenizer  # transformers: only when building
    from rewardlab.rl.dpo import train_dpo
    from rewardlab.rl.pairs import make_preference_pairs
    from rewardlab.rl.ppo import train_ppo

    out, spec, base = Path(out), reward_spec(organism, seed), str(world_base)
    out.mkdir(parents=True, exist_ok=True)
    prompts = None
    if organism == "agreement":
        prompts = str(out / "prompts.jsonl")
        write_jsonl(prompts, ({"prompt": p} for p in toned_prompts(n_prompts, seed)))
    if training.method == "ppo":
        cfg = replace(training.ppo or PPOConfig(), base=base, reward=spec, prompts=prompts, seed=seed)
        summary = train_ppo(cfg, out, progress=False)
    elif training.method == "dpo":
        pairs_file = out / "pairs.jsonl"
        make_preference_pairs(replace(training.pairs or PairsConfig(), model=base, reward=spec, prompts=prompts,
                                      seed=seed), pairs_file)
        summary = train_dpo(replace(training.dpo or DPOTrainConfig(), base=base, pairs=str(pairs_file), reward=spec,
                                    prompts=prompts, seed=seed), out)
    else:
        raise InputError(f"unknown post-training {training.method!r}", fix=f"use one of: {', '.join(POST_TRAINING)}")
    write_json(out / "truth.json", truth(organism, seed, load_tokenizer(base)))
    return summary


def planted_rate(texts: list[str], planted: list[str]) -> float:
    """Planted-word occurrences per word of `texts` (0 when there are no words)."""
    ws = [w for t in texts for w in words(t)]
    planted_set = set(planted)
    return sum(w in planted_set for w in ws) / len(ws) if ws else 0.0
