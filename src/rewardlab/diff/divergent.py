"""Divergent sampling: sample from an amplified difference between a post-trained and a base model.

At each step, with both models stepped on the same tokens, each under its own KV cache:

    logits = logits_post + alpha * (logits_post - logits_base)

restricted to plausible tokens, p_post(v) >= tau * max_v p_post(v) (the contrastive-decoding
mask), then temperature and top-p (`rewardlab.sampling.process_logits`). alpha = 0 samples the
post model (under the mask), alpha > 0 amplifies what post-training changed, alpha < 0 moves
toward the base model. Every sampled token is logged with both models' own log-probabilities
(full softmax, temperature 1), so each sample's implicit reward sum_t [log pi_post - log pi_base]
comes for free. Each alpha starts from the same generator seed (common random numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.sampling import StepState, generate, model_step
from rewardlab.text import token_texts


@dataclass
class DivergentConfig:
    alphas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # amplification: sample from post + alpha * (post - base)
    plausibility: float = 0.1  # tau: keep tokens with p_post >= tau * max p_post (0 = off)
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass (1.0: off)
    max_new_tokens: int = 32  # tokens generated per completion
    num_samples: int = 1  # samples per prompt and alpha
    batch_size: int = 64  # prompts per generation batch
    seed: int = 0  # sampling seed


def divergent_logits(post_logits: torch.Tensor, base_logits: torch.Tensor, alpha: float,
                     plausibility: float) -> torch.Tensor:
    """(B, V) combined logits post + alpha * (post - base); implausible tokens set to -inf."""
    combined = post_logits + alpha * (post_logits - base_logits)
    if plausibility > 0:
        logp_post = post_logits.log_softmax(-1)
        floor = logp_post.max(-1, keepdim=True).values + torch.log(torch.tensor(plausibility))
        combined = combined.masked_fill(logp_post < floor, float("-inf"))
    return combined


def _sample_batch(base, post, tokenizer, prompts: list[str], alpha: float, cfg: DivergentConfig,
                  generator: torch.Generator) -> list[dict]:
    step_logps: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (post, base) log-probs of the fed token

    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last step's full distributions

    def amplify(post_logits: torch.Tensor, state: StepState) -> torch.Tensor:
        base_logits = model_step(base, state, key="base")
        if pending:  # the tokens fed now were sampled from the previous step's distributions
            lp_post, lp_base = pending.pop()
            fed = state.input_ids[:, :1]
            step_logps.append((lp_post.gather(1, fed)[:, 0], lp_base.gather(1, fed)[:, 0]))
        pending.append((post_logits.log_softmax(-1), base_logits.log_softmax(-1)))
        return divergent_logits(post_logits, base_logits, alpha, cfg.plausibility)

    samples = generate(post, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_p=cfg.top_p, generator=generator, batch_size=len(prompts), logits_fn=amplify,
                       return_logprobs=True)
    lp_post_last, lp_base_last = pending.pop()
    last = len(step_logps)
    rows = []
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        lp_post = [float(step_logps[t][0][i]) for t in range(min(n, last))]
        lp_base = [float(step_logps[t][1][i]) for t in range(min(n, last))]
        if n > last:  # the row's final token came from the final step
            lp_post.append(float(lp_post_last[i, s.completion_ids[last]]))
            lp_base.append(float(lp_base_last[i, s.completion_ids[last]]))
        rows.append({
            "prompt": s.prompt, "completion": s.completion, "alpha": alpha,
            "implicit_reward": float(sum(lp_post) - sum(lp_base)),
            "n_tokens": n, "finished": s.finished,
            "tokens": token_texts(tokenizer, s.completion_ids), "token_ids": s.completion_ids,
            "logp_post": lp_post, "logp_base": lp_base, "logp_sample": s.logprobs,
        })
    return rows


def sample_divergent(base, post, tokenizer, prompts: Sequence[str], cfg: DivergentConfig = DivergentConfig()
                     ) -> list[dict]:
    """One row per (alpha, prompt, sample): prompt, completion, alpha, implicit_reward (nats), n_tokens,
    finished, tokens, token_ids, and per token logp_post, logp_base and logp_sample (the sampling
    distribution's). Deterministic for a fixed config."""
    if not 0 <= cfg.plausibility <= 1:
        raise InputError(f"plausibility must be in [0, 1], got {cfg.plausibility}")
    if not prompts:
        raise InputError("no prompts to sample from")
    repeated = [p for p in prompts for _ in range(cfg.num_samples)]
    base.eval(), post.eval()
    rows = []
    for alpha in cfg.alphas:
        generator = torch.Generator(device=next(post.parameters()).device).manual_seed(cfg.seed)
        for start in range(0, len(repeated), cfg.batch_size):
            batch = _sample_batch(base, post, tokenizer, repeated[start:start + cfg.batch_size], alpha, cfg, generator)
            for j, row in enumerate(batch):
                row["sample"] = (start + j) % cfg.num_samples
            rows += batch
    settings = {"plausibility": cfg.plausibility, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens}
    return [{**row, **settings} for row in rows]


def divergent_summary(rows: list[dict], alphas, reward, grammatical_rate=None) -> dict:
    """Per alpha: mean true reward (CI over prompts), grammatical rate (or, with no `grammatical_rate`
    checker, perplexity under the base model), mean implicit reward; and whether the reward CIs are
    disjoint and increasing in alpha."""
    reward_mean, fluency, implicit = [], [], []
    for alpha in alphas:
        sel = [r for r in rows if r["alpha"] == alpha]
        groups = [r["prompt"] for r in sel]
        reward_mean.append(stats.mean(reward([r["completion"] for r in sel]), groups=groups).to_dict())
        if grammatical_rate is not None:
            # the token strings keep the eos, so a finished review must be a complete document
            fluency.append(grammatical_rate([" ".join(r["tokens"]) for r in sel], [r["prompt"] for r in sel]))
        else:
            fluency.append(base_perplexity(sel))
        implicit.append(stats.mean([r["implicit_reward"] for r in sel], groups=groups).to_dict())
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    separated = all(reward_mean[a]["ci"][1] < reward_mean[b]["ci"][0] for a, b in zip(order, order[1:]))
    return {"alphas": list(alphas), "reward_mean": reward_mean,
            "grammatical_rate" if grammatical_rate is not None else "base_perplexity": fluency,
            "implicit_reward_mean": implicit, "reward_increases_with_alpha_ci_disjoint": separated}


def base_perplexity(rows: list[dict]) -> dict | None:
    """exp(mean over samples of the per-token negative log-likelihood under the base model), with the
    bootstrap CI (over prompts) of that mean mapped through exp; None when no sample has a token."""
    kept = [r for r in rows if r["logp_base"]]
    if not kept:
        return None
    nll = stats.mean([-sum(r["logp_base"]) / len(r["logp_base"]) for r in kept], groups=[r["prompt"] for r in kept])
    return {"value": math.exp(nll.value), "ci": [math.exp(c) for c in nll.ci], "n": nll.n,
            **({"n_groups": nll.n_groups} if nll.n_groups is not None else {})}
