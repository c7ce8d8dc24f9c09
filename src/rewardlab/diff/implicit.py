"""Implicit reward: r(x, y) = beta * sum_t [log pi_post(y_t | x, y_<t) - log pi_base(y_t | x, y_<t)].

For a DPO policy with its reference as `base`, beta * this is exactly the reward DPO optimizes
(TRL logs it as `rewards/chosen`). Summed over completion tokens only; the per-token mean and,
on request, the per-token vector come with it. Each output row records the models, the reference
and the chat template used (the tokenizer's setting, `rewardlab.text`), so a score file says what it
was computed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from rewardlab import stats
from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.stats import Estimate
from rewardlab.errors import InputError
from rewardlab.text import Encoded, encode, pad_token_id, stop_ids, uses_chat_template


@dataclass
class ScoreConfig:
    beta: float = 1.0  # scale of the log-ratio; 1.0 = nats; pass the DPO beta (0.1) for TRL's reward scale
    batch_size: int = 16  # records per forward pass
    per_token: bool = False  # also write the per-token log-ratio vector
    append_eos: Literal["never", "always", "finished"] = "never"  # score the token that ends a completion
    # (EOS, or the chat template's end of turn) after it: never (the text as given), always (TRL's DPO
    # convention for plain-text completions), finished (where a record's `finished` says the sampler
    # stopped there, as `sample divergent` writes it)


def implicit_rewards(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                     cfg: ScoreConfig = ScoreConfig(), finished: Sequence[bool] | None = None) -> list[dict]:
    """One dict per record: implicit_reward (beta * sum), implicit_reward_mean (beta * mean),
    logp_post, logp_base (sums, nats), n_tokens (the end token included when appended), and the
    per-token log-ratio if `cfg.per_token`. `finished`: per record, for `cfg.append_eos == "finished"`."""
    encoded = encode(tokenizer, prompts, completions)
    if cfg.append_eos != "never":
        if cfg.append_eos == "finished" and (finished is None or len(finished) != len(encoded)):
            raise InputError("append_eos finished needs each record's `finished` flag", fix="score records "
                             "written by the sampler, or use append_eos never or always")
        end = stop_ids(tokenizer)[-1:]
        flags = [True] * len(encoded) if cfg.append_eos == "always" else finished
        encoded = [Encoded(e.ids + end, e.prompt_len) if flag else e for e, flag in zip(encoded, flags)]
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
    finished = None
    if cfg.append_eos == "finished":
        missing = next((i for i, r in enumerate(records) if not isinstance(r.get("finished"), bool)), None)
        if missing is not None:
            raise InputError("append_eos finished: the record has no true/false `finished` field",
                             f"record {missing}", "use --append-eos never or always, or records from the sampler")
        finished = [r["finished"] for r in records]
    scores = implicit_rewards(base, post, tokenizer, prompts, completions, cfg, finished)
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

