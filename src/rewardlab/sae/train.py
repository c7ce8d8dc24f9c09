"""Train a sparse autoencoder on activations (a tensor [n_tokens, d_in] or an iterable of batches).

Loss = MSE(x, x_hat) summed over d_in and averaged over tokens, plus
  - relu: l1_coefficient * sum_j |f_j| (decoder rows are unit norm, so this is the SAELens L1);
  - topk / batchtopk: aux_k_coefficient * AuxK loss (Gao et al. 2024): the latents that have not
    fired for `dead_window` tokens reconstruct the residual x - x_hat with their own top-`aux_k`
    pre-activations, normalized by |x - x_hat|^2. This gives dead latents a gradient toward the
    directions the live ones miss; it is off while nothing is dead. Unlike Gao et al. the
    pre-activations are used before the ReLU, so a latent whose pre-activation is negative on every
    token (the usual way to die) still gets a gradient.
Inputs are scaled by one constant so that mean |x|^2 = d_in (SAELens "expected_average_only_in");
the scale is folded back into the biases at the end, so the returned SAE acts on raw activations.
Decoder rows are renormalized after every step. Learning rate decays linearly to 0 over the last
20% of steps. Deterministic given `seed` on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from rewardlab.sae.model import SAEConfig, SparseAutoencoder


@dataclass
class TrainConfig:
    batch_size: int = 1024  # tokens per step
    n_tokens: int = 2_000_000  # training tokens (epochs over a tensor repeat as needed)
    lr: float = 1e-3  # the seed's value; Adam
    aux_k: int | None = None  # AuxK latents per token; default d_in // 2
    aux_k_coefficient: float = 1 / 32
    dead_window: int = 200_000  # tokens without firing after which a latent counts as dead
    seed: int = 0
    log_every: int = 100


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    history: list[dict] = field(default_factory=list)  # step, tokens, mse, aux, l0, n_dead
    tokens_per_second: float = 0.0


def _batches(acts: torch.Tensor | Iterable[torch.Tensor], cfg: TrainConfig,
             gen: torch.Generator) -> Iterator[torch.Tensor]:
    if not isinstance(acts, torch.Tensor):
        yield from acts
        return
    n_steps = max(1, cfg.n_tokens // cfg.batch_size)
    step = 0
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(acts) - cfg.batch_size + 1, cfg.batch_size):
            yield acts[order[start:start + cfg.batch_size]]
            step += 1
            if step >= n_steps:
                return
        if len(acts) < cfg.batch_size:
            raise ValueError(f"{len(acts)} tokens are fewer than one batch of {cfg.batch_size}")


def _aux_k_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor,
                dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """Normalized MSE of the dead latents' top-aux_k reconstruction of the residual [n, d_in]."""
    dead_pre = pre[:, dead]
    k = min(aux_k, int(dead.sum()))
    vals, idx = dead_pre.topk(k, dim=-1)
    f = torch.zeros_like(dead_pre).scatter_(-1, idx, vals)
    residual_hat = f @ sae.W_dec[dead]
    return ((residual_hat - residual) ** 2).sum(-1).mean() / (residual ** 2).sum(-1).mean().clamp_min(1e-12)


def activation_scale(sample: torch.Tensor) -> float:
    """The constant c with mean |c x|^2 = d_in over a sample [n, d_in]."""
    return float((sample.shape[1] / (sample.float() ** 2).sum(-1).mean()).sqrt())


def train_sae(acts: torch.Tensor | Iterable[torch.Tensor], sae_cfg: SAEConfig,
              cfg: TrainConfig = TrainConfig(), model_cls: type = SparseAutoencoder) -> TrainResult:
    """Train an SAE (or a subclass such as the crosscoder); returns it, acting on raw activations,
    with its training history."""
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = model_cls(sae_cfg, generator=gen)
    batches = _batches(acts, cfg, gen)
    first = next(batches).float()
    scale = activation_scale(first)
    with torch.no_grad():
        sae.b_dec.copy_(first.mean(0) * scale)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    n_steps = max(1, cfg.n_tokens // cfg.batch_size) if isinstance(acts, torch.Tensor) else None
    aux_k = cfg.aux_k or max(1, sae_cfg.d_in // 2)
    since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    thresholds: list[float] = []
    history: list[dict] = []
    tokens, t0 = 0, time.perf_counter()

    def step_on(x: torch.Tensor, step: int) -> None:
        nonlocal tokens
        x = x.float() * scale
        pre = sae.pre_activations(x)
        f = sae.activate(pre, batch_level=True)
        x_hat = sae.decode(f)
        mse = ((x_hat - x) ** 2).sum(-1).mean()
        fired = (f > 0).any(0)
        since_fired.add_(len(x)).masked_fill_(fired, 0)
        dead = since_fired >= cfg.dead_window
        if sae_cfg.architecture == "relu":
            aux = sae_cfg.l1_coefficient * f.abs().sum(-1).mean()
        elif dead.any():
            aux = cfg.aux_k_coefficient * _aux_k_loss(sae, pre, (x - x_hat).detach(), dead, aux_k)
        else:
            aux = torch.zeros(())
        if sae_cfg.architecture == "batchtopk":
            with torch.no_grad():
                kept = sae.selection_values(pre)[f > 0]
            thresholds.append(float(kept.min()) if len(kept) else 0.0)
        if n_steps is not None and step >= 0.8 * n_steps:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (n_steps - step) / (0.2 * n_steps)
        opt.zero_grad(set_to_none=True)
        (mse + aux).backward()
        opt.step()
        sae.normalize_decoder()
        tokens += len(x)
        if step % cfg.log_every == 0:
            history.append({"step": step, "tokens": tokens, "mse": float(mse.detach()), "aux": float(aux.detach()),
                            "l0": float((f > 0).sum(-1).float().mean()), "n_dead": int(dead.sum())})

    step_on(first, 0)
    for step, x in enumerate(batches, start=1):
        step_on(x, step)
    seconds = time.perf_counter() - t0
    if thresholds:
        # the inference threshold: mean smallest kept activation over the last half of training
        with torch.no_grad():
            sae.threshold.fill_(sum(thresholds[len(thresholds) // 2:]) / len(thresholds[len(thresholds) // 2:]))
    sae.rescale_input(scale)
    sae.requires_grad_(False)
    return TrainResult(sae, history, tokens / seconds)
