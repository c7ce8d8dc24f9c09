"""Probe sweeps: a ridge probe per site x position of each model, the best cell chosen on validation
prompts and reported on test prompts, with baselines and the control task (`report.figures.probe_heatmap`
draws a model's cells).

    result = sweep({"post": ActivationStore(a), "base": ActivationStore(b)}, SweepConfig(target="reward"), out)

Every model is split the same way (by prompt id, `grouped_split`), so their numbers compare. Per
cell the ridge penalty is chosen from `l2_grid` by validation Spearman. The best cell (highest
validation Spearman) is refitted on the training prompts and gets every metric of
`probes.metrics.evaluate` on the test prompts, plus: its control-task Spearman and selectivity
(real - control, with a bootstrap CI over test prompts that resamples both together), the length
and bag-of-tokens baselines, and the best `last_prompt` cell (the prompt-only probe: does the
model know the expected reward before writing?).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rewardlab import stats
from rewardlab.stats import spearman_r
from rewardlab.errors import InputError
from rewardlab.io import write_json
from rewardlab.probes.baselines import baseline_scores, control_labels, length_features
from rewardlab.probes.linear import Probe, fit_ridge
from rewardlab.probes.metrics import as_dict, evaluate
from rewardlab.probes.splits import Split, grouped_split


@dataclass
class SweepConfig:
    target: str = "reward"  # record field to predict
    l2_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge penalties tried per cell
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/val/test share of prompts
    seed: int = 0  # split, control-task shuffle and bootstrap seed
    n_boot: int = 1000  # bootstrap resamples per CI


def _site_layer(site: str) -> tuple[str, int]:
    if site.startswith("blocks."):
        _, layer, kind = site.split(".")
        return kind.removeprefix("hook_"), int(layer)
    return "ln_final", -1


def fit_cell(x: np.ndarray, y: np.ndarray, split: Split, l2_grid, meta: dict) -> tuple[Probe, float]:
    """The ridge probe (penalty chosen on validation) and its validation Spearman."""
    best = None
    for l2 in l2_grid:
        probe = fit_ridge(x[split.train], y[split.train], l2=l2, meta=meta)
        score = spearman_r(y[split.val], probe.predict(x[split.val]))
        if best is None or (np.isfinite(score) and not score <= best[1]):
            best = (probe, score)
    return best


EMBEDDING_SITE = "blocks.0.hook_resid_pre"  # the token (and position) embeddings: what a bag of words sees


def _bag_of_tokens(store, split: Split, part: str = "completion") -> np.ndarray:
    """[n, V] counts of the rows' completion (or prompt) token ids, over the ids seen in training rows."""
    cut = [r["n_prompt_tokens"] for r in store.rows]
    seqs = [r["token_ids"][c:] if part == "completion" else r["token_ids"][:c] for r, c in zip(store.rows, cut)]
    vocab = sorted({t for i in split.train for t in seqs[i]})
    index = {t: j for j, t in enumerate(vocab)}
    counts = np.zeros((len(seqs), len(vocab)))
    for i, toks in enumerate(seqs):
        for t in toks:
            if t in index:
                counts[i, index[t]] += 1
    return counts


def versus_strongest(y: np.ndarray, score: np.ndarray, rivals: dict[str, np.ndarray], groups: np.ndarray,
                     **kw) -> dict:
    """The rival with the highest Spearman on these rows (chosen once, outside the bootstrap), and the
    paired bootstrap (resampling prompts) of Spearman(y, score) minus Spearman(y, that rival)."""
    def rho(name: str) -> float:
        r = spearman_r(y, rivals[name])
        return r if np.isfinite(r) else -np.inf

    strongest = max(rivals, key=rho)
    diff = stats.bootstrap(lambda y_, a, b: spearman_r(y_, a) - spearman_r(y_, b), y, score, rivals[strongest],
                           groups=groups, **kw)
    return {"baseline": strongest, "difference": diff.to_dict()}


def _fit_cells(store, y: np.ndarray, cfg: SweepConfig, split: Split) -> tuple[list[dict], dict]:
    """A probe per site x position: the cells' rows and {(site, position): probe}."""
    cells, probes = [], {}
    for site in store.sites:
        for position in store.positions:
            if position == "tokens":
                continue
            x = store.load(site, position).double().numpy()
            meta = {"site": site, "position": position, "model": store.model, "target": cfg.target}
            probe, val = fit_cell(x, y, split, cfg.l2_grid, meta)
            kind, layer = _site_layer(site)
            cells.append({"site": site, "kind": kind, "layer": layer, "position": position, "l2": probe.meta["l2"],
                          "val_spearman": val, "test_spearman": spearman_r(y[split.test], probe.predict(x[split.test]))})
            probes[(site, str(position))] = probe
    if not cells:
        raise InputError("the store holds no per-record positions to probe", str(store.folder),
                         "cache last_completion, last_prompt, mean_completion or an offset")
    return cells, probes


def _predict(store, probes: dict, site: str, position) -> np.ndarray:
    """All rows' predictions of the cell's probe."""
    return probes[(site, str(position))].predict(store.load(site, position).double().numpy())


def _best_cell(store, y, cfg: SweepConfig, split: Split, best: dict, probes: dict) -> tuple[dict, dict]:
    """The best cell's test metrics, control task and selectivity; the completion baselines and how the
    probe compares with the strongest of them (length, bag of tokens, the embedding-layer probe)."""
    test, groups = split.test, np.asarray(store.prompt_ids)
    kw = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    probe = probes[(best["site"], str(best["position"]))]
    x = store.load(best["site"], best["position"]).double().numpy()
    metrics = evaluate(y[test], probe.predict(x[test]), groups[test], **kw)
    y_control = control_labels(y, seed=cfg.seed)
    control = fit_ridge(x[split.train], y_control[split.train], l2=probe.meta["l2"])
    control_spearman = spearman_r(y_control[test], control.predict(x[test]))
    selectivity = stats.bootstrap(lambda y_, p, yc, pc: spearman_r(y_, p) - spearman_r(yc, pc), y[test],
                                  probe.predict(x[test]), y_control[test], control.predict(x[test]),
                                  groups=groups[test], **kw)
    length = length_features([r["n_completion_tokens"] for r in store.rows])
    rivals = {"length": baseline_scores(length, y, split.train),
              "bag_of_tokens": baseline_scores(_bag_of_tokens(store, split), y, split.train, l2=10.0)}
    baselines = {k: evaluate(y[test], v[test], groups[test], **kw) for k, v in rivals.items()}
    if (EMBEDDING_SITE, str(best["position"])) in probes:
        rivals["embedding"] = _predict(store, probes, EMBEDDING_SITE, best["position"])
        baselines["embedding"] = evaluate(y[test], rivals["embedding"][test], groups[test], **kw)
    cell = {**best, "test": as_dict(metrics), "control_spearman": control_spearman,
            "selectivity": selectivity.to_dict(),
            "versus_baselines": versus_strongest(y[test], probe.predict(x[test]), {k: v[test] for k, v in rivals.items()},
                                                 groups[test], **kw)}
    return cell, {k: as_dict(v) for k, v in baselines.items()}


def _prompt_only(store, y, cfg: SweepConfig, split: Split, finite: list[dict], probes: dict) -> dict | None:
    """The best `last_prompt` cell on test prompts, against a bag of the prompt's tokens and the
    embedding-layer probe at the last prompt token."""
    prompt_cells = [c for c in finite if c["position"] == "last_prompt"]
    if not prompt_cells:
        return None
    test, groups = split.test, np.asarray(store.prompt_ids)
    kw = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    pbest = max(prompt_cells, key=lambda c: c["val_spearman"])
    score = _predict(store, probes, pbest["site"], "last_prompt")
    rivals = {"bag_of_prompt_tokens": baseline_scores(_bag_of_tokens(store, split, "prompt"), y, split.train,
                                                      l2=10.0)}
    if (EMBEDDING_SITE, "last_prompt") in probes:
        rivals["embedding"] = _predict(store, probes, EMBEDDING_SITE, "last_prompt")
    return {**pbest, "test": as_dict(evaluate(y[test], score[test], groups[test], **kw)),
            "baselines": {k: as_dict(evaluate(y[test], v[test], groups[test], **kw)) for k, v in rivals.items()},
            "versus_baselines": versus_strongest(y[test], score[test], {k: v[test] for k, v in rivals.items()},
                                                 groups[test], **kw)}


def sweep_model(store, cfg: SweepConfig, split: Split, name: str, out: Path | None = None) -> dict:
    """Sweep one model's store; returns cells, best cell with test metrics, prompt-only cell, baselines."""
    y = store.field(cfg.target)
    cells, probes = _fit_cells(store, y, cfg, split)
    finite = [c for c in cells if np.isfinite(c["val_spearman"])]
    if not finite:
        raise InputError(f"target {cfg.target!r} is constant on the validation prompts", str(store.folder))
    best = max(finite, key=lambda c: c["val_spearman"])
    cell, baselines = _best_cell(store, y, cfg, split, best, probes)
    result = {"model": store.model, "n_rows": len(y), "split": split.sizes(), "cells": cells, "best": cell,
              "baselines": baselines}
    prompt_only = _prompt_only(store, y, cfg, split, finite, probes)
    if prompt_only is not None:
        result["prompt_only"] = prompt_only
    if out is not None:
        probes[(best["site"], str(best["position"]))].save(out / f"probe-{name}.safetensors")
    return result


def sweep(stores: dict, cfg: SweepConfig = SweepConfig(), out: str | Path | None = None) -> dict:
    """Sweep each named store (e.g. {"post": ..., "base": ...}) on one shared prompt split."""
    first = next(iter(stores.values()))
    for name, store in stores.items():
        if store.prompt_ids != first.prompt_ids:
            raise InputError(f"store {name!r} holds other records than the first store",
                             fix="cache both models on the same records file")
    split = grouped_split(first.prompt_ids, cfg.fractions, cfg.seed)
    out = Path(out) if out is not None else None
    results = {"config": asdict(cfg),
               "models": {name: sweep_model(store, cfg, split, name, out) for name, store in stores.items()}}
    if out is not None:
        write_json(out / "sweep.json", results)
    return results
