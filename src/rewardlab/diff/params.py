"""Parameter divergence per layer between a base and a post-trained model, with a noise floor.

For each group of parameters (one transformer block, or one non-block module such as the
embeddings or the final norm), with d_t = theta_post_t - theta_base_t per tensor t:

    tensor_norm_sum = sum_t ||d_t||_2                 (the 2023 SAE paper's layer ranking)
    l2              = ||concat_t d_t||_2              (global L2 norm of the difference)
    relative_change = l2 / ||concat_t theta_base_t||_2

computed in float64 from the stored weights (never on quantized weights). Groups are ranked by
`tensor_norm_sum`.

Whether a block stands out: every block holds the same tensor kinds (q, k, v, MLP in, ...). A
block's `score` is the mean over kinds of ||d_t|| / (the mean of that kind's ||d_t|| over blocks),
so 1 is an average block. The noise floor is the 95th percentile of the largest block score when
each kind's values are permuted among the blocks (1000 permutations, seeded): how far above 1 the
top block gets when the change is unrelated to which block a tensor sits in. A block stands out
when its score exceeds both the floor and 1 + MIN_EXCESS (a change at least 25% above the average
block): fine-tuning every weight (PPO, DPO) tends to move all blocks alike, and a consistent few
percent is not a layer worth choosing. When no block stands out, the summary says so.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
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
    score: float | None = None  # blocks: mean over tensor kinds of ||d_t|| / that kind's mean over blocks
    stands_out: bool = False       # score above the noise floor and 1 + MIN_EXCESS


MIN_EXCESS = 0.25


@dataclass
class Divergence:
    layers: list[LayerDivergence]  # ranked by tensor_norm_sum
    noise_floor: float | None      # 95th percentile of the largest block score under permutation (None: < 2 blocks)
    threshold: float | None        # max(noise_floor, 1 + MIN_EXCESS): the score a block must exceed
    standing_out: list[str] = field(default_factory=list)  # blocks above the threshold, highest score first
    statement: str = ""            # one sentence: which blocks stand out, or that none does


def _block_kind(name: str) -> tuple[int, str] | None:
    """(block index, the parameter's name with the index taken out) for a parameter inside a block."""
    m = _BLOCK.search(name)
    return None if m is None else (int(m.group(1)), name[:m.start(1)] + "*" + name[m.end(1):])


def block_scores(norms: dict[tuple[int, str], float], n_perm: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[dict[int, float], float | None]:
    """({block: score}, noise floor) from ||d_t|| per (block, tensor kind) (module docstring).

    Kinds missing from some block, or unchanged in every block, are left out."""
    blocks = sorted({b for b, _ in norms})
    kinds = sorted(k for k in {k for _, k in norms} if all((b, k) in norms for b in blocks))
    m = np.asarray([[norms[(b, k)] for b in blocks] for k in kinds], dtype=np.float64).reshape(len(kinds), len(blocks))
    m = m[m.mean(1) > 0]
    if not len(m) or len(blocks) < 2:
        return {b: 1.0 for b in blocks}, None
    ratios = m / m.mean(1, keepdims=True)  # [kinds, blocks]
    null = np.random.default_rng(seed).permuted(np.broadcast_to(ratios, (n_perm, *ratios.shape)), axis=2)
    floor = float(np.quantile(null.mean(1).max(1), level))
    return dict(zip(blocks, ratios.mean(0).tolist())), floor


def _statement(standing_out: list[str], rows: dict[str, LayerDivergence], top: LayerDivergence | None,
               threshold: float | None) -> str:
    if threshold is None or top is None:
        return "fewer than 2 blocks: no comparison between blocks"
    if not standing_out:
        return (f"no layer stands out: the highest block score, {top.score:.3f} ({top.group}), is within the "
                f"threshold {threshold:.3f} (permutation noise floor, or 1 + {MIN_EXCESS:g})")
    return (f"{', '.join(standing_out)} stand{'s' if len(standing_out) == 1 else ''} out: block score "
            f"{', '.join(f'{rows[g].score:.3f}' for g in standing_out)} above the threshold {threshold:.3f}")


def param_group(name: str) -> str:
    """`blocks.L` for a parameter inside transformer block L, else its module path."""
    m = _BLOCK.search(name)
    if m:
        return f"blocks.{int(m.group(1))}"
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_divergence(base, post, n_perm: int = 1000, seed: int = 0) -> Divergence:
    """Per-group divergence of `post` from `base`, ranked by the sum of tensor norms (rank 1 = changed
    most), with each block's score and whether it stands out above the noise floor."""
    base_params, post_params = dict(base.named_parameters()), dict(post.named_parameters())
    if base_params.keys() != post_params.keys():
        missing = sorted(base_params.keys() ^ post_params.keys())
        raise InputError(f"the models have different parameters (e.g. {', '.join(missing[:3])})",
                         fix="compare a post-trained model with the base model it was trained from")
    sums: dict[str, dict[str, float]] = {}
    kind_norms: dict[tuple[int, str], float] = {}
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
        kind = _block_kind(name)
        if kind is not None:
            kind_norms[kind] = d2 ** 0.5
    rows = [LayerDivergence(g, a["seed"], a["d2"] ** 0.5, (a["d2"] / a["b2"]) ** 0.5 if a["b2"] > 0 else float("inf"),
                            int(a["n"]), int(a["t"])) for g, a in sums.items()]
    rows.sort(key=lambda r: -r.tensor_norm_sum)
    for i, r in enumerate(rows, start=1):
        r.rank = i
    scores, floor = block_scores(kind_norms, n_perm, seed)
    threshold = None if floor is None else max(floor, 1 + MIN_EXCESS)
    by_group = {r.group: r for r in rows}
    for block, score in scores.items():
        row = by_group[f"blocks.{block}"]
        row.score, row.stands_out = score, threshold is not None and score > threshold
    blocks = sorted((r for r in rows if r.score is not None), key=lambda r: -r.score)
    standing_out = [r.group for r in blocks if r.stands_out]
    return Divergence(rows, floor, threshold, standing_out,
                      _statement(standing_out, by_group, blocks[0] if blocks else None, threshold))


def write_divergence(div: Divergence, out_dir: str | Path, base_name: str, post_name: str) -> dict:
    """Write `params.json` and `params.csv` into `out_dir` (`report.figures.param_divergence` draws them)."""
    out_dir = Path(out_dir)
    rows = div.layers
    blocks = sorted((r for r in rows if r.group.startswith("blocks.")), key=lambda r: int(r.group.split(".")[1]))
    summary = {"base": base_name, "post": post_name, "ranking": "tensor_norm_sum (sum of per-tensor L2 norms)",
               "layers": [asdict(r) for r in rows],
               "top_blocks": [r.group for r in sorted(blocks, key=lambda r: -r.tensor_norm_sum)[:5]],
               "noise_floor": div.noise_floor, "threshold": div.threshold, "standing_out": div.standing_out,
               "statement": div.statement}
    write_json(out_dir / "params.json", summary)
    with atomic_path(out_dir / "params.csv") as tmp:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    return summary
