"""Implicit reward: r(x, y) = beta * sum_t [log pi_post(y_t | x, y_<t) - log pi_base(y_t | x, y_<t)].

For a DPO policy with its reference as `base`, beta * this is exactly the reward DPO optimizes
(TRL logs it as `rewards/chosen`). Summed over completion tokens only; the per-token mean and,
on request, the per-token vector come with it. Each output row records the models, the reference
and the chat template used (the tokenizer's setting, `rewardlab.text`), so a score file says what it
was computed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rewardlab import stats
from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.stats import Estimate
from rewardlab.text import encode, pad_token_id, uses_chat_template


@dataclass
class ScoreConfig:
    beta: float = 1.0  # scale of the log-ratio; 1.0 = nats; pass the DPO beta (0.1) for TRL's reward scale
    batch_size: int = 16  # records per forward pass
    per_token: bool = False  # also write the per-token log-ratio vector


def implicit_rewards(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                     cfg: ScoreConfig = ScoreConfig()) -> list[dict]:
    """One dict per record: implicit_reward (beta * sum), implicit_reward_mean (beta * mean),
    logp_post, logp_base (sums, nats), n_tokens, and the per-token log-ratio if `cfg.per_token`."""
    encoded = encode(tokenizer, prompts, completions)
    pad = pad_token_id(tokenizer)
    base.eval(), post.eval()
    lp_post = sequence_logprobs(post, encoded, cfg.batch_size, pad)
    lp_base = sequence_logprobs(base, encoded, cfg.batch_size, pad)
    rows = []
    for a, b in zip(lp_post, lp_base):
        ratio = (a - b).double()
        n = len(ratio)
        row = {
            "implicit_reward": cfg.beta * float(ratio.sum()),
            "implicit_reward_mean": cfg.beta * float(ratio.mean()) if n else 0.0,
            "logp_post": float(a.double().sum()),
            "logp_base": float(b.double().sum()),
            "n_tokens": n,
        }
        if cfg.per_token:
            row["log_ratio"] = ratio.tolist()
        rows.append(row)
    return rows


def implicit_reward_records(base, post, tokenizer, records: list[dict], cfg: ScoreConfig = ScoreConfig(),
                            reward=None, rm=None, base_name: str = "base", post_name: str = "post") -> list[dict]:
    """Copies of prompt/completion `records` with the implicit reward, the true `reward` (a
    `rewardlab.rewards.Reward`, scored on the completion) and the reward-model score `rm` if given."""
    prompts = [r["prompt"] for r in records]
    completions = [r["completion"] for r in records]
    scores = implicit_rewards(base, post, tokenizer, prompts, completions, cfg)
    true = reward(completions) if reward is not None else None
    rm_scores = rm(completions) if rm is not None else None
    out = []
    for i, (record, score) in enumerate(zip(records, scores)):
        row = {**record, **score, "beta": cfg.beta, "model": post_name, "ref_model": base_name,
               "chat_template": tokenizer.chat_template if uses_chat_template(tokenizer) else None}
        if true is not None:
            row["reward"] = true[i]
            row["reward_spec"] = reward.name
        if rm_scores is not None:
            row["rm_score"] = rm_scores[i]
            row["rm"] = rm.name
        out.append(row)
    return out


def implicit_reward_vs_true(base_model, policy, tokenizer, samples: list[dict], batch_size: int) -> dict[str, Estimate]:
    """How the implicit reward of `policy` (reference `base_model`) ranks the samples like their `reward`:
    Spearman and Pearson of the summed log-ratio, Spearman of its per-token mean; CIs resample prompts."""
    rows = implicit_rewards(base_model, policy, tokenizer, [s["prompt"] for s in samples],
                            [s["completion"] for s in samples], ScoreConfig(batch_size=batch_size))
    implicit = [r["implicit_reward"] for r in rows]
    true = [s["reward"] for s in samples]
    groups = [s["prompt"] for s in samples]
    return {"spearman_true": stats.spearman(implicit, true, groups=groups),
            "pearson_true": stats.pearson(implicit, true, groups=groups),
            "spearman_true_mean_per_token": stats.spearman([r["implicit_reward_mean"] for r in rows], true,
                                                           groups=groups)}

