"""Sparse autoencoders: ReLU+L1 (optionally tied, as in the seed), TopK and BatchTopK (the default).

Layout follows SAELens so export is a rename-free copy:
  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] (row j = feature j's unit-norm direction),
  b_dec [d_in].  pre = (x - b_dec) @ W_enc + b_enc;  x_hat = f @ W_dec + b_dec.
Encoding is one matmul plus a sparsifying nonlinearity; there is no Python loop over latents.

BatchTopK keeps the k * batch largest pre-activations of the whole batch while training
(Bussmann et al. 2024); at inference it is a JumpReLU with one threshold (the mean over training
batches of the smallest kept activation), which SAELens represents as architecture "jumprelu".
Training TopK/BatchTopK goes through `sparse_codes`/`decode_sparse`: the encoder is one dense matmul
(b_dec folded into the bias, so no [batch, d_in] matmul in the backward), the batch-level selection
finds its threshold on a strided sample first and runs the exact top-k only on the candidates above
it, and the decoder is a fused gather-scale-sum (embedding_bag) over the kept (token, latent) pairs,
so no dense [batch, d_sae] code is multiplied forward or backward (sparsify's sparse decoder, on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rewardlab.errors import InputError

ARCHITECTURES = ("relu", "topk", "batchtopk")


@dataclass
class SAEConfig:
    d_in: int  # input width (the site's d_model)
    d_sae: int  # dictionary size (latents)
    architecture: str = "batchtopk"  # relu (L1) | topk | batchtopk
    k: int = 16  # active latents per token (topk, batchtopk: mean over the batch)
    l1_coefficient: float = 1e-3  # L1 penalty coefficient (relu only; the 2023 SAE paper's value)
    tied: bool = False  # tied weights W_enc = W_dec.T (relu only, as in the 2023 SAE paper's code)
    hook_name: str | None = None  # TransformerLens site name the SAE reads, e.g. blocks.2.hook_resid_post

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.tied and self.architecture != "relu":
            raise InputError("tied weights are only defined for the relu (seed) architecture")
        if self.architecture != "relu" and not 1 <= self.k <= self.d_sae:
            raise InputError(f"k = {self.k} active latents do not fit a dictionary of {self.d_sae}",
                             fix=f"use k in 1..{self.d_sae} (16 is the default), or a wider dictionary")
        if self.l1_coefficient < 0:
            raise InputError(f"l1_coefficient must be at least 0, got {self.l1_coefficient}")


@dataclass
class SparseCodes:
    """A training batch's active latents, sorted by token; `value` and `pre` carry the gradient."""
    latent: torch.Tensor  # [nnz] latent index, grouped by token in increasing order
    value: torch.Tensor  # [nnz] activation relu(pre[token, latent])
    offsets: torch.Tensor  # [n_tokens] start of each token's entries in latent/value
    pre: torch.Tensor  # [n_tokens, d_sae] dense pre-activations (the AuxK loss reads the dead columns)
    threshold: torch.Tensor  # scalar: the smallest kept selection value (BatchTopK's per-batch threshold)

    def fired(self) -> torch.Tensor:
        """[d_sae] bool: latents with a positive activation in the batch"""
        return torch.bincount(self.latent, weights=self.value.detach(), minlength=self.pre.shape[1]) > 0


def batch_top_indices(score: torch.Tensor, n_keep: int, sample_stride: int = 8) -> torch.Tensor:
    """Flat indices (increasing) of the n_keep largest entries of score [n, m]; ties at the cut are kept.

    Exact: a strided sample gives a lower bound s with at least n_keep entries >= s (checked; else
    the bound is dropped), so the exact top-k runs on about 1.5 * n_keep candidates, not n * m.
    """
    flat = score.reshape(-1)
    candidates = None
    n_sample = (flat.numel() + sample_stride - 1) // sample_stride
    want = (3 * n_keep) // (2 * sample_stride)
    if 0 < want < n_sample:
        bound = flat[::sample_stride].topk(want, sorted=False).values.min()
        candidates = (flat >= bound).nonzero().squeeze(1)
        if len(candidates) < n_keep:
            candidates = None
    if candidates is None:
        return (flat >= flat.topk(n_keep, sorted=False).values.min()).nonzero().squeeze(1)
    values = flat[candidates]
    return candidates[values >= values.topk(n_keep, sorted=False).values.min()]


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = None if cfg.tied else nn.Parameter(w.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # BatchTopK's inference threshold on selection values (a scalar), set at the end of training.
        self.register_buffer("threshold", torch.zeros(()))

    @property
    def encoder(self) -> torch.Tensor:
        """[d_in, d_sae]"""
        return self.W_dec.T if self.cfg.tied else self.W_enc

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> pre-activations [..., d_sae]"""
        if x.shape[-1] != self.cfg.d_in:
            raise InputError(f"activations of width {x.shape[-1]} given to an SAE of width {self.cfg.d_in}",
                             self.cfg.hook_name or None, "use the SAE trained on this model's site")
        return (x - self.b_dec) @ self.encoder + self.b_enc

    def selection_values(self, pre: torch.Tensor) -> torch.Tensor:
        """What TopK/BatchTopK rank and the threshold compares: the pre-activations themselves."""
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Inference feature activations from pre-activations [n, d_sae] (dense).

        relu: ReLU; topk: the k largest per token (ReLU'd); batchtopk: its JumpReLU threshold rule.
        BatchTopK's training rule (top k * n over the batch) lives in `sparse_codes`.
        """
        arch, k = self.cfg.architecture, self.cfg.k
        if arch == "relu":
            return torch.relu(pre)
        score = self.selection_values(pre)
        if arch == "topk":
            idx = score.topk(k, dim=-1).indices
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(pre.gather(-1, idx)))
        return pre * (score > self.threshold)

    def sparse_codes(self, x: torch.Tensor, batch_cut=None) -> SparseCodes:
        """Training-time TopK/BatchTopK codes of x [n, d_in] (per token for topk, over the batch for batchtopk).

        pre = x @ W_enc + (b_enc - b_dec @ W_enc), equal to pre_activations(x); selection runs without
        autograd on selection_values(pre); the kept values relu(pre) are gathered with their gradient.
        batch_cut (batchtopk, optional): (score [n, d_sae], n_keep) -> the smallest kept selection value of a
        batch that x is only part of (several processes); BatchTopK then keeps the entries of x at or above it.
        """
        n, k, d_sae = x.shape[0], self.cfg.k, self.cfg.d_sae
        pre = x @ self.encoder + (self.b_enc - self.b_dec @ self.encoder)
        with torch.no_grad():
            score = self.selection_values(pre)
            if self.cfg.architecture == "topk":
                latent = score.topk(k, dim=-1, sorted=False).indices.reshape(-1)
                flat = torch.arange(n, device=x.device).repeat_interleave(k) * d_sae + latent
                offsets = torch.arange(0, n * k, k, device=x.device)
                threshold = torch.zeros((), device=x.device)
            else:
                if batch_cut is None:
                    flat = batch_top_indices(score, min(k * n, n * d_sae))
                    threshold = score.reshape(-1)[flat].min().clamp_min(0)
                else:
                    cut = batch_cut(score, k * n)
                    flat = (score.reshape(-1) >= cut).nonzero().squeeze(1)
                    threshold = cut.clamp_min(0)
                latent = flat % d_sae
                offsets = torch.searchsorted(flat, torch.arange(n, device=x.device) * d_sae)
        value = torch.relu(pre.reshape(-1)[flat])
        return SparseCodes(latent, value, offsets, pre, threshold)

    def decode_sparse(self, codes: SparseCodes) -> torch.Tensor:
        """x_hat [n, d_in] = b_dec + sum over each token's kept pairs of value * W_dec[latent]."""
        return F.embedding_bag(codes.latent, self.W_dec, codes.offsets, mode="sum",
                               per_sample_weights=codes.value) + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference encoding, identical to the exported SAELens SAE. x [..., d_in] -> [..., d_sae]"""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back to unit norm (done after every optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def rescale_input(self, scale: float) -> None:
        """Make an SAE trained on `x * scale` act on raw `x`: same features, activations / scale."""
        self.b_dec.div_(scale)
        self.b_enc.div_(scale)
        self.threshold.div_(scale)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    @classmethod
    def from_config_dict(cls, d: dict) -> "SparseAutoencoder":
        return cls(SAEConfig(**d))
