"""Rollouts: completions sampled through `rewardlab.sampling`'s decoding loop as padded tensors, and
their scoring under the sampling transform.

Tensors: prompts [B, P] left-padded; completions [B, T] right-padded after EOS (T = max_new_tokens);
`mask` [B, T] is 1 on real completion tokens (up to and including EOS). Position t of a completion is
predicted by the logits at P - 1 + t.

A rollout can also keep what its decoding loop computed on the way (`rollout(..., record_site=SITE)`):
the processed log-probs [B, T, V] at each completion position and SITE's activation [B, T, d] at the
positions that predict them. PPO takes its old log-probs and value-head inputs from these instead of
running the policy over the sampled sequences a second time.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from rewardlab.sampling import StepState, gather_logprobs, processed_log_softmax, sample_tokens
from rewardlab.sites import capture


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """One batch of sampled completions (completion_ids/mask [B, T]); with `logp_all` [B, T, V] (float32,
    the sampling policy's processed log-probs as its decoding loop computed them) and `site_acts` [B, T, d]
    (the recorded site's activation at the positions that predict the completion tokens) when the
    rollout recorded them, else None. After the loop stops (every row done), `logp_all` is uniform and
    `site_acts` 0: those positions are padding in every row."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor
    logp_all: torch.Tensor | None = None
    site_acts: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.mask], 1)


def rollout(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
            temperature: float, top_k: int, top_p: float, eos_id: int | list[int] | None, pad_id: int,
            generator: torch.Generator, record_site: str | None = None) -> Rollout:
    """Sample completions [B, max_new_tokens] from left-padded prompts [B, P] with `sample_tokens`.

    A row stops after EOS (or any of a list of stop ids); later positions hold `pad_id` with mask 0.
    `record_site`: also keep each step's processed log-probs and that site's activation (`Rollout`).
    """
    B, device = prompt_ids.shape[0], prompt_ids.device
    kept: dict[str, torch.Tensor] = {}
    with capture(model, record_site) if record_site else nullcontext({}) as acts:
        def record(logits: torch.Tensor, state: StepState) -> torch.Tensor:
            site = acts[record_site][:, -1]
            if not kept:  # the loop's first step: now the widths are known
                vocab = logits.shape[-1]
                kept["logp_all"] = torch.full((B, max_new_tokens, vocab), -math.log(vocab), device=device)
                kept["site_acts"] = torch.zeros((B, max_new_tokens, site.shape[-1]), dtype=site.dtype, device=device)
            kept["logp_all"][:, state.step] = processed_log_softmax(logits, temperature, top_k, top_p)
            kept["site_acts"][:, state.step] = site
            return logits

        decoded = sample_tokens(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id, pad_id=pad_id,
                                generator=generator, logits_fn=record if record_site else None)
    T = decoded.tokens.shape[1]
    completion = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)
    completion[:, :T] = decoded.tokens
    mask[:, :T] = decoded.mask
    return Rollout(prompt_ids, prompt_mask.long(), completion, mask, kept.get("logp_all"), kept.get("site_acts"))


def completion_logprobs_from_logits(logits: torch.Tensor, completion_ids: torch.Tensor, prompt_len: int | None, *,
                                    temperature: float, top_k: int = 0, top_p: float = 1.0
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens [B, T] and full log-probs [B, T, V] under the sampling
    transform, from the logits [B, P + T, V] of left-padded prompts of P tokens + completions, or,
    with `prompt_len` None, from the logits [B, T, V] at the positions P - 1 ... P - 2 + T only.

    Non-finite token log-probs (only pads can be outside the support) are returned as 0. Score the
    reference with top_k=0, top_p=1 (the temperature only): it is the base model's whole distribution
    (top-k/top-p would give it a support of its own, and every KL to it would be infinite).
    """
    T = completion_ids.shape[1]
    if prompt_len is not None:
        logits = logits[:, prompt_len - 1:prompt_len - 1 + T]
    logp_all = processed_log_softmax(logits, temperature, top_k, top_p)
    return gather_logprobs(logp_all, completion_ids), logp_all


def completion_texts(tokenizer, ro: Rollout) -> list[str]:
    """The text of each completion's real tokens, special tokens dropped, stripped."""
    return [tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True).strip()
            for ids, m in zip(ro.completion_ids, ro.mask)]
