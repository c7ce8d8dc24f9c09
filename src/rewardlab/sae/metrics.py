"""SAE quality on held-out tokens: sparsity, reconstruction, and the model's loss with the SAE spliced in.

- L0: mean number of active latents per token.
- FVU: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the whole set (SAELens' explained variance is
  1 - FVU; the old per-token average of ratios is not used).
- dead fraction: latents that never fire on the set; dense fraction: latents firing on more than
  `dense_threshold` of its tokens.
- CE loss recovered: (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_sae splices the SAE's
  reconstruction in at the SAE's site and CE_zero replaces that site by zeros (zero ablation);
  KL is the mean per-token KL(clean || spliced) in nats, also reported for zero ablation, and KL
  recovered = 1 - KL_sae / KL_zero. Both splices replace only the positions the SAE models (real,
  not a sink, inside the optional region: `rewardlab.sae.sinks`), and only the next-token
  predictions made at those positions count (each followed by a real token); the sinks keep their
  clean activations. An exact reconstruction gives 1, zero output 0.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from rewardlab import sites
from rewardlab.sae.model import SparseAutoencoder
from rewardlab.sae.sinks import SINK_NORM_FACTOR, batch_positions


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, acts: torch.Tensor, batch_size: int = 1024,
                           dense_threshold: float = 0.1, targets: torch.Tensor | None = None) -> dict:
    """acts [n_tokens, d_in] held-out activations (of the tokens the SAE models, `sae.sinks`) -> dict
    of scalar metrics (and n_tokens). targets [n_tokens, d_in]: what the dictionary predicts for each
    token (default: acts, an autoencoder); FVU and MSE then measure x_hat against them. batch_size: tokens
    encoded at once; each batch holds a few dense [batch_size, d_sae] tensors (4 bytes each: 9 MiB apiece at
    1024 x 2304), so memory, not speed, sets it."""
    acts = acts.float()
    targets = acts if targets is None else targets.float()
    mean = targets.mean(0)
    resid_ss, total_ss, active, fired = 0.0, 0.0, 0.0, torch.zeros(sae.cfg.d_sae)
    for start in range(0, len(acts), batch_size):
        x, y = acts[start:start + batch_size], targets[start:start + batch_size]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        resid_ss += float(((y - x_hat) ** 2).sum())
        total_ss += float(((y - mean) ** 2).sum())
        on = f > 0
        active += float(on.sum())
        fired += on.sum(0).float()
    density = fired / len(acts)
    return {"n_tokens": len(acts), "l0": active / len(acts), "fvu": resid_ss / total_ss,
            "mse": resid_ss / len(acts), "dead_fraction": float((density == 0).float().mean()),
            "dense_fraction": float((density > dense_threshold).float().mean())}


def _next_token_losses(logits: torch.Tensor, input_ids: torch.Tensor,
                       predicts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prediction CE [m] and log-probs [m, vocab] at the positions `predicts` [batch, seq - 1]
    (the prediction at position t is of token t + 1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)[predicts]
    ce = -logp.gather(-1, input_ids[:, 1:][predicts].unsqueeze(-1)).squeeze(-1)
    return ce, logp


@torch.no_grad()
def spliced_metrics(model: torch.nn.Module, sae: SparseAutoencoder, batches: Iterable[dict],
                    site: str | None = None, special_ids: Sequence[int] = (),
                    sink_factor: float | None = SINK_NORM_FACTOR) -> dict:
    """CE loss and KL with the SAE spliced in at `site` (default sae.cfg.hook_name) vs zero ablation,
    on the positions the SAE models (`sae.sinks.batch_positions`).

    batches: dicts with input_ids and attention_mask [batch, seq] (right or left padded) and
    optionally `positions`, bool [batch, seq]: the region the SAE models (e.g. the completion tokens
    it trained on; default every real position). special_ids: the tokenizer's special token ids.
    """
    site = site or sae.cfg.hook_name
    if site is None:
        raise ValueError("the SAE has no hook_name; pass site=")
    device = next(model.parameters()).device
    sae = sae.to(device)
    edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "sae": lambda a: sae(a.float()).to(a.dtype), "zero": torch.zeros_like}
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n = n_positions = 0
    for batch in batches:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with sites.capture(model, site) as acts:
            logits = model(input_ids=ids, attention_mask=mask).logits
        keep = batch_positions(acts[site], ids, mask, special_ids, batch.get("positions"), sink_factor)
        predicts = keep[:, :-1] & mask[:, 1:].bool()  # a modeled position whose next token is real
        ce_clean, logp_clean = _next_token_losses(logits, ids, predicts)
        sums["clean"] += float(ce_clean.sum())
        for name, edit in edits.items():
            def spliced(a: torch.Tensor, edit=edit) -> torch.Tensor:
                return torch.where(keep.unsqueeze(-1), edit(a), a)
            with sites.intervene(model, site, spliced):
                ce, logp = _next_token_losses(model(input_ids=ids, attention_mask=mask).logits, ids, predicts)
            sums[name] += float(ce.sum())
            sums[f"kl_{name}"] += float((logp_clean.exp() * (logp_clean - logp)).sum())
        n += len(ce_clean)
        n_positions += int(keep.sum())
    ce = {k: v / n for k, v in sums.items()}
    return {"n_predictions": n, "n_spliced_positions": n_positions, "ce_clean": ce["clean"], "ce_sae": ce["sae"],
            "ce_zero": ce["zero"], "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
            "kl_sae": ce["kl_sae"], "kl_zero": ce["kl_zero"],
            "kl_recovered": (ce["kl_zero"] - ce["kl_sae"]) / ce["kl_zero"]}
