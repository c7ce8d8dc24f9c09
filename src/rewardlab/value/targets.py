"""Monte Carlo value targets: the expected true reward of a prefix under a model, and its two parts.

For a prefix h (the prompt, or the prompt plus the first t completion tokens) and a model M:

    V_M(h)  = E[reward(completion) | the completion starts with h's t tokens], the rest sampled from M
              with the generation settings (temperature, top-k, top-p) and the same total budget of
              `max_new_tokens` completion tokens; estimated by the mean over K sampled continuations,
              with its standard error std(ddof=1) / sqrt(K)
    R(h)    = reward of the completion words already written (0 for the prompt alone, for a reward
              that scores nothing as 0)
    F_M(h)  = V_M(h) - R(h), the expected future part

Rewards score the completion text only (prefix completion tokens + continuation, decoded with special
tokens skipped), as the rest of rewardlab does. A prefix with no budget left has V = R exactly (se 0).

Prefixes come from prompt/completion records (`build_prefixes`) at positions named as in
`rewardlab.acts`: `last_prompt`, or a completion offset k >= 0 (the prefix ends at completion token
k). A prefix ends exactly where `acts.collect_activations` reads that position of its record (special
tokens skipped the same way), so the activation there has seen exactly the prefix. Records whose
completion is too short for an offset give no prefix there; prefixes with identical token ids are
kept once (the first record's).

Continuations are sampled by `sampling.sample_tokens` (the KV-cached loop), `batch_size` rows at a
time, prefixes grouped by the budget they have left; one CPU generator seeded with `seed` is drawn
in a fixed order, so the same prefixes, settings and seed give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rewardlab.acts import parse_position
from rewardlab.config import chat_template_field
from rewardlab.errors import InputError
from rewardlab.rewards import Reward
from rewardlab.sampling import sample_tokens
from rewardlab.text import encode, left_pad, pad_token_id, prompt_id


@dataclass
class TargetsConfig:
    k: int = 16  # continuations sampled per prefix
    positions: list[str | int] = field(default_factory=lambda: ["last_prompt", 0, 2, 5, 10])  # prefix ends:
    # last_prompt, or completion offsets k >= 0 (the prefix ends at completion token k)
    reward: str = "utility"  # true reward spec (see `rewardlab reward score`)
    max_new_tokens: int = 32  # completion budget, written tokens included (the world's generation length)
    temperature: float = 1.0  # sampling temperature of the continuations
    top_k: int = 0  # top-k of the continuations (0 = off)
    top_p: float = 1.0  # top-p of the continuations (1 = off)
    batch_size: int = 512  # continuation rows per decoding batch
    seed: int = 0  # seed of the continuation sampler
    chat_template: str = chat_template_field()
    threads: int = 1  # torch CPU threads of the command (1 avoids OpenMP spin contention on shared cores;
    # 0 = torch's choice)

    def validate(self) -> None:
        if self.k < 2:
            raise InputError(f"k must be at least 2 (the standard error needs two samples), got {self.k}",
                             fix="e.g. --k 16")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError("max_new_tokens and batch_size must be at least 1")
        for p in self.positions:
            p = parse_position(p)
            if p != "last_prompt" and not (isinstance(p, int) and p >= 0):
                raise InputError(f"position {p!r} is not a prefix end", f"positions {self.positions}",
                                 "use last_prompt or completion offsets k >= 0")


@dataclass(frozen=True)
class Prefix:
    """One prefix: `ids` [prompt tokens + n_written completion tokens] of record `record`."""

    record: int
    prompt_id: str
    position: str | int
    ids: tuple[int, ...]
    prompt_len: int
    prompt: str = ""               # the record's prompt text (what prompt-aware rewards score against)

    @property
    def n_written(self) -> int:
        return len(self.ids) - self.prompt_len


def build_prefixes(tokenizer, records: Sequence[dict], positions: Sequence[str | int]) -> list[Prefix]:
    """The distinct prefixes of `records` at `positions` (see the module docstring), record by record."""
    positions = [parse_position(p) for p in positions]
    for i, r in enumerate(records):
        if "prompt" not in r or "completion" not in r:
            raise InputError("record lacks prompt or completion", f"record {i}")
    encoded = encode(tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    seen, out = set(), []
    for i, (r, e) in enumerate(zip(records, encoded)):
        prompt_real = [j for j in range(e.prompt_len) if e.ids[j] not in special]
        completion = [j for j in range(e.prompt_len, len(e.ids)) if e.ids[j] not in special]
        for p in positions:
            if p == "last_prompt":
                end = prompt_real[-1] if prompt_real else e.prompt_len - 1
            elif p < len(completion):
                end = completion[p]
            else:
                continue
            ids = tuple(e.ids[:end + 1])
            if ids not in seen:
                seen.add(ids)
                out.append(Prefix(i, prompt_id(r["prompt"]), p, ids, min(e.prompt_len, len(ids)), r["prompt"]))
    if not out:
        raise InputError("no prefix at these positions: every completion is too short",
                         f"positions {list(positions)}", "use smaller offsets or last_prompt")
    return out


@dataclass
class ValueEstimate:
    """V_M(h): the mean true reward of `k` continuations, its standard error, and their rewards."""

    mean: float
    se: float
    k: int
    rewards: list[float]


def _written_texts(tokenizer, prefixes: Sequence[Prefix]) -> list[str]:
    return [tokenizer.decode(list(p.ids[p.prompt_len:]), skip_special_tokens=True) for p in prefixes]


def realized_rewards(tokenizer, prefixes: Sequence[Prefix], reward: Reward) -> list[float]:
    """R(h): the reward of each prefix's written completion text."""
    return reward(_written_texts(tokenizer, prefixes), [p.prompt for p in prefixes])


def _continue(model, tokenizer, rows: Sequence[Prefix], budget: int, cfg: TargetsConfig,
              generator: torch.Generator) -> list[str]:
    """Completion texts (written tokens + one sampled continuation of at most `budget` tokens) per row."""
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    input_ids, mask, _ = left_pad([p.ids for p in rows], pad, device)
    decoded = sample_tokens(model, input_ids, mask, max_new_tokens=budget, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tokenizer.eos_token_id, pad_id=pad,
                            generator=generator)
    tokens, lengths = decoded.tokens.tolist(), decoded.mask.sum(1).tolist()
    return [tokenizer.decode(list(p.ids[p.prompt_len:]) + tokens[j][:n], skip_special_tokens=True)
            for j, (p, n) in enumerate(zip(rows, lengths))]


@torch.no_grad()
def monte_carlo_values(model, tokenizer, prefixes: Sequence[Prefix], reward: Reward, cfg: TargetsConfig,
                       desc: str | None = None) -> list[ValueEstimate]:
    """V_M(h) for each prefix (order kept): `cfg.k` continuations from `model`, scored by `reward`
    (`desc` labels a progress bar over continuation rows on stderr)."""
    cfg.validate()
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    rewards: list[list[float]] = [[] for _ in prefixes]
    by_budget: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_budget.setdefault(cfg.max_new_tokens - p.n_written, []).append(i)
    total = sum(len(v) for b, v in by_budget.items() if b > 0) * cfg.k
    try:
        with tqdm(total=total, desc=desc, unit="row", leave=False, disable=desc is None) as bar:
            for budget in sorted(by_budget):
                if budget <= 0:  # nothing left to write: every continuation is the prefix itself
                    done = by_budget[budget]
                    for i, r in zip(done, realized_rewards(tokenizer, [prefixes[i] for i in done], reward)):
                        rewards[i] = [r] * cfg.k
                    continue
                rows = [i for i in by_budget[budget] for _ in range(cfg.k)]
                for start in range(0, len(rows), cfg.batch_size):
                    chunk = rows[start:start + cfg.batch_size]
                    texts = _continue(model, tokenizer, [prefixes[i] for i in chunk], budget, cfg, generator)
                    for i, r in zip(chunk, reward(texts, [prefixes[i].prompt for i in chunk])):
                        rewards[i].append(r)
                    bar.update(len(chunk))
    finally:
        model.train(was_training)
    return [ValueEstimate(r[0], 0.0, len(r), r) if len(set(r)) == 1 else
            ValueEstimate(float(np.mean(r)), float(np.std(r, ddof=1) / np.sqrt(len(r))), len(r), r) for r in rewards]


def target_rows(tokenizer, prefixes: Sequence[Prefix], realized: Sequence[float],
                values: dict[str, Sequence[ValueEstimate]]) -> list[dict]:
    """One JSON row per prefix: where it comes from, its written text and ids, R, and per model name
    `value_NAME`, `value_se_NAME`, `future_NAME` (= value - realized)."""
    written = _written_texts(tokenizer, prefixes)
    rows = []
    for j, (p, r) in enumerate(zip(prefixes, realized)):
        row = {"record": p.record, "prompt_id": p.prompt_id, "position": p.position, "n_written": p.n_written,
               "written": written[j], "prefix_ids": list(p.ids), "realized": r}
        for name, estimates in values.items():
            e = estimates[j]
            row.update({f"value_{name}": e.mean, f"value_se_{name}": e.se, f"future_{name}": e.mean - r, "k": e.k})
        rows.append(row)
    return rows


def compute_targets(models: dict, tokenizer, records: Sequence[dict], reward: Reward, cfg: TargetsConfig,
                    progress: bool = True) -> list[dict]:
    """`target_rows` for the prefixes of `records`, with V, its se and F under each named model
    (e.g. {"post": policy, "base": base}, sharing `tokenizer`), each sampled with generator seed `cfg.seed`."""
    cfg.validate()
    prefixes = build_prefixes(tokenizer, records, cfg.positions)
    realized = realized_rewards(tokenizer, prefixes, reward)
    values = {name: monte_carlo_values(model, tokenizer, prefixes, reward, cfg,
                                       desc=f"V_{name} ({len(prefixes)} prefixes x {cfg.k})" if progress else None)
              for name, model in models.items()}
    return target_rows(tokenizer, prefixes, realized, values)


def check_rows(tokenizer, records: Sequence[dict], rows: Sequence[dict]) -> list:
    """The distinct positions of target `rows`, after checking that the rows are exactly the prefixes
    `build_prefixes` cuts from `records` at those positions (so activations read from the records
    at a row's position have seen exactly its prefix)."""
    if not rows:
        raise InputError("the targets file has no rows", fix="write it with `rewardlab value targets`")
    positions = list(dict.fromkeys(parse_position(r["position"]) for r in rows))
    prefixes = build_prefixes(tokenizer, records, positions)
    want = [(p.record, p.position, list(p.ids)) for p in prefixes]
    have = [(r["record"], parse_position(r["position"]), r["prefix_ids"]) for r in rows]
    if want != have:
        raise InputError("the targets do not match the prefixes of these records and tokenizer",
                         fix="pass the records file and the models the targets were written from")
    return positions
