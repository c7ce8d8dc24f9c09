"""Completion-token log-probabilities: the one implementation behind implicit reward, per-token KL
and the DPO-policy audit.

Prompts and completions are tokenized by `rewardlab.text.encode` (TRL's convention). Sequences
are right-padded with an attention mask: a causal model never lets a real token see a pad, so a
batched result equals the one-at-a-time result.

Log-softmax is taken in float32 whatever the model's dtype. Position t of a completion of n tokens
holds log p(y_t | x, y_<t).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from rewardlab.errors import InputError
from rewardlab.sampling import gather_logprobs, processed_log_softmax
from rewardlab.text import Encoded, encode, pad_token_id, right_padded


def completion_log_softmax(model, encoded: Sequence[Encoded], batch_size: int = 16,
                           pad_id: int = 0) -> Iterator[torch.Tensor]:
    """For each sequence, float32 log-softmax over the vocabulary at its completion positions.

    Yields one tensor of shape [n_completion, vocab] per sequence, in order.
    """
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(e.ids) for e in encoded), default=0)
    if limit is not None and longest > limit:
        raise InputError(f"a prompt + completion has {longest} tokens, the model takes at most {limit}",
                         fix="shorten the records")
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        input_ids, attention = right_padded(batch, pad_id)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, e in enumerate(batch):
            # logits at position p predict token p + 1
            yield processed_log_softmax(logits[row, e.prompt_len - 1:len(e.ids) - 1]).cpu()


def sequence_logprobs(model, encoded: Sequence[Encoded], batch_size: int = 16, pad_id: int = 0) -> list[torch.Tensor]:
    """log p(y_t | x, y_<t) for each completion token: one float32 tensor [n_completion] per sequence."""
    out = []
    for e, logp in zip(encoded, completion_log_softmax(model, encoded, batch_size, pad_id)):
        out.append(gather_logprobs(logp, torch.tensor(e.ids[e.prompt_len:], dtype=torch.long)))
    return out


def completion_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                        batch_size: int = 16) -> list[torch.Tensor]:
    """Per-token completion log-probs of `model`: one float32 tensor [n_completion] per record."""
    model.eval()
    return sequence_logprobs(model, encode(tokenizer, prompts, completions), batch_size,
                             pad_token_id(tokenizer))


REF_FREE = ("sum", "mean", "norm")


def reduce_logprobs(logp: torch.Tensor, how: str) -> float:
    """A reference-free sequence score from per-token log-probs, as RewardBench: sum, mean, or -L2 norm."""
    if how == "sum":
        return float(logp.sum())
    if how == "mean":
        return float(logp.mean()) if len(logp) else 0.0
    if how == "norm":
        return -float(logp.norm(p=2))
    raise InputError(f"unknown reference-free score {how!r}", fix=f"use one of: {', '.join(REF_FREE)}")
