"""Preference pairs: sample completions per prompt, score them, keep (best, worst) as (chosen, rejected).

Rows use the TRL / RewardBench layout: `prompt`, `chosen`, `rejected` (completions only, each starting
with the separator that joins it to the prompt; with the chat template on, the assistant's turn as
sampled), plus `chosen_reward` and `rejected_reward`.
A prompt whose best and worst completions score the same is dropped (a tie says nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewardlab.io import write_jsonl
from rewardlab.rewards import get_reward
from rewardlab.rl.config import PairsConfig
from rewardlab.rl.inputs import completion_length, load_policy_and_tokenizer, load_prompts
from rewardlab.sampling import generate
from rewardlab.text import join_prompt_completion, uses_chat_template


def completion_text(prompt: str, completion: str) -> str:
    """The completion with the separator that joins it to the prompt (so prompt + text is the full text)."""
    return join_prompt_completion(prompt, completion)[len(prompt):]


def make_preference_pairs(cfg: PairsConfig, out: str | Path) -> dict:
    """Write pairs to `out` (JSONL); returns {n_pairs, n_ties, mean_margin}."""
    cfg.validate()
    prompt_set = load_prompts(cfg.model, cfg.prompts)
    max_new_tokens = completion_length(cfg.model, cfg.max_new_tokens)
    reward = get_reward(cfg.reward)
    model, tokenizer = load_policy_and_tokenizer(cfg.model, cfg.chat_template)
    generator = torch.Generator().manual_seed(cfg.seed)
    picked = [prompt_set[i] for i in torch.randint(len(prompt_set), (cfg.n_prompts,), generator=generator).tolist()]
    repeated = [p for p in picked for _ in range(cfg.per_prompt)]
    samples = generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, generator=generator, batch_size=cfg.batch_size,
                       desc="sampling pairs")
    scores = reward([s.completion for s in samples], repeated)
    rows, ties = [], 0
    for i, prompt in enumerate(picked):
        group = list(zip(scores[i * cfg.per_prompt:(i + 1) * cfg.per_prompt],
                         [s.completion for s in samples[i * cfg.per_prompt:(i + 1) * cfg.per_prompt]]))
        best = max(group, key=lambda g: g[0])
        worst = min(group, key=lambda g: g[0])
        if best[0] == worst[0]:
            ties += 1
            continue
        joined = (lambda text: text) if uses_chat_template(tokenizer) else (lambda text: completion_text(prompt, text))
        rows.append({"prompt": prompt, "chosen": joined(best[1]), "rejected": joined(worst[1]),
                     "chosen_reward": best[0], "rejected_reward": worst[0]})
    write_jsonl(out, rows)
    margin = sum(r["chosen_reward"] - r["rejected_reward"] for r in rows) / max(len(rows), 1)
    return {"n_pairs": len(rows), "n_ties": ties, "mean_margin": margin}
