"""The difference dictionary (the 2023 SAE paper's proposed next experiment) beside its closest anchors.

All three read paired activations of the same tokens at one site: x_b (base model) and x_p (post
model), each [n_tokens, d].

    difference dictionary  a BatchTopK dictionary whose encoder reads x_b and whose decoder predicts
                           x_p: x_hat_p = f(x_b) W_dec + b_dec, f = the BatchTopK code of x_b
                           (`train_sae(x_b, ..., targets=x_p)`). It is a `SparseAutoencoder` object, so it
                           exports as a SAELens folder (its cfg.json metadata names the target).
    difference SAE         the diffing-toolkit's SAE on activation differences: an ordinary BatchTopK
                           SAE on x_p - x_b; its prediction of post is x_b + decode(encode(x_p - x_b)).
    crosscoder             `sae.crosscoder`: one code of [x_b, x_p], a decoder per model; its
                           prediction of post is the post half of its reconstruction.

The difference SAE and the crosscoder read the post model's activations: they reconstruct x_p; only the
difference dictionary (and the baselines below) predict it from x_b alone. Baselines of that prediction:
`identity` (x_hat_p = x_b) and `affine` (x_hat_p = x_b A + c, least squares on the train tokens: the
best dense linear predictor, which a sparse dictionary of width d_sae cannot beat in-sample when d is
small).

FVU of a prediction on held-out tokens = sum_t |x_p,t - x_hat_p,t|^2 / sum_t |x_p,t - mean(x_p)|^2, the
mean taken over the held-out tokens; its CI resamples whole prompts (the mean held fixed), and
differences between two predictions are paired (the same resampled prompts).

Latent read-out. Each dictionary gives every latent j a difference vector v_j [d], what the latent
adds to post minus base: the difference SAE's decoder row; the crosscoder's d_post_j - d_base_j; the
difference dictionary's W_dec[j] - B[j], where B [d_sae, d] is the base read-out of its codes, fitted
by least squares on the train tokens (x_b ~ f B + b: the base activation each code stands for, so
x_hat_p - x_hat_b = f (W_dec - B) + const, the crosscoder's decomposition with the base decoder fitted
after training). A latent's importance is mean_t f_tj |v_j| on held-out tokens; its read-out is its top
held-out tokens and v_j through the post model's final norm and unembedding (`sites.logit_lens`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.sae.crosscoder import Crosscoder
from rewardlab.sae.export import save_sae
from rewardlab.sae.metrics import reconstruction_metrics
from rewardlab.sae.model import SAEConfig, SparseAutoencoder
from rewardlab.sae.train import SAEJob, TrainConfig, train_saes
from rewardlab.sites import logit_lens

DICTIONARIES = ("diffdict", "diff_sae", "crosscoder")
PREDICTIONS = ("identity", "affine", *DICTIONARIES)
RIDGE = 1e-6  # relative ridge of the least-squares fits (affine baseline, base read-out): dead latents


@dataclass
class Dictionaries:
    """The three dictionaries of one site, trained on the same paired train tokens."""

    diffdict: SparseAutoencoder     # encoder reads x_b, decoder predicts x_p
    diff_sae: SparseAutoencoder     # SAE of x_p - x_b
    crosscoder: Crosscoder | None   # of [x_b, x_p] (None: not trained)
    base_readout: torch.Tensor      # [d_sae + 1, d] the difference dictionary's codes -> x_b (last row: bias)
    affine: torch.Tensor            # [d + 1, d] the affine baseline x_b -> x_p (last row: bias)


def least_squares(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W [m + 1, d] minimizing |[x, 1] W - y|^2 (+ RIDGE * mean diag of the normal matrix * |W|^2, so
    never-firing columns get 0). x [n, m], y [n, d], float64 inside."""
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    gram = xa.T @ xa
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    return torch.linalg.solve(gram, xa.T @ y.double()).float()


def _apply(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]


def train_dictionaries(x_b: torch.Tensor, x_p: torch.Tensor, d_sae: int, k: int, site: str | None,
                       train: TrainConfig = TrainConfig(), crosscoder: bool = True) -> Dictionaries:
    """Train the difference dictionary, the difference SAE and (optionally) the crosscoder on paired train
    tokens x_b, x_p [n, d] (each with the seed of `train`), and fit the affine baseline and base read-out."""
    if x_b.shape != x_p.shape:
        raise InputError(f"base activations {tuple(x_b.shape)} and post activations {tuple(x_p.shape)} differ "
                         "in shape", site, "read the same site of two models of the same width on the same tokens")
    if torch.equal(x_b, x_p):
        raise InputError("the post activations equal the base activations at this site: there is no difference "
                         "to learn (the difference SAE would divide by a zero scale)", site,
                         "diff two different models (identity predicts post exactly here: FVU 0)")
    d = x_b.shape[1]
    cfg = SAEConfig(d_in=d, d_sae=d_sae, architecture="batchtopk", k=k, hook_name=site)
    jobs = {"diffdict": SAEJob(x_b, cfg, train, targets=x_p), "diff_sae": SAEJob(x_p - x_b, cfg, train)}
    if crosscoder:
        jobs["crosscoder"] = SAEJob(torch.cat([x_b, x_p], 1), replace(cfg, d_in=2 * d), train, Crosscoder)
    trained = {name: result.sae for name, result in train_saes(jobs).items()}
    dd = trained["diffdict"]
    return Dictionaries(dd, trained["diff_sae"], trained.get("crosscoder"), least_squares(dd.encode(x_b.float()), x_b),
                        least_squares(x_b, x_p))


def predict_post(dicts: Dictionaries, x_b: torch.Tensor, x_p: torch.Tensor) -> dict[str, torch.Tensor]:
    """{prediction: x_hat_p [n, d]} for every name of PREDICTIONS that applies (crosscoder if trained).
    identity, affine and diffdict read x_b only; diff_sae and crosscoder also read x_p."""
    x_b, x_p = x_b.float(), x_p.float()
    out = {"identity": x_b, "affine": _apply(dicts.affine, x_b), "diffdict": dicts.diffdict(x_b),
           "diff_sae": x_b + dicts.diff_sae(x_p - x_b)}
    if dicts.crosscoder is not None:
        out["crosscoder"] = dicts.crosscoder(torch.cat([x_b, x_p], 1))[:, x_b.shape[1]:]
    return out


def fvu_estimates(predictions: dict[str, torch.Tensor], x_p: torch.Tensor, groups: Sequence,
                  seed: int = 0, n_boot: int = stats.N_BOOT) -> dict:
    """{"fvu": {name: Estimate dict}, "diffdict_minus": {name: paired Estimate dict of FVU(diffdict) -
    FVU(name)}} on held-out tokens x_p [n, d], with the bootstrap over `groups` (one prompt id per token)."""
    x_p = x_p.float()
    total = ((x_p - x_p.mean(0)) ** 2).sum(1).double().numpy()
    err = {name: ((x_p - y) ** 2).sum(1).double().numpy() for name, y in predictions.items()}

    def fvu(e, t):
        return e.sum() / t.sum()
    kw = dict(groups=list(groups), seed=seed, n_boot=n_boot)
    out = {"fvu": {n: stats.bootstrap(fvu, e, total, **kw).to_dict() for n, e in err.items()}, "diffdict_minus": {}}
    for name in (n for n in err if n != "diffdict" and "diffdict" in err):
        out["diffdict_minus"][name] = stats.bootstrap(lambda a, b, t: (a.sum() - b.sum()) / t.sum(),
                                                      err["diffdict"], err[name], total, **kw).to_dict()
    return out


def difference_vectors(dicts: Dictionaries) -> dict[str, torch.Tensor]:
    """{dictionary: v [d_sae, d]}: what each latent adds to post minus base (module docstring)."""
    out = {"diffdict": dicts.diffdict.W_dec - dicts.base_readout[:-1], "diff_sae": dicts.diff_sae.W_dec.clone()}
    if dicts.crosscoder is not None:
        d = dicts.crosscoder.cfg.d_in // 2
        out["crosscoder"] = dicts.crosscoder.W_dec[:, d:] - dicts.crosscoder.W_dec[:, :d]
    return out


@torch.no_grad()
def codes(dicts: Dictionaries, x_b: torch.Tensor, x_p: torch.Tensor) -> dict[str, torch.Tensor]:
    """{dictionary: latent activations [n, d_sae]}: of x_b, of x_p - x_b, of [x_b, x_p]."""
    x_b, x_p = x_b.float(), x_p.float()
    out = {"diffdict": dicts.diffdict.encode(x_b), "diff_sae": dicts.diff_sae.encode(x_p - x_b)}
    if dicts.crosscoder is not None:
        out["crosscoder"] = dicts.crosscoder.encode(torch.cat([x_b, x_p], 1))
    return out


@torch.no_grad()
def read_latents(dicts: Dictionaries, x_b: torch.Tensor, x_p: torch.Tensor, post_model, tokens: Sequence[str],
                 n_latents: int = 10, n_tokens: int = 10) -> dict[str, list[dict]]:
    """Per dictionary, its `n_latents` most important latents on (x_b, x_p) (importance = mean f_j |v_j|,
    firing = fraction of tokens where f_j > 0) with the `n_tokens` tokens their difference vector promotes
    and demotes through `post_model`'s unembedding (`tokens`: the vocabulary's token strings)."""
    vectors, acts = difference_vectors(dicts), codes(dicts, x_b, x_p)
    device = next(post_model.parameters()).device
    out = {}
    for name, v in vectors.items():
        f = acts[name]
        importance = f.mean(0) * v.norm(dim=1)
        top = torch.argsort(importance, descending=True)[:n_latents]
        lens = logit_lens(post_model, v[top].to(device)).cpu()[:, :len(tokens)]
        out[name] = [{"latent": int(j), "importance": float(importance[j]), "firing": float((f[:, j] > 0).float().mean()),
                      "promoted": [tokens[i] for i in torch.argsort(row, descending=True)[:n_tokens].tolist()],
                      "demoted": [tokens[i] for i in torch.argsort(row)[:n_tokens].tolist()]}
                     for j, row in zip(top.tolist(), lens)]
    return out


@torch.no_grad()
def mean_differences(dicts: Dictionaries, x_b: torch.Tensor, x_p: torch.Tensor, units: torch.Tensor,
                     n_replicates: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """{dictionary: [1 + n_replicates, d]}: the mean over tokens of sum_j f_tj v_j (what the dictionary says
    post adds to base), on all tokens, then on `n_replicates` bootstrap resamples of the units (e.g. the
    samples) the tokens belong to (`units` [n] int ids 0..U-1); the dictionaries stay fixed."""
    vectors, acts = difference_vectors(dicts), codes(dicts, x_b, x_p)
    n_units = int(units.max()) + 1
    counts = torch.bincount(units, minlength=n_units).double()
    draws = torch.as_tensor(rng.integers(0, n_units, (n_replicates, n_units)))
    weights = torch.cat([torch.ones(1, n_units, dtype=torch.float64),
                         torch.zeros(n_replicates, n_units, dtype=torch.float64).scatter_add_(
                             1, draws, torch.ones(draws.shape, dtype=torch.float64))])  # [R + 1, U] draw counts
    out = {}
    for name, v in vectors.items():
        per_unit = torch.zeros(n_units, v.shape[1], dtype=torch.float64).index_add_(0, units, (acts[name] @ v).double())
        out[name] = ((weights @ per_unit) / (weights @ counts).unsqueeze(1)).float()
    return out


def save_dictionaries(dicts: Dictionaries, out: Path, base_name: str, post_name: str) -> None:
    """SAELens folders out/diffdict, out/diff_sae (and out/crosscoder: its weights as an SAE of [x_b, x_p])."""
    save_sae(dicts.diffdict, out / "diffdict", {"model_name": base_name, "target_model_name": post_name,
                                                "target": "the target model's activations at hook_name, same tokens"})
    save_sae(dicts.diff_sae, out / "diff_sae", {"model_name": f"{post_name} - {base_name}",
                                                "input": "post minus base activations at hook_name"})
    if dicts.crosscoder is not None:
        save_sae(dicts.crosscoder, out / "crosscoder", {"model_name": f"[{base_name}, {post_name}]",
                                                        "input": "base and post activations concatenated"})


def evaluate(dicts: Dictionaries, x_b: torch.Tensor, x_p: torch.Tensor, groups: Sequence, seed: int = 0) -> dict:
    """Held-out figures of one site: FVU of every prediction of x_p with CIs (`fvu_estimates`) and the
    dictionaries' own metrics (L0, dead fraction; the difference SAE's FVU of the differences)."""
    res = fvu_estimates(predict_post(dicts, x_b, x_p), x_p, groups, seed)
    res["n_tokens"], res["n_groups"] = len(x_b), len(set(groups))
    res["metrics"] = {"diffdict": reconstruction_metrics(dicts.diffdict, x_b, targets=x_p),
                      "diff_sae": reconstruction_metrics(dicts.diff_sae, x_p.float() - x_b.float())}
    if dicts.crosscoder is not None:
        res["metrics"]["crosscoder"] = reconstruction_metrics(dicts.crosscoder, torch.cat([x_b, x_p], 1))
    return res
