"""BatchTopK crosscoder for model diffing (Lindsey et al. 2024; Minder, Dumas et al. 2025).

One encoder reads both models' activations at one site, concatenated: x = [x_base, x_post] [n, 2d];
each latent j has a decoder row [d_base_j, d_post_j] [2d]. Decoder norms are free (not normalized):
they say in which model a latent lives. BatchTopK ranks f_j * (|d_base_j| + |d_post_j|), i.e. the
latent's contribution, summed over models; no L1 term, which is what avoids the L1 artifacts
(complete shrinkage, latent decoupling). Trained with `train_sae(..., model_cls=Crosscoder)`.

Relative decoder norm r_j = |d_base_j| / (|d_base_j| + |d_post_j|): post-only r < 0.1, base-only
r > 0.9, shared |r - 0.5| < 0.1, otherwise "other".

Latent Scaling (Minder et al.): for latent j with post decoder direction d = d_post_j, fit
beta = argmin_b sum_i |b f_ij d - y_i|^2 = sum_i f_ij <d, y_i> / (|d|^2 sum_i f_ij^2), for targets
  reconstruction  y_i = x_hat_m,i - f_ij d_m_j   (what the other latents rebuild without j)
  error           y_i = x_m,i - x_hat_m,i + f_ij d_m_j   (what j's own slot has to explain)
in each model m. nu_r = beta_r(base) / beta_r(post), nu_eps = beta_eps(base) / beta_eps(post).
A genuinely post-only latent has both near 0; a latent whose direction the base model also carries
(in its error: complete shrinkage, or in other latents: decoupling) has a large ratio. A post-only
latent with nu_r or nu_eps above `scaling_threshold` (default 0.5: the base model carries at least
half as much of it as the post model) is flagged as a false post-only latent.
"""

from __future__ import annotations

import torch

from rewardlab.sae.model import SAEConfig, SparseAutoencoder

POST_ONLY, BASE_ONLY, SHARED_TOLERANCE = 0.1, 0.9, 0.1


class Crosscoder(SparseAutoencoder):
    """d_in = 2 * d_model; the first half of each decoder row is the base model's, the second the post's."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        if cfg.architecture != "batchtopk" or cfg.d_in % 2:
            raise ValueError("a crosscoder is batchtopk over an even d_in (2 * d_model)")
        super().__init__(cfg, generator)

    def selection_values(self, pre: torch.Tensor) -> torch.Tensor:
        base, post = self.decoder_norms()
        return pre * (base + post)

    def normalize_decoder(self) -> None:
        """Decoder norms are the diagnostic, so they stay free."""

    def decoder_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(|d_base_j|, |d_post_j|), each [d_sae]"""
        d = self.cfg.d_in // 2
        return self.W_dec[:, :d].norm(dim=1), self.W_dec[:, d:].norm(dim=1)

    def relative_norms(self) -> torch.Tensor:
        """r_j = |d_base_j| / (|d_base_j| + |d_post_j|) [d_sae]"""
        base, post = self.decoder_norms()
        return base / (base + post).clamp_min(1e-12)


def classify(relative_norms: torch.Tensor) -> list[str]:
    """post_only | base_only | shared | other, per latent."""
    out = []
    for r in relative_norms.tolist():
        out.append("post_only" if r < POST_ONLY else "base_only" if r > BASE_ONLY
                   else "shared" if abs(r - 0.5) < SHARED_TOLERANCE else "other")
    return out


@torch.no_grad()
def latent_scaling(cc: Crosscoder, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Closed-form per-latent scales. acts [n, 2d] (base, post concatenated).

    Returns beta_{r,eps}_{base,post} and nu_r, nu_eps, each [d_sae] (nan for latents that never fire).
    """
    d = cc.cfg.d_in // 2
    dirs = {"base": cc.W_dec[:, :d], "post": cc.W_dec[:, d:]}
    direction = dirs["post"]
    sums = {f"{t}_{m}": torch.zeros(cc.cfg.d_sae, d) for t in ("r", "eps") for m in dirs}
    f_sq = torch.zeros(cc.cfg.d_sae)
    for start in range(0, len(acts), batch_size):
        x = acts[start:start + batch_size].float()
        f = cc.encode(x)
        x_hat = cc.decode(f)
        f_sq += (f ** 2).sum(0)
        for m, sl in (("base", slice(0, d)), ("post", slice(d, 2 * d))):
            sums[f"r_{m}"] += f.T @ x_hat[:, sl]
            sums[f"eps_{m}"] += f.T @ (x[:, sl] - x_hat[:, sl])
    denom = (direction ** 2).sum(1) * f_sq
    out = {}
    for m in dirs:
        own = f_sq * (direction * dirs[m]).sum(1)  # sum_i f_ij^2 <d, d_m_j>
        out[f"beta_r_{m}"] = ((sums[f"r_{m}"] * direction).sum(1) - own) / denom
        out[f"beta_eps_{m}"] = ((sums[f"eps_{m}"] * direction).sum(1) + own) / denom
    out["nu_r"] = out["beta_r_base"] / out["beta_r_post"]
    out["nu_eps"] = out["beta_eps_base"] / out["beta_eps_post"]
    return out


def diff_summary(cc: Crosscoder, acts: torch.Tensor, scaling_threshold: float = 0.5) -> dict:
    """Latent counts by relative norm before and after Latent Scaling, and per-latent tables.

    Returns counts_before {post_only, base_only, shared, other, dead}, counts_after (post_only
    minus the flagged false post-only latents, which move to `false_post_only`), and per latent:
    relative_norm, class, nu_r, nu_eps, firing fraction.
    """
    with torch.no_grad():
        fired = torch.zeros(cc.cfg.d_sae)
        for start in range(0, len(acts), 4096):
            fired += (cc.encode(acts[start:start + 4096].float()) > 0).float().sum(0)
    density = fired / len(acts)
    r = cc.relative_norms()
    classes = ["dead" if p == 0 else c for c, p in zip(classify(r), density.tolist())]
    scales = latent_scaling(cc, acts)
    flagged = [c == "post_only" and (float(scales["nu_r"][j]) > scaling_threshold
                                     or float(scales["nu_eps"][j]) > scaling_threshold)
               for j, c in enumerate(classes)]
    before = {k: classes.count(k) for k in ("post_only", "base_only", "shared", "other", "dead")}
    after = dict(before, post_only=before["post_only"] - sum(flagged), false_post_only=sum(flagged))
    latents = [{"latent": j, "relative_norm": float(r[j]), "class": classes[j],
                "nu_r": float(scales["nu_r"][j]), "nu_eps": float(scales["nu_eps"][j]),
                "density": float(density[j]), "false_post_only": flagged[j]} for j in range(cc.cfg.d_sae)]
    return {"counts_before": before, "counts_after": after, "scaling_threshold": scaling_threshold,
            "latents": latents}
