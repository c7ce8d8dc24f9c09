"""Sparse autoencoders: ReLU+L1 (optionally tied, as in the seed), TopK and BatchTopK (the default).

Layout follows SAELens so export is a rename-free copy:
  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] (row j = feature j's unit-norm direction),
  b_dec [d_in].  pre = (x - b_dec) @ W_enc + b_enc;  x_hat = f @ W_dec + b_dec.
Encoding is one matmul plus a sparsifying nonlinearity; there is no Python loop over latents.

BatchTopK keeps the k * batch largest pre-activations of the whole batch while training
(Bussmann et al. 2024); at inference it is a JumpReLU with one threshold (the mean over training
batches of the smallest kept activation), which SAELens represents as architecture "jumprelu".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURES = ("relu", "topk", "batchtopk")


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "batchtopk"  # relu (L1) | topk | batchtopk
    k: int = 16  # active latents per token (topk, batchtopk: mean over the batch)
    l1_coefficient: float = 1e-3  # relu only; the seed's value
    tied: bool = False  # relu only: W_enc = W_dec.T, as in the seed's code
    hook_name: str | None = None  # TransformerLens site name the SAE reads, e.g. blocks.2.hook_resid_post

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.tied and self.architecture != "relu":
            raise ValueError("tied weights are only defined for the relu (seed) architecture")


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
        return (x - self.b_dec) @ self.encoder + self.b_enc

    def selection_values(self, pre: torch.Tensor) -> torch.Tensor:
        """What TopK/BatchTopK rank and the threshold compares: the pre-activations themselves."""
        return pre

    def activate(self, pre: torch.Tensor, batch_level: bool = False) -> torch.Tensor:
        """Sparse feature activations from pre-activations [n, d_sae].

        batch_level: BatchTopK's training rule (top k*n over the batch); otherwise its threshold rule.
        """
        arch, k = self.cfg.architecture, self.cfg.k
        if arch == "relu":
            return torch.relu(pre)
        score = self.selection_values(pre)
        if arch == "topk":
            idx = score.topk(k, dim=-1).indices
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(pre.gather(-1, idx)))
        if batch_level:
            flat = pre.reshape(-1)
            idx = score.reshape(-1).topk(min(k * pre.shape[0], flat.numel()), sorted=False).indices
            return torch.zeros_like(flat).scatter_(-1, idx, torch.relu(flat[idx])).reshape(pre.shape)
        return pre * (score > self.threshold)

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
