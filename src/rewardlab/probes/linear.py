"""Probes: functions of one activation vector that predict a reward, all on standardized inputs.

    fit_ridge          linear regression with bias, closed form, L2 penalty `l2` (sklearn Ridge)
    fit_sgd            the same model trained as the original probe project did: AdamW, lr 1e-4, batch 8, wd 1e-4
    fit_logistic       winner (1) vs loser (0), L2-penalized logistic regression with bias (Newton)
    fit_bradley_terry  pairs (chosen, rejected): P(chosen wins) = sigmoid(w . (x_c - x_r)), no bias
    fit_mlp            a small MLP d -> hidden -> 1 (ReLU), MSE, Adam

Inputs are standardized with the training rows' mean and std (std 0 counts as 1); a `Probe` keeps
them, so `probe.predict(raw_acts)` and `probe.direction()` (the unit direction in the raw
activation basis, the one steering adds) need nothing else. The original probe project's probe had no bias and read
TransformerLens-processed activations; these read the raw model's activations and have a bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rewardlab.errors import InputError
from rewardlab.io import load_tensors, save_tensors

KINDS = ("ridge", "sgd", "logistic", "bradley_terry", "mlp")


@dataclass
class Probe:
    """A fitted probe. Linear kinds: score = ((x - mean) / std) . weight + bias.

    weight: (d,) in the standardized basis; mean, std: (d,); mlp: state dict of the MLP kind.
    meta: site, position, model, target and fitting settings (saved with the probe).
    """

    kind: str
    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    meta: dict = field(default_factory=dict)
    mlp: dict[str, torch.Tensor] | None = None

    def predict(self, x) -> np.ndarray:
        """Scores (n,) for raw activations x (n, d)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        if self.kind == "mlp":
            with torch.no_grad():
                net = _mlp_from_state(self.mlp)
                out = net(torch.as_tensor(z, dtype=torch.float32)).squeeze(-1).double().numpy()
            return out * self.meta.get("y_std", 1.0) + self.bias
        return z @ self.weight + self.bias

    def direction(self) -> np.ndarray:
        """Unit vector (d,) in the raw activation basis along which the linear score grows."""
        if self.kind == "mlp":
            raise InputError("an MLP probe has no single direction", fix="use a linear probe kind")
        w = self.weight / self.std
        norm = np.linalg.norm(w)
        return w / norm if norm > 0 else w

    def save(self, path: str | Path) -> None:
        tensors = {"weight": torch.as_tensor(self.weight, dtype=torch.float64),
                   "mean": torch.as_tensor(self.mean, dtype=torch.float64),
                   "std": torch.as_tensor(self.std, dtype=torch.float64)}
        for k, v in (self.mlp or {}).items():
            tensors[f"mlp.{k}"] = v
        save_tensors(path, tensors, {"kind": self.kind, "bias": self.bias, "meta": self.meta})


def load_probe(path: str | Path) -> Probe:
    tensors, meta = load_tensors(path)
    if "kind" not in meta or "weight" not in tensors:
        raise InputError("not a rewardlab probe file", str(path), "pass a file written by `rewardlab probe`")
    mlp = {k[4:]: v for k, v in tensors.items() if k.startswith("mlp.")} or None
    return Probe(meta["kind"], tensors["weight"].numpy(), float(meta["bias"]), tensors["mean"].numpy(),
                 tensors["std"].numpy(), meta.get("meta", {}), mlp)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (d,) of rows x (n, d); zero std becomes 1."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    return mean, std


def fit_ridge(x, y, l2: float = 1.0, meta: dict | None = None) -> Probe:
    """argmin_w,b |Z w + b - y|^2 + l2 |w|^2 on standardized Z, solved exactly (primal or dual)."""
    mean, std = standardizer(x)
    z = (np.asarray(x, dtype=np.float64) - mean) / std
    y = np.asarray(y, dtype=np.float64)
    zc, yc = z - z.mean(0), y - y.mean()
    n, d = zc.shape
    if d <= n:
        w = np.linalg.solve(zc.T @ zc + l2 * np.eye(d), zc.T @ yc)
    else:
        w = zc.T @ np.linalg.solve(zc @ zc.T + l2 * np.eye(n), yc)
    bias = float(y.mean() - z.mean(0) @ w)
    return Probe("ridge", w, bias, mean, std, {**(meta or {}), "l2": l2})


def fit_sgd(x, y, lr: float = 1e-4, batch_size: int = 8, weight_decay: float = 1e-4, epochs: int = 20,
            seed: int = 0, meta: dict | None = None) -> Probe:
    """Linear regression with bias trained by AdamW on MSE to standardized targets (the original probe project's settings)."""
    mean, std = standardizer(x)
    z = torch.as_tensor((np.asarray(x, dtype=np.float64) - mean) / std, dtype=torch.float32)
    y = np.asarray(y, dtype=np.float64)
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    t = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(batch_size):
            loss = ((z[idx] @ w + b - t[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    weight = w.detach().double().numpy() * y_std
    return Probe("sgd", weight, float(b.item()) * y_std + y_mean, mean, std,
                 {**(meta or {}), "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                  "epochs": epochs, "seed": seed})


def _newton_logistic(z: np.ndarray, labels: np.ndarray, l2: float, intercept: bool,
                     max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """argmin sum_i logloss(sigmoid(z_i w + b), labels_i) + l2/2 |w|^2 (b unpenalized) by Newton."""
    n, d = z.shape
    a = np.hstack([z, np.ones((n, 1))]) if intercept else z
    penalty = np.full(a.shape[1], l2)
    if intercept:
        penalty[-1] = 0.0
    theta = np.zeros(a.shape[1])
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(a @ theta)))
        grad = a.T @ (p - labels) + penalty * theta
        if np.max(np.abs(grad)) < tol:
            break
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-12 * np.eye(a.shape[1])
        theta = theta - np.linalg.solve(hess, grad)
    return (theta[:-1], float(theta[-1])) if intercept else (theta, 0.0)


def fit_logistic(x, labels, l2: float = 1.0, meta: dict | None = None) -> Probe:
    """Winner/loser classifier; `predict` gives the logit (sklearn LogisticRegression(C=1/l2))."""
    mean, std = standardizer(x)
    z = (np.asarray(x, dtype=np.float64) - mean) / std
    labels = np.asarray(labels, dtype=np.float64)
    if set(np.unique(labels)) - {0.0, 1.0}:
        raise InputError("logistic probe labels must be 0 or 1")
    w, b = _newton_logistic(z, labels, l2, intercept=True)
    return Probe("logistic", w, b, mean, std, {**(meta or {}), "l2": l2})


def fit_bradley_terry(x_chosen, x_rejected, l2: float = 1.0, meta: dict | None = None) -> Probe:
    """Bradley-Terry on pairs: maximize sum log sigmoid(s(chosen) - s(rejected)) - l2/2 |w|^2."""
    xc, xr = np.asarray(x_chosen, dtype=np.float64), np.asarray(x_rejected, dtype=np.float64)
    mean, std = standardizer(np.vstack([xc, xr]))
    diff = (xc - xr) / std
    w, _ = _newton_logistic(diff, np.ones(len(diff)), l2, intercept=False)
    return Probe("bradley_terry", w, 0.0, mean, std, {**(meta or {}), "l2": l2})


def _mlp_from_state(state: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    d, hidden = state["0.weight"].shape[1], state["0.weight"].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    net.load_state_dict(state)
    return net


def fit_mlp(x, y, hidden: int = 64, lr: float = 1e-3, epochs: int = 100, batch_size: int = 64,
            weight_decay: float = 1e-4, seed: int = 0, meta: dict | None = None) -> Probe:
    """A one-hidden-layer ReLU MLP on standardized inputs and targets, MSE, Adam."""
    mean, std = standardizer(x)
    z = torch.as_tensor((np.asarray(x, dtype=np.float64) - mean) / std, dtype=torch.float32)
    y = np.asarray(y, dtype=np.float64)
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    t = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) / np.sqrt(p.shape[-1]))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(batch_size):
            loss = ((net(z[idx]).squeeze(-1) - t[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Probe("mlp", np.zeros(z.shape[1]), y_mean, mean, std,
                 {**(meta or {}), "y_std": y_std, "hidden": hidden, "lr": lr, "epochs": epochs, "seed": seed},
                 state)
