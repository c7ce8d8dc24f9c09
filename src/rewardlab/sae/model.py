"""Sparse autoencoders: ReLU+L1 (optionally tied, as in the seed), TopK and BatchTopK (the default).

Layout follows SAELens so export is a rename-free copy:
  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] (row j = feature j's unit-norm direction),
  b_dec [d_in].  pre = (x - b_dec) @ W_enc + b_enc;  x_hat = f @ W_dec + b_dec.
Encoding is one matmul plus a sparsifying nonlinearity; there is no Python loop over latents.

BatchTopK keeps the k * batch largest pre-activations of the whole batch while training
(Bussmann et al. 2024); at inference it is a JumpReLU with one threshold (the mean over training
batches of the smallest kept activation), which SAELens represents as architecture "jumprelu".
Training TopK/BatchTopK goes through `sparse_codes`/`decode_sparse`, with no dense [batch, d_sae] tensor in
the autograd graph: the encoder is one dense matmul without autograd (b_dec folded into the bias); the batch-level
selection finds its threshold on a strided sample first and runs the exact top-k only on the candidates above it;
the kept pre-activations are gathered with a sparse backward (`_GatherPre`: the encoder's gradient is a
sum over the kept (token, latent) pairs, sparsify's fused encoder), and the decoder is a fused gather-scale-sum
(embedding_bag) over the same pairs (`_DecodeSparse`). Both weight gradients are one embedding_bag each over the
pairs sorted by latent, sorted once per step (`Pairs`). Per step that leaves one [batch, d_in] x [d_in, d_sae]
matmul where the dense computation has five (encoder forward and weight gradient, decoder forward and both
gradients). On the CPU the step's two scans that torch runs slowly there, the candidates at or above a bound and the
stable sort of the pairs by latent, go through numpy (`indices_at_least`, `stable_argsort`): the same results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
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


class Pairs:
    """A batch's (token, latent) pairs: rows [nnz] (token index) and latent [nnz], in any order, with their order
    by latent, sorted once on first use and shared by every sparse backward over these pairs (the encoder's
    `_GatherPre` and the decoder's `_DecodeSparse`)."""

    def __init__(self, rows: torch.Tensor, latent: torch.Tensor, d_sae: int):
        self.rows, self.latent, self.d_sae = rows, latent, d_sae
        self._by_latent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def sums_by_latent(self, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """[d_sae, width]: row j = sum over latent j's pairs i of weight[i] * table[rows[i]], for table [n, width]
        and weight [nnz]: one embedding_bag over the pairs sorted by latent, the gradient of a dense
        [n, d_in] x [d_in, d_sae] product without the dense operands and without a scatter."""
        if self._by_latent is None:
            order = stable_argsort(self.latent, self.d_sae)
            counts = torch.bincount(self.latent, minlength=self.d_sae)
            self._by_latent = self.rows.index_select(0, order), order, counts.cumsum(0) - counts
        rows, order, starts = self._by_latent
        return F.embedding_bag(rows, table, starts, mode="sum", per_sample_weights=weight.index_select(0, order))


def stable_argsort(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """torch.argsort(keys, stable=True) of integer keys [m] in 0..n_keys-1. On the CPU it is numpy's radix sort of
    16-bit keys (two stable passes, low then high 16 bits, for n_keys > 2^16), which for the tens of thousands of
    pairs of an SAE step is several times faster than torch's CPU stable sort of int64; the same permutation."""
    if keys.device.type != "cpu" or n_keys > 2 ** 32:
        return torch.argsort(keys, stable=True)
    k = keys.numpy()
    if n_keys <= 2 ** 16:
        return torch.from_numpy(np.argsort(k.astype(np.uint16), kind="stable"))
    low = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    return torch.from_numpy(low[np.argsort((k[low] >> 16).astype(np.uint16), kind="stable")])


def indices_at_least(flat: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """The increasing indices i of flat [m] with flat[i] >= bound (a 0-d tensor): `(flat >= bound).nonzero()`, on
    the CPU numpy's flatnonzero of the same comparison (float32 against float32: the bound is exact as a Python
    float), about twice as fast as torch's CPU compare and nonzero on a step's [batch x d_sae] scores."""
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        return (flat >= bound).nonzero().squeeze(1)
    values = flat.detach().numpy()
    return torch.from_numpy(np.flatnonzero(values >= values.dtype.type(bound.item())))


@dataclass
class SparseCodes:
    """A batch's active (token, latent) pairs, grouped by token; `value` carries the gradient."""
    pairs: Pairs  # rows non-decreasing: grouped by token
    value: torch.Tensor  # [nnz] activation relu(pre[token, latent]) (0 where a candidate was cut)
    offsets: torch.Tensor  # [n_tokens] start of each token's entries in the pairs
    pre: torch.Tensor  # [n_tokens, d_sae] dense pre-activations, without gradient (AuxK ranks its dead columns)
    threshold: torch.Tensor  # scalar: the smallest kept selection value (BatchTopK's per-batch threshold)

    def fired(self) -> torch.Tensor:
        """[d_sae] bool: latents with a positive activation in the batch"""
        return torch.bincount(self.pairs.latent, weights=self.value.detach(), minlength=self.pre.shape[1]) > 0


class _GatherPre(torch.autograd.Function):
    """pre[row_i, latent_i] = x[row_i] . w_enc[:, latent_i] + bias[latent_i] for the pairs i, read from the
    already computed pre [n, d_sae] (no gradient), with a sparse backward (sparsify's fused encoder, for any
    pairs): grad w_enc[:, j] = sum over j's pairs of grad_i * x[row_i] (`Pairs.sums_by_latent`), so no dense
    [n, d_sae] gradient and no [d_in, n] x [n, d_sae] matmul exist."""

    @staticmethod
    def forward(ctx, x, w_enc, bias, pre, pairs):
        ctx.save_for_backward(x, w_enc)
        ctx.pairs = pairs
        return pre.reshape(-1).index_select(0, pairs.rows * pairs.d_sae + pairs.latent)

    @staticmethod
    def backward(ctx, grad):
        x, w_enc = ctx.saved_tensors
        pairs = ctx.pairs
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x).index_add_(0, pairs.rows, w_enc.T[pairs.latent] * grad.unsqueeze(1))
        if ctx.needs_input_grad[1]:
            grad_w = pairs.sums_by_latent(x, grad).T
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(pairs.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, pairs.latent, grad)
        return grad_x, grad_w, grad_bias, None, None


class _DecodeSparse(torch.autograd.Function):
    """out[t] = sum over token t's pairs i of value_i * w_dec[latent_i] (one embedding_bag over the pairs grouped by
    token, offsets [n]). Backward: the values' gradient is embedding_bag's own; the decoder's is one embedding_bag
    over the pairs sorted by latent (`Pairs.sums_by_latent`, the order the encoder's backward sorts for), instead
    of embedding_bag's sort-and-scatter backward of the weight."""

    @staticmethod
    def forward(ctx, value, w_dec, pairs, offsets):
        ctx.save_for_backward(value, w_dec, offsets)
        ctx.pairs = pairs
        return F.embedding_bag(pairs.latent, w_dec, offsets, mode="sum", per_sample_weights=value)

    @staticmethod
    def backward(ctx, grad):
        value, w_dec, offsets = ctx.saved_tensors
        grad_value = grad_w = None
        if ctx.needs_input_grad[0]:  # grad_value[i] = grad[rows[i]] . w_dec[latent[i]]: embedding_bag's own backward
            # (pairs grouped by token, so each pair's bag is its row), without re-running the forward
            grad_value = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad.contiguous(), w_dec, ctx.pairs.latent, offsets, ctx.pairs.rows, 0)  # mode 0: sum
        if ctx.needs_input_grad[1]:
            grad_w = ctx.pairs.sums_by_latent(grad, value.detach())
        return grad_value, grad_w, None, None


def nth_largest(values: torch.Tensor, n: int) -> torch.Tensor:
    """The n-th largest entry of values [m] (1 <= n <= m), as a 0-d tensor: the smallest of the n largest, or, when
    n > m / 2, the largest of the m - n + 1 smallest (the same value, ties included; the smaller selection is faster)."""
    m = values.numel()
    if 2 * n <= m:
        return values.topk(n, sorted=False).values.min()
    return values.topk(m - n + 1, largest=False, sorted=False).values.max()


def batch_top_indices(score: torch.Tensor, n_keep: int, sample_stride: int = 61) -> torch.Tensor:
    """Flat indices (increasing) of the n_keep largest entries of score [n, m]; ties at the cut are kept.

    Exact: a strided sample gives a lower bound s with at least n_keep entries >= s (checked; else
    the bound is dropped), so the exact selection runs on about 1.5 * n_keep candidates, not n * m. The
    stride is odd, so for the usual power-of-two widths m the sample reaches every column, not every 8th.
    """
    flat = score.reshape(-1)
    candidates = None
    n_sample = (flat.numel() + sample_stride - 1) // sample_stride
    want = (3 * n_keep) // (2 * sample_stride)
    if 0 < want < n_sample:
        candidates = indices_at_least(flat, nth_largest(flat[::sample_stride], want))
        if len(candidates) < n_keep:
            candidates = None
    if candidates is None:
        return indices_at_least(flat, nth_largest(flat, n_keep))
    values = flat.index_select(0, candidates)
    return candidates.masked_select(values >= nth_largest(values, n_keep))


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

    def encoder_bias(self) -> torch.Tensor:
        """[d_sae] b_enc - b_dec @ W_enc: pre = x @ W_enc + encoder_bias() equals pre_activations(x)"""
        return self.b_enc - self.b_dec @ self.encoder

    def gather_pre(self, x: torch.Tensor, pre: torch.Tensor, pairs: Pairs,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """[nnz] pre[pairs.rows, pairs.latent] with gradient to the encoder and both biases, read from pre
        [n, d_sae] (= x @ W_enc + encoder_bias(), computed without autograd) and backpropagated sparsely
        (`_GatherPre`)."""
        return _GatherPre.apply(x, self.encoder, self.encoder_bias() if bias is None else bias, pre, pairs)

    def sparse_codes(self, x: torch.Tensor, batch_cut=None) -> SparseCodes:
        """Training-time TopK/BatchTopK codes of x [n, d_in] (per token for topk, over the batch for batchtopk).

        pre = x @ W_enc + encoder_bias() is computed without autograd; selection runs on selection_values(pre);
        the kept values relu(pre) are gathered with a sparse backward (`_GatherPre`). batch_cut (batchtopk,
        optional): (score [n, d_sae], n_keep) -> (cut, n_total): the smallest kept selection value of a batch that
        x is only part of (several processes) and that batch's n_keep; BatchTopK then takes x's n_total largest
        entries (a fixed number, a superset of those at or above the cut) and zeroes the values below the cut.
        """
        n, k, d_sae = x.shape[0], self.cfg.k, self.cfg.d_sae
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = torch.addmm(bias.detach(), x, self.encoder.detach())
            score = self.selection_values(pre)
            keep = None
            if self.cfg.architecture == "topk":
                latent = score.topk(k, dim=-1, sorted=False).indices.reshape(-1)
                rows = torch.arange(n, device=x.device).repeat_interleave(k)
                offsets = torch.arange(0, n * k, k, device=x.device)
                threshold = torch.zeros((), device=x.device)
            else:
                if batch_cut is None:
                    flat = batch_top_indices(score, min(k * n, n * d_sae))
                    threshold = score.reshape(-1).index_select(0, flat).min().clamp_min(0)
                else:
                    cut, total = batch_cut(score, k * n)
                    flat = batch_top_indices(score, min(total, n * d_sae))
                    keep = score.reshape(-1).index_select(0, flat) >= cut
                    threshold = cut.clamp_min(0)
                rows = torch.div(flat, d_sae, rounding_mode="floor")
                latent = flat - rows * d_sae
                offsets = torch.searchsorted(flat, torch.arange(n, device=x.device) * d_sae)
        pairs = Pairs(rows, latent, d_sae)
        value = torch.relu(self.gather_pre(x, pre, pairs, bias))
        if keep is not None:
            value = value * keep
        return SparseCodes(pairs, value, offsets, pre, threshold)

    def decode_sparse(self, codes: SparseCodes, bias: bool = True) -> torch.Tensor:
        """x_hat [n, d_in] = b_dec (if bias) + sum over each token's kept pairs of value * W_dec[latent]."""
        out = _DecodeSparse.apply(codes.value, self.W_dec, codes.pairs, codes.offsets)
        return out + self.b_dec if bias else out

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
