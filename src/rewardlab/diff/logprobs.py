"""Completion-token log-probabilities: the one implementation behind implicit reward, per-token KL
and the DPO-policy audit.

Prompts and completions are tokenized by `rewardlab.text.encode` (TRL's convention). Sequences
are right-padded with an attention mask: a causal model never lets a real token see a pad, so a
batched result equals the one-at-a-time result (up to floating-point rounding). Logits are computed
only at the positions that predict a completion token: the vocabulary projection and log-softmax
are the costliest per-position work for a large vocabulary, and prompt and pad positions need neither.

Log-softmax is taken in float32 whatever the model's dtype. Position t of a completion of n tokens
holds log p(y_t | x, y_<t).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from rewardlab.errors import InputError
from rewardlab.sampling import gather_logprobs, kept_logits, processed_log_softmax
from rewardlab.text import Encoded, encode, pad_token_id, right_padded


def _check_fits(model, encoded: Sequence[Encoded]) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(e.ids) for e in encoded), default=0)
    if limit is not None and longest > limit:
        raise InputError(f"a prompt + completion has {longest} tokens, the model takes at most {limit}",
                         fix="shorten the records")


def _completion_logits(model, batch: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """One right-padded forward of `batch`: float logits [N, V] at the positions that predict a
    completion token (row after row; position p predicts token p + 1), and each row's count n_i
    (sum N). Logits are computed at these positions only (`kept_logits`), not at prompt or pad positions."""
    device = next(model.parameters()).device
    input_ids, attention = right_padded(batch, pad_id)
    keep = torch.zeros_like(attention, dtype=torch.bool)
    for row, e in enumerate(batch):
        keep[row, e.prompt_len - 1:len(e.ids) - 1] = True
    with torch.no_grad():
        logits = kept_logits(model, keep.to(device), input_ids=input_ids.to(device),
                             attention_mask=attention.to(device))
    return logits, [len(e.ids) - e.prompt_len for e in batch]


def completion_log_softmax(model, encoded: Sequence[Encoded], batch_size: int = 16,
                           pad_id: int = 0) -> Iterator[torch.Tensor]:
    """For each sequence, float32 log-softmax over the vocabulary at its completion positions.

    Yields one tensor of shape [n_completion, vocab] per sequence, in order (batches in the given
    order, so only one batch of full distributions is held at a time).
    """
    _check_fits(model, encoded)
    for start in range(0, len(encoded), batch_size):
        logits, counts = _completion_logits(model, encoded[start:start + batch_size], pad_id)
        yield from processed_log_softmax(logits).cpu().split(counts)


def sequence_logprobs(model, encoded: Sequence[Encoded], batch_size: int = 16, pad_id: int = 0) -> list[torch.Tensor]:
    """log p(y_t | x, y_<t) for each completion token: one float32 tensor [n_completion] per sequence.

    Sequences are batched by length (longest first) to cut padding; the result is in the given order."""
    _check_fits(model, encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    out: list[torch.Tensor] = [torch.zeros(0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [encoded[i] for i in rows]
        logits, counts = _completion_logits(model, batch, pad_id)
        targets = torch.tensor([t for e in batch for t in e.ids[e.prompt_len:]], dtype=torch.long,
                               device=logits.device)
        for i, logp in zip(rows, gather_logprobs(processed_log_softmax(logits), targets).cpu().split(counts)):
            out[i] = logp
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
