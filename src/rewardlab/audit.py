"""Reward-model audits on minimal pairs, scored as RewardBench scores them.

A pair is (prompt, chosen, rejected, attribute). Pairs come from a JSONL file, or are generated
from source texts by one controlled edit in the completion:

    sentiment  a positive word vs a negative word of the same slot      (chosen: positive)
    neutral    a neutral word swapped for another of its class          (chosen: original; a fair
               judge ties, so accuracy with ties counted as half is ~0.5)
    length     the completion with a neutral sentence appended vs without (chosen: longer)

Word lists default to the review world's word classes (`rewardlab.world.grammar.WORD_CLASSES`),
so generated pairs stay inside the world's grammar; a template JSON may give its own.

Accuracy is strict: a pair is correct only if score(chosen) > score(rejected), ties lose. Also
reported: the tie rate, accuracy with ties counted as half, and the mean margin with a bootstrap CI
(resampling source texts, since pairs made from one text are correlated).

RM specs: any reward of the registry (`utility`, `rm:PATH`, `classifier:PATH[:LABEL]`, `judge:...`),
scoring each completion after its prompt, or `dpo:PATH` for a DPO policy's implicit reward
beta * sum log(pi / pi_ref) with `ref`, or without a reference one of RewardBench's reference-free
scores (sum, mean, -L2 norm of the log-probs).

Given a config (`audit(..., cfg=...)`), the results also carry `vs_reference`: Spearman between the
scorer and a reference reward (`cfg.reference`, default the world's utility) over the distinct
(prompt, completion) texts the audit scored, with a CI resampling source texts. For an LLM judge
(`judge:` specs) they carry `judge_biases`, each a minimal-pair set with a rate and its CI:

    position   both answers of a pair in one pairwise prompt, shown in both orders (`cfg.position_pairs`
               pairs, every k-th, spread over the sources): `follows_position` = share of pairs whose
               verdict picks the same slot in both orders (a judge that reads the answers scores 0),
               `first` = share of verdicts for the first slot (0.5 unbiased), `accuracy` = share of
               verdicts for the chosen answer, and the mean P(first slot)
    length     the `length` pairs (a neutral sentence appended): share where the judge rates the longer
               text higher, ties counted as half (0.5 = no length bias)
    self_preference   not measured; `reason` says why
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.diff.logprobs import REF_FREE, completion_logprobs, reduce_logprobs
from rewardlab.errors import InputError
from rewardlab.io import read_json, read_jsonl, write_json, write_jsonl
from rewardlab.rewards import get_reward

ATTRIBUTES = ("sentiment", "neutral", "length")


@dataclass
class AuditWords:
    """Word lists for pair generation: sentiment classes as (positive, negative) word lists of one
    slot, neutral classes whose words may replace each other, and neutral sentences for length
    (appended only to texts with fewer than `max_sentences` "." tokens, when set)."""

    sentiment: list[tuple[list[str], list[str]]]
    neutral: list[list[str]]
    fillers: list[str]
    max_sentences: int | None = None


def world_words() -> AuditWords:
    """The review world's word classes (grammatical swaps) and its neutral sentences. Neutral classes
    are those without sentiment and without sentiment cues (`POLAR_CUES`, e.g. intensifiers)."""
    from rewardlab.world import grammar  # loads transformers: keeps `audit --help` fast

    classes = grammar.WORD_CLASSES
    sentiment = [(list(classes[f"{s}+"]), list(classes[f"{s}-"])) for s in grammar.SENTIMENT_SLOTS]
    cues = grammar.POLAR_CUES
    neutral = [list(ws) for c, ws in classes.items() if not c.endswith(("+", "-")) and c not in cues]
    fillers = [f"i saw it on {d} ." for d in classes["DAY"]] + [
        f"i watched it with my {p} ." for p in classes["PERSON"]]
    return AuditWords(sentiment, neutral, fillers, grammar.MAX_SENTENCES)


@dataclass
class PairConfig:
    attributes: tuple[str, ...] = ATTRIBUTES  # edits to generate: sentiment, neutral, length
    n_sources: int = 300  # source texts drawn from the world when no texts are given
    prompt_words: int = 3  # world source texts: the first words form the prompt, the rest the completion
    seed: int = 0  # seed of the source texts and the edits
    reference: str = "utility"  # reward spec the audited scores are correlated with (Spearman); "" for none
    position_pairs: int = 100  # LLM judges: pairs shown in both orders in one pairwise prompt (position bias)


def world_sources(n: int, seed: int, prompt_words: int) -> list[dict]:
    """Held-out world documents split into prompt (first words) and completion (the rest)."""
    from rewardlab.world.grammar import sample_corpus  # loads transformers: keeps `audit --help` fast

    docs = sample_corpus(n, seed, stream="audit")
    return [{"prompt": " ".join(d.split()[:prompt_words]), "completion": " ".join(d.split()[prompt_words:])}
            for d in docs]


def minimal_pairs(sources: Sequence[dict], words: AuditWords, cfg: PairConfig = PairConfig()) -> list[dict]:
    """Minimal pairs from prompt/completion `sources`, one per source and attribute where an edit applies."""
    unknown = set(cfg.attributes) - set(ATTRIBUTES)
    if unknown or not cfg.attributes:
        raise InputError(f"unknown attribute(s) {', '.join(map(repr, sorted(unknown)))}" if unknown else
                         "no attribute given", "attributes", f"use one or more of {', '.join(ATTRIBUTES)}")
    rng = random.Random(f"audit/{cfg.seed}")
    polarity = {w: (k, sign) for k, (pos, neg) in enumerate(words.sentiment) for sign, ws in ((1, pos), (-1, neg))
                for w in ws}
    neutral_class = {w: k for k, ws in enumerate(words.neutral) for w in ws}
    pairs = []
    for i, src in enumerate(sources):
        toks = src["completion"].split()
        for attr in cfg.attributes:
            if attr == "length":
                n_sentences = f"{src['prompt']} {src['completion']}".split().count(".")
                if not words.fillers or (words.max_sentences is not None and n_sentences >= words.max_sentences):
                    continue
                longer = f"{src['completion']} {rng.choice(words.fillers)}".strip()
                chosen, rejected = longer, src["completion"]
            else:
                table = polarity if attr == "sentiment" else neutral_class
                spots = [j for j, t in enumerate(toks) if t in table]
                if not spots:
                    continue
                j = rng.choice(spots)
                edited = list(toks)
                if attr == "sentiment":
                    k, sign = polarity[toks[j]]
                    pos, neg = words.sentiment[k]
                    edited[j] = rng.choice(neg if sign > 0 else pos)
                    chosen, rejected = (toks, edited) if sign > 0 else (edited, toks)
                else:
                    options = [w for w in words.neutral[neutral_class[toks[j]]] if w != toks[j]]
                    if not options:
                        continue
                    edited[j] = rng.choice(options)
                    chosen, rejected = toks, edited
                chosen, rejected = " ".join(chosen), " ".join(rejected)
            pairs.append({"id": len(pairs), "source": i, "attribute": attr, "prompt": src["prompt"],
                          "chosen": chosen, "rejected": rejected})
    return pairs


def load_template(path: str | Path, cfg: PairConfig) -> list[dict]:
    """Pairs from a template JSON: {"texts": [{prompt, completion}...] (default: world documents),
    "sentiment": [[positive words], [negative words]], ..., "neutral": [[words]...], "fillers": [...]}
    Lists left out default to the review world's."""
    spec = read_json(path)
    if not isinstance(spec, dict):
        raise InputError("a template must be a JSON object", str(path), "see `rewardlab audit --help`")
    default = world_words()
    try:
        sentiment = [(list(p), list(n)) for p, n in spec["sentiment"]] if "sentiment" in spec else default.sentiment
    except (TypeError, ValueError):
        raise InputError("sentiment must be a list of [positive words, negative words] pairs", str(path)) from None
    words = AuditWords(sentiment, [list(ws) for ws in spec.get("neutral", default.neutral)],
                       list(spec.get("fillers", default.fillers)), spec.get("max_sentences"))
    texts = spec.get("texts")
    if texts is None:
        sources = world_sources(cfg.n_sources, cfg.seed, cfg.prompt_words)
    else:
        sources = [t if isinstance(t, dict) else {"prompt": "", "completion": str(t)} for t in texts]
        bad = [k for k, t in enumerate(sources) if "prompt" not in t or "completion" not in t]
        if bad:
            raise InputError(f"text {bad[0]} needs prompt and completion", str(path))
    return minimal_pairs(sources, words, cfg)


class ImplicitRewardScorer:
    """A DPO policy's implicit reward beta * sum_t log(pi/pi_ref), or a reference-free score."""

    def __init__(self, policy: str, ref: str | None = None, ref_free: str = "sum", beta: float = 1.0,
                 batch_size: int = 16, device: str | None = None, chat_template: str = "auto"):
        from rewardlab.models import ModelPair, load_model  # loads transformers: keeps `audit --help` fast

        if ref is None and ref_free not in REF_FREE:
            raise InputError(f"unknown reference-free score {ref_free!r}", fix=f"use one of {', '.join(REF_FREE)}")
        if ref is not None:
            pair = ModelPair.load(ref, policy, device=device, dtype="float32", chat_template=chat_template)
            self.model, self.ref_model, self.tokenizer = pair.post, pair.base, pair.tokenizer
        else:
            self.model, self.tokenizer = load_model(policy, device=device, dtype="float32",
                                                    chat_template=chat_template)
            self.ref_model = None
        self.ref_free, self.beta, self.batch_size = ref_free, beta, batch_size
        self.name = f"dpo:{policy}"  # paths as given: a run's folder is often just "policy"
        self.ref_name = str(ref) if ref is not None else f"none ({ref_free})"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.ref_model is not None:
            rows = implicit_rewards(self.ref_model, self.model, self.tokenizer, prompts, completions,
                                    ScoreConfig(beta=self.beta, batch_size=self.batch_size))
            return [r["implicit_reward"] for r in rows]
        logps = completion_logprobs(self.model, self.tokenizer, prompts, completions, self.batch_size)
        return [reduce_logprobs(lp, self.ref_free) for lp in logps]


class RegistryScorer:
    """A reward of the registry, scoring the completion text."""

    def __init__(self, spec: str, device: str | None = None):
        self.reward = get_reward(spec, device=device)
        self.name, self.ref_name = self.reward.name, None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.reward(completions, prompts)


def get_scorer(spec: str, ref: str | None = None, ref_free: str = "sum", beta: float = 1.0,
               device: str | None = None, chat_template: str = "auto"):
    """`dpo:PATH` -> ImplicitRewardScorer (its prompts rendered by `chat_template`, as every prompt
    encoder does), anything else -> a registry reward."""
    if spec.startswith("dpo:"):
        return ImplicitRewardScorer(spec[4:], ref=ref, ref_free=ref_free, beta=beta, device=device,
                                    chat_template=chat_template)
    if ref is not None:
        raise InputError("--ref applies only to dpo:PATH reward models", fix="drop --ref, or use dpo:PATH")
    return RegistryScorer(spec, device=device)


def _summary(rows: list[dict], seed: int) -> dict:
    wins = np.array([r["results"] for r in rows], dtype=float)
    ties = np.array([r["score_chosen"] == r["score_rejected"] for r in rows], dtype=float)
    margins = np.array([r["score_chosen"] - r["score_rejected"] for r in rows])
    groups = [r.get("source", r["id"]) for r in rows]
    return {"accuracy": float(wins.mean()),
            "accuracy_ci": stats.mean(wins, groups=groups, seed=seed).to_dict(),
            "tie_rate": float(ties.mean()),
            "accuracy_ties_half": float((wins + 0.5 * ties).mean()),
            "mean_margin": stats.mean(margins, groups=groups, seed=seed).to_dict(),
            "num_pairs": len(rows), "num_prompts": len({r["prompt"] for r in rows})}


def audit(scorer, pairs: list[dict], seed: int = 0, cfg: PairConfig | None = None) -> tuple[dict, list[dict]]:
    """(results, per-example rows). Results: accuracy (strict, ties lose), its CI, tie rate, accuracy
    with ties as half, mean margin with CI, num_prompts, model, ref_model, and the same per attribute;
    with `cfg`, `vs_reference` (Spearman with cfg.reference) and, for an LLM judge, `judge_biases`
    (see the module docstring)."""
    if not pairs:
        raise InputError("no pairs to audit", fix="give pairs, or a template whose edits apply to its texts")
    if cfg is not None and cfg.position_pairs < 0:
        raise InputError(f"position_pairs must be >= 0, got {cfg.position_pairs}", "--position-pairs")
    reference = get_reward(cfg.reference) if cfg is not None and cfg.reference else None  # bad specs fail first
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer(prompts, [p["chosen"] for p in pairs])
    rejected = scorer(prompts, [p["rejected"] for p in pairs])
    rows = [{**p, "id": p.get("id", k), "attribute": p.get("attribute", "all"), "score_chosen": c,
             "score_rejected": r, "results": int(c > r)} for k, (p, c, r) in enumerate(zip(pairs, chosen, rejected))]
    results = {**_summary(rows, seed), "model": scorer.name, "ref_model": scorer.ref_name,
               "per_attribute": {a: _summary([r for r in rows if r["attribute"] == a], seed)
                                 for a in dict.fromkeys(r["attribute"] for r in rows)}}
    if reference is not None:
        results["vs_reference"] = spearman_vs_reference(rows, reference, seed)
    judge = getattr(getattr(scorer, "reward", None), "judge", None)
    if cfg is not None and judge is not None:
        results["judge_biases"] = judge_biases(judge, rows, cfg.position_pairs, seed)
    return results, rows


def spearman_vs_reference(rows: list[dict], reference, seed: int = 0) -> dict:
    """Spearman between the audited scores and `reference` (a Reward) over the distinct (prompt, text)
    pairs of `rows`, with a CI resampling source texts."""
    seen: dict[tuple[str, str], tuple[float, object]] = {}
    for r in rows:
        for side in ("chosen", "rejected"):
            seen.setdefault((r["prompt"], r[side]), (r[f"score_{side}"], r.get("source", r["id"])))
    keys = list(seen)
    truth = reference([k[1] for k in keys], [k[0] for k in keys])
    ours = [seen[k][0] for k in keys]
    return {"reference": reference.name,
            "spearman": stats.spearman(ours, truth, groups=[seen[k][1] for k in keys], seed=seed).to_dict()}


SELF_PREFERENCE_NOT_MEASURED = (
    "self-preference compares the judge's own completions with another model's at matched reward; the "
    "review world's completions come from its grammar and world models, so a chat judge's own continuations "
    "differ from them in grammar, vocabulary and length as well, and a preference between them would measure "
    "that style gap rather than self-recognition. Not measured.")


def _rate(values, groups, seed: int) -> dict:
    return stats.mean(np.asarray(values, dtype=float), groups=groups, seed=seed).to_dict()


def judge_biases(judge, rows: list[dict], position_pairs: int, seed: int = 0) -> dict:
    """Position bias on `position_pairs` pairs spread over `rows` (pairwise prompts, both orders), length
    bias on the `length` pairs of `rows`, and why self-preference is not measured (module docstring)."""
    out: dict = {"self_preference": {"measured": False, "reason": SELF_PREFERENCE_NOT_MEASURED}}
    shown = rows[::max(1, len(rows) // position_pairs)][:position_pairs] if position_pairs else []  # spread out
    if shown:
        prompts, chosen, rejected = ([r[k] for r in shown] for k in ("prompt", "chosen", "rejected"))
        first = judge.prefer(prompts, chosen, rejected)  # P(slot A) with chosen in slot A
        second = judge.prefer(prompts, rejected, chosen)  # P(slot A) with chosen in slot B
        groups = [r.get("source", r["id"]) for r in shown]
        v1, v2 = np.array(first) > 0.5, np.array(second) > 0.5
        out["position"] = {
            "follows_position": _rate(v1 == v2, groups, seed),
            "first": _rate(np.concatenate([v1, v2]), groups * 2, seed),
            "accuracy": _rate(np.concatenate([v1, ~v2]), groups * 2, seed),
            "p_first": _rate(np.concatenate([first, second]), groups * 2, seed),
            "num_pairs": len(shown)}
    longer = [r for r in rows if r["attribute"] == "length"]
    if longer:
        wins = [1.0 if r["score_chosen"] > r["score_rejected"] else 0.5 if r["score_chosen"] == r["score_rejected"]
                else 0.0 for r in longer]
        out["length"] = {"prefers_longer": _rate(wins, [r.get("source", r["id"]) for r in longer], seed),
                         "num_pairs": len(longer)}
    return out


def read_pairs(path: str | Path) -> list[dict]:
    """Pairs from a JSONL file of prompt/chosen/rejected records (optional `attribute`)."""
    return read_jsonl(path, required=("prompt", "chosen", "rejected"))


def write_audit(out_dir: str | Path, results: dict, rows: list[dict]) -> None:
    """`results.json` and `scores.jsonl` (per-example, RewardBench layout) into `out_dir`."""
    write_json(Path(out_dir) / "results.json", results)
    write_jsonl(Path(out_dir) / "scores.jsonl", rows)


def format_table(results: dict) -> str:
    """The per-attribute accuracy table as text."""
    head = f"{'attribute':<12}{'n':>6}{'accuracy':>10}{'ties':>8}{'acc(ties=1/2)':>15}  mean margin [95% CI]"
    out = [f"model {results['model']}  reference {results['ref_model']}", head]
    for name, s in [*results["per_attribute"].items(), ("all", results)]:
        m = s["mean_margin"]
        out.append(f"{name:<12}{s['num_pairs']:>6}{s['accuracy']:>10.3f}{s['tie_rate']:>8.3f}"
                   f"{s['accuracy_ties_half']:>15.3f}  {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]")
    if "vs_reference" in results:
        a = results["vs_reference"]
        out.append(f"Spearman with {a['reference']}: {stats.describe(a['spearman'])}")
    biases = results.get("judge_biases", {})
    for name, key in (("position", "follows_position"), ("position", "first"), ("position", "accuracy"),
                      ("length", "prefers_longer")):
        if name in biases:
            out.append(f"judge {name} bias, {key}: {stats.describe(biases[name][key])}")
    if "self_preference" in biases:
        out.append("judge self-preference: not measured (see results.json)")
    return "\n".join(out)
