"""Parameter divergence per layer between a base and a post-trained model.

For each group of parameters (one transformer block, or one non-block module such as the
embeddings or the final norm), with d_t = theta_post_t - theta_base_t per tensor t:

    tensor_norm_sum = sum_t ||d_t||_2                 (the 2023 SAE paper's layer ranking)
    l2              = ||concat_t d_t||_2              (global L2 norm of the difference)
    relative_change = l2 / ||concat_t theta_base_t||_2

computed in float64 from the stored weights (never on quantized weights). Groups are ranked by
`tensor_norm_sum`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rewardlab.errors import InputError
from rewardlab.io import atomic_path, write_json

_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks)\.(\d+)\.")


@dataclass
class LayerDivergence:
    group: str  # "blocks.L" for transformer block L, else the module path ("transformer.wte")
    tensor_norm_sum: float
    l2: float
    relative_change: float
    n_params: int
    n_tensors: int
    rank: int = 0


def param_group(name: str) -> str:
    """`blocks.L` for a parameter inside transformer block L, else its module path."""
    m = _BLOCK.search(name)
    if m:
        return f"blocks.{int(m.group(1))}"
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_divergence(base, post) -> list[LayerDivergence]:
    """Per-group divergence of `post` from `base`, ranked by the sum of tensor norms (rank 1 = changed most)."""
    base_params, post_params = dict(base.named_parameters()), dict(post.named_parameters())
    if base_params.keys() != post_params.keys():
        missing = sorted(base_params.keys() ^ post_params.keys())
        raise InputError(f"the models have different parameters (e.g. {', '.join(missing[:3])})",
                         fix="compare a post-trained model with the base model it was trained from")
    sums: dict[str, dict[str, float]] = {}
    for name, p_base in base_params.items():
        p_post = post_params[name]
        if p_base.shape != p_post.shape:
            raise InputError(f"parameter {name} has shape {tuple(p_base.shape)} in base, "
                             f"{tuple(p_post.shape)} in post", fix="compare models of the same architecture")
        d = p_post.detach().to("cpu", torch.float64) - p_base.detach().to("cpu", torch.float64)
        acc = sums.setdefault(param_group(name), {"seed": 0.0, "d2": 0.0, "b2": 0.0, "n": 0, "t": 0})
        d2 = float((d * d).sum())
        acc["seed"] += d2 ** 0.5
        acc["d2"] += d2
        acc["b2"] += float(p_base.detach().to("cpu", torch.float64).pow(2).sum())
        acc["n"] += d.numel()
        acc["t"] += 1
    rows = [LayerDivergence(g, a["seed"], a["d2"] ** 0.5, (a["d2"] / a["b2"]) ** 0.5 if a["b2"] > 0 else float("inf"),
                            int(a["n"]), int(a["t"])) for g, a in sums.items()]
    rows.sort(key=lambda r: -r.tensor_norm_sum)
    for i, r in enumerate(rows, start=1):
        r.rank = i
    return rows


def write_divergence(rows: list[LayerDivergence], out_dir: str | Path, base_name: str, post_name: str) -> dict:
    """Write `params.json` and `params.csv` into `out_dir` (`report.figures.param_divergence` draws them)."""
    out_dir = Path(out_dir)
    blocks = sorted((r for r in rows if r.group.startswith("blocks.")), key=lambda r: int(r.group.split(".")[1]))
    summary = {"base": base_name, "post": post_name, "ranking": "tensor_norm_sum (sum of per-tensor L2 norms)",
               "layers": [asdict(r) for r in rows],
               "top_blocks": [r.group for r in sorted(blocks, key=lambda r: -r.tensor_norm_sum)[:5]]}
    write_json(out_dir / "params.json", summary)
    with atomic_path(out_dir / "params.csv") as tmp:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    return summary
