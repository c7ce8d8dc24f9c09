"""Which token positions an SAE models: one rule for its training tokens, its held-out metrics
(FVU, L0, dead fraction) and every splice-in metric (CE loss and KL recovered).

A real (unpadded) position is left out as an attention sink when it is
  1. the first real position of its sequence: BOS, or the first token where the tokenizer adds no
     BOS (the sink forms there whatever the token is);
  2. a special token (`tokenizer.all_special_ids`: BOS, EOS, pad, chat-template markers);
  3. a norm outlier: its activation's L2 norm at the SAE's site exceeds `SINK_NORM_FACTOR` times the
     median norm over the positions rules 1-2 keep in the same set (the training tokens, the
     held-out tokens, or one batch of a splice-in metric).
SAELens and dictionary_learning remove BOS from training (`remove_bos`); an SAE never trained on a
sink reconstructs it badly, and a splice that replaces it too measures the sink, not the SAE. Rule 3
catches sinks away from position 0 (a model's secondary sinks, e.g. on a delimiter token); the factor
10 sits far above the spread of ordinary tokens and far below a sink's norm (docs/FINDINGS.md has
the ratios measured on SmolLM2).
"""

from __future__ import annotations

from typing import Sequence

import torch

SINK_NORM_FACTOR = 10.0


def keep_positions(norms: torch.Tensor, candidates: torch.Tensor,
                   factor: float | None = SINK_NORM_FACTOR) -> torch.Tensor:
    """The positions the SAE models: `candidates` (bool, any shape, rules 1-2 already applied) minus
    those whose activation norm `norms` (same shape) exceeds factor x their median (rule 3; None: off)."""
    keep = candidates.bool().clone()
    if factor is not None and keep.any():
        keep &= norms <= factor * norms[keep].float().median()
    return keep


def batch_positions(acts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    special_ids: Sequence[int] = (), region: torch.Tensor | None = None,
                    factor: float | None = SINK_NORM_FACTOR) -> torch.Tensor:
    """bool [batch, seq]: the modeled positions of a padded batch (right or left padding).

    acts [batch, seq, d] at the SAE's site; input_ids, attention_mask [batch, seq]; region: an optional
    bool [batch, seq] of positions considered at all (e.g. the completion tokens the SAE trained on).
    """
    real = attention_mask.bool()
    first = torch.zeros_like(real)
    first[torch.arange(len(real)), real.int().argmax(1)] = True  # the first real position of each row
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype,
                                                    device=input_ids.device))
    candidates = real & ~first & ~special
    if region is not None:
        candidates &= region.to(candidates.device).bool()
    return keep_positions(acts.float().norm(dim=-1), candidates, factor)


def token_positions(acts: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor | None = None,
                    special_ids: Sequence[int] = (), factor: float | None = SINK_NORM_FACTOR) -> torch.Tensor:
    """bool [n]: the modeled tokens of a flat token set, acts [n, d] with each token's position in its
    (right-padded) sequence `positions` [n] (0 = first) and optionally its id `token_ids` [n]."""
    candidates = positions != 0
    if token_ids is not None and len(special_ids):
        candidates &= ~torch.isin(token_ids, torch.as_tensor(list(special_ids), dtype=token_ids.dtype))
    return keep_positions(acts.float().norm(dim=-1), candidates, factor)
