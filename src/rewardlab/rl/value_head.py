"""The PPO value head: a linear or MLP readout of expected reward from one activation site.

Saved as `value_head.safetensors` with metadata {site, kind, d_model}, so a probe trained on the
same site can be compared with it weight for weight.

    linear: V(h) = h @ w + b                                   weight [1, d], bias [1]
    mlp:    V(h) = W2 relu(W1 h + b1) + b2   (d -> 4d -> 1, as ARENA's value head)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rewardlab.errors import InputError
from rewardlab.io import load_tensors, save_tensors
from rewardlab.rl.config import VALUE_HEAD_KINDS

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """Maps activations [..., d_model] to values [...] (expected return, in reward units)."""

    def __init__(self, d_model: int, kind: str = "mlp", site: str = "ln_final.hook_out"):
        super().__init__()
        if kind not in VALUE_HEAD_KINDS:
            raise InputError(f"unknown value head kind {kind!r}", fix=f"use one of {', '.join(VALUE_HEAD_KINDS)}")
        self.d_model, self.kind, self.site = d_model, kind, site
        if kind == "linear":
            self.net = nn.Linear(d_model, 1)
        else:
            self.net = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Linear(4 * d_model, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / VALUE_HEAD_FILE
        save_tensors(path, dict(self.state_dict()), {"site": self.site, "kind": self.kind, "d_model": self.d_model})
        return path


def load_value_head(path: str | Path) -> ValueHead:
    """Load a value head from `value_head.safetensors` or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / VALUE_HEAD_FILE
    tensors, meta = load_tensors(path)
    missing = [k for k in ("site", "kind", "d_model") if k not in meta]
    if missing:
        raise InputError(f"value head metadata lacks {', '.join(missing)}", str(path), "save it with ValueHead.save")
    head = ValueHead(int(meta["d_model"]), meta["kind"], meta["site"])
    head.load_state_dict(tensors)
    return head
