"""Per-token KL(post || base) on completion tokens, and diff mining.

At each completion position t (context x, y_<t), the exact KL over the whole vocabulary:

    KL_t = sum_v p_post(v) * (log p_post(v) - log p_base(v))        (nats)

Reported: the positions where the models disagree most (with their token and context), and the
tokens promoted and demoted on average: mean over all positions of log p_post(v) - log p_base(v).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rewardlab import stats
from rewardlab.diff.logprobs import completion_log_softmax
from rewardlab.errors import InputError
from rewardlab.text import encode, pad_token_id, token_texts


@dataclass
class KLConfig:
    batch_size: int = 16  # records per forward pass
    top_positions: int = 20  # positions of highest KL listed with their contexts
    top_tokens: int = 20  # tokens listed as most promoted and most demoted
    context_tokens: int = 8  # tokens of context shown before a listed position


def _token(tokenizer, tok_id: int) -> str:
    return token_texts(tokenizer, [tok_id])[0]


def token_kl(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str],
             cfg: KLConfig = KLConfig()) -> tuple[dict, list[dict]]:
    """(summary, per-record rows). Each row: `kl` (per completion token), `kl_sum`, `n_tokens`."""
    encoded = encode(tokenizer, prompts, completions)
    if not any(e.n_completion for e in encoded):
        raise InputError(f"all {len(encoded)} completions are empty: there are no tokens to compare",
                         fix="give records whose `completion` has text")
    pad = pad_token_id(tokenizer)
    base.eval(), post.eval()
    rows, positions = [], []
    diff_sum, n_positions = None, 0
    for i, (e, lp_post, lp_base) in enumerate(zip(encoded, completion_log_softmax(post, encoded, cfg.batch_size, pad),
                                                    completion_log_softmax(base, encoded, cfg.batch_size, pad))):
        diff = lp_post - lp_base  # [n, V]
        kl = (lp_post.exp() * diff).sum(-1).clamp_min(0.0)
        rows.append({"kl": kl.tolist(), "kl_sum": float(kl.double().sum()), "n_tokens": len(kl)})
        d = diff.double().sum(0)
        diff_sum = d if diff_sum is None else diff_sum + d
        n_positions += len(kl)
        for t in range(len(kl)):
            positions.append((float(kl[t]), i, t, e, int(lp_post[t].argmax()), int(lp_base[t].argmax())))
    positions.sort(key=lambda p: -p[0])
    top = []
    for kl_t, i, t, e, post_top, base_top in positions[:cfg.top_positions]:
        at = e.prompt_len + t
        top.append({"record": i, "position": t, "kl": kl_t,
                    "context": tokenizer.decode(e.ids[max(0, at - cfg.context_tokens):at]),
                    "token": _token(tokenizer, e.ids[at]),
                    "post_top_token": _token(tokenizer, post_top), "base_top_token": _token(tokenizer, base_top)})
    mean_diff = diff_sum / max(n_positions, 1)
    order = torch.argsort(mean_diff, descending=True)
    k = min(cfg.top_tokens, len(order))
    promoted = [{"token": _token(tokenizer, v), "mean_log_ratio": float(mean_diff[v])} for v in order[:k]]
    demoted = [{"token": _token(tokenizer, v), "mean_log_ratio": float(mean_diff[v])} for v in order.flip(0)[:k]]
    per_token = [x for r in rows for x in r["kl"]]
    record_of = [i for i, r in enumerate(rows) for _ in r["kl"]]
    summary = {
        "kl_per_token": stats.mean(per_token, groups=record_of).to_dict(),
        "kl_per_sequence": stats.mean([r["kl_sum"] for r in rows]).to_dict(),
        "n_records": len(rows), "n_tokens": n_positions,
        "top_positions": top, "promoted": promoted, "demoted": demoted,
    }
    return summary, rows
