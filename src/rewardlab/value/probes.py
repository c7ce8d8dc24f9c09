"""Value probes: does a model's residual stream hold V_M(h) (or F_M(h)) beyond what the text shows?

    result = value_probe_study({"post": acts_post, "base": acts_base}, rows, records, ValueProbeConfig())

`rows` are `value.targets` rows (one per prefix: record, position, prompt_id, written, realized,
value_NAME, future_NAME); `acts[name]["SITE|POSITION"]` is [n_records, d] (as
`acts.collect_activations` returns for the records, at the targets' positions), so row i reads
record `rows[i]["record"]` at its position, the last token of its prefix.

Per activation model x target (V and F of each model) x position class, a ridge probe per site
(penalty chosen on validation prompts, `probes.sweep.fit_cell`). Every row of one prompt lies in
one split (`probes.splits.grouped_split` over all prefixes' prompt ids, shared by every cell).
Baselines that see only the text, fitted the same way:

    bag_of_words      counts of the prompt's words and, separately, of the written completion words
    realized          R(h) alone (constant at the last prompt token, where nothing is written)
    bag_and_realized  both
    embedding         the same probe on `blocks.0.hook_resid_pre` (the token embeddings) of that model

The best site and the strongest baseline are both chosen by validation Spearman; on the test
prompts the evidence of expectation is Spearman(probe) - Spearman(strongest baseline), with a
paired bootstrap over test prompts (`probes.sweep.versus_strongest` with that one rival), so no
selection happens on the rows the CI rests on. The cross matrix compares, per target and position,
the best post-activation probe with the best base-activation probe on the same test rows (paired).
`value_head_comparison` puts a PPO value head's predictions beside the best probe of V on the
same test rows (the value head was trained on the KL-penalized return, so its offset from V is
expected; Spearman compares ranks only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.probes.baselines import bag_of_words
from rewardlab.probes.metrics import r2_score
from rewardlab.probes.splits import Split, grouped_split
from rewardlab.probes.sweep import EMBEDDING_SITE, fit_cell, versus_strongest
from rewardlab.stats import spearman_r

TEXT_BASELINES = ("bag_of_words", "realized", "bag_and_realized")
MIN_PER_SPLIT = 2  # prefixes of one position in each of train/val/test: a Spearman needs two


@dataclass
class ValueProbeConfig:
    l2_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge penalties tried per cell
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/val/test share of prompts
    seed: int = 0  # split and bootstrap seed
    n_boot: int = 1000  # bootstrap resamples per CI

    def validate(self) -> None:
        if self.n_boot < 1 or not self.l2_grid or min(self.l2_grid) <= 0:
            raise InputError(f"n_boot must be >= 1 and l2_grid positive, got {self.n_boot} and {self.l2_grid}")
        if len(self.fractions) != 3 or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise InputError(f"split fractions {self.fractions} must be 3 positive numbers summing to 1")


@dataclass
class PositionRows:
    """The prefixes of one position class: their indices into `rows`, records, prompt ids and split."""

    position: str
    index: np.ndarray
    records: np.ndarray
    groups: np.ndarray
    split: Split


def smallest_split(n_prompts: int, cfg: ValueProbeConfig) -> int:
    """The fewest prompts any of train/val/test gets when `n_prompts` distinct prompts are split by
    `cfg` (`grouped_split`); 0 below the split's minimum of 3 prompts."""
    if n_prompts < 3:
        return 0
    return min(grouped_split(np.arange(n_prompts), cfg.fractions, cfg.seed).sizes().values())


def check_enough_prompts(n_prompts: int, cfg: ValueProbeConfig, where: str) -> None:
    """Refuse, before any sampling, `n_prompts` distinct prompts whose split leaves a part with fewer than
    MIN_PER_SPLIT: the last_prompt position has one prefix per prompt, so the study would stop there."""
    if smallest_split(n_prompts, cfg) >= MIN_PER_SPLIT:
        return
    needed = next(n for n in range(3, 10_000) if smallest_split(n, cfg) >= MIN_PER_SPLIT)
    raise InputError(f"{n_prompts} distinct prompts leave fewer than {MIN_PER_SPLIT} in a train/val/test part "
                     f"(shares {tuple(cfg.fractions)})", where,
                     f"use at least {needed} prompts (n_prompts), all different")


def target_names(rows: Sequence[dict]) -> list[str]:
    """The value and future targets the rows hold: value_NAME, future_NAME for each model NAME."""
    names = [k[len("value_"):] for k in rows[0] if k.startswith("value_") and not k.startswith("value_se_")]
    if not names:
        raise InputError("the targets hold no value_NAME field", fix="write them with `rewardlab value targets`")
    return [f"{kind}_{n}" for n in names for kind in ("value", "future")]


def position_rows(rows: Sequence[dict], cfg: ValueProbeConfig) -> list[PositionRows]:
    """Rows grouped by position class, each with its share of one grouped split of all prompts."""
    groups = np.asarray([r["prompt_id"] for r in rows])
    split = grouped_split(groups, cfg.fractions, cfg.seed)
    part = np.empty(len(rows), dtype=np.int64)
    for k, idx in enumerate((split.train, split.val, split.test)):
        part[idx] = k
    out = []
    for position in dict.fromkeys(str(r["position"]) for r in rows):
        index = np.asarray([i for i, r in enumerate(rows) if str(r["position"]) == position])
        local = Split(*(np.flatnonzero(part[index] == k) for k in range(3)))
        if min(len(local.train), len(local.val), len(local.test)) < MIN_PER_SPLIT:
            raise InputError(f"position {position} has too few prefixes in a split ({local.sizes()})",
                             fix="give more records, or drop this position")
        out.append(PositionRows(position, index, np.asarray([rows[i]["record"] for i in index]), groups[index], local))
    return out


def text_features(rows: Sequence[dict], records: Sequence[dict], pr: PositionRows) -> dict[str, np.ndarray]:
    """The text-only baselines' features [n, f] of one position class (vocabularies of its training rows)."""
    prompts = [records[r]["prompt"] for r in pr.records]
    written = [rows[i]["written"] for i in pr.index]
    bag = np.hstack([bag_of_words(prompts, pr.split.train), bag_of_words(written, pr.split.train)])
    realized = np.asarray([[rows[i]["realized"]] for i in pr.index], dtype=np.float64)
    return {"bag_of_words": bag, "realized": realized, "bag_and_realized": np.hstack([bag, realized])}


def reliability(rows: Sequence[dict], ys: dict, prs: dict) -> dict[str, dict[str, float]]:
    """{target: {position: 1 - mean(se^2) / var(target)}}: the share of the target's variance across
    prefixes that is not Monte Carlo noise (F has V's se: R is exact). A perfect predictor of the true
    V reaches a squared correlation of about this with the estimate, so it bounds every probe's."""
    out: dict[str, dict[str, float]] = {}
    for target, by_position in ys.items():
        se_field = "value_se_" + target.split("_", 1)[1]
        for position, y in by_position.items():
            se2 = np.mean([rows[i][se_field] ** 2 for i in prs[position].index]) if se_field in rows[0] else np.nan
            out.setdefault(target, {})[position] = float(1 - se2 / np.var(y, ddof=1)) if np.var(y) > 0 else np.nan
    return out


def _fit(x: np.ndarray, y: np.ndarray, split: Split, cfg: ValueProbeConfig, meta: dict) -> dict:
    """A ridge cell: its penalty, validation and test Spearman, and its scores on every row."""
    probe, val = fit_cell(x, y, split, cfg.l2_grid, meta)
    score = probe.predict(x)
    return {"l2": probe.meta["l2"], "val_spearman": val,
            "test_spearman": spearman_r(y[split.test], score[split.test]), "score": score}


def _val_key(cell: dict) -> float:
    v = cell["val_spearman"]
    return v if np.isfinite(v) else -np.inf


def _test_estimate(y: np.ndarray, score: np.ndarray, pr: PositionRows, cfg: ValueProbeConfig) -> dict:
    t = pr.split.test
    return stats.spearman(y[t], score[t], groups=pr.groups[t], n_boot=cfg.n_boot, seed=cfg.seed).to_dict()


def _table_row(acts_name: str, target: str, pr: PositionRows, y: np.ndarray, sites: dict[str, dict],
               baselines: dict[str, dict], cfg: ValueProbeConfig) -> dict:
    """One row of the table: the best site (by validation), its test metrics, each baseline's, and
    the evidence against the strongest baseline (chosen by validation)."""
    best_site = max(sites, key=lambda s: _val_key(sites[s]))
    best, t = sites[best_site], pr.split.test
    kw = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    row = {"acts": acts_name, "target": target, "position": pr.position, "n_test": int(len(t)),
           "n_test_prompts": int(len(np.unique(pr.groups[t]))), "best_site": best_site, "l2": best["l2"],
           "val_spearman": best["val_spearman"], "spearman": _test_estimate(y, best["score"], pr, cfg),
           "r2": stats.bootstrap(r2_score, y[t], best["score"][t], groups=pr.groups[t], **kw).to_dict(),
           "baselines": {name: {"val_spearman": b["val_spearman"], "spearman": _test_estimate(y, b["score"], pr, cfg)}
                         for name, b in baselines.items()}}
    usable = {name: b for name, b in baselines.items() if np.isfinite(b["val_spearman"])}
    if not usable:
        return {**row, "strongest_baseline": None, "evidence": None, "verdict": "inconclusive"}
    strongest = max(usable, key=lambda name: _val_key(usable[name]))
    vs = versus_strongest(y[t], best["score"][t], {strongest: usable[strongest]["score"][t]}, pr.groups[t], **kw)
    lo, hi = vs["difference"]["ci"]
    verdict = "beats the baseline" if lo > 0 else "below the baseline" if hi < 0 else "no difference detected"
    return {**row, "strongest_baseline": strongest, "evidence": vs["difference"], "verdict": verdict}


def _cross(table: list[dict], fitted: dict, ys: dict, prs: dict, cfg: ValueProbeConfig) -> list[dict]:
    """Per target and position: the best post-activation probe against the best base-activation one."""
    out = []
    for target in ys:
        for position, pr in prs.items():
            best = {r["acts"]: r["best_site"] for r in table if r["target"] == target and r["position"] == position}
            if not {"post", "base"} <= set(best):
                continue
            y, t = ys[target][position], pr.split.test
            post = fitted[("post", target, position)][best["post"]]["score"][t]
            base = fitted[("base", target, position)][best["base"]]["score"][t]
            diff = versus_strongest(y[t], post, {"base": base}, pr.groups[t], n_boot=cfg.n_boot, seed=cfg.seed)
            out.append({"target": target, "position": position, "post_site": best["post"], "base_site": best["base"],
                        "post": _test_estimate(y, fitted[("post", target, position)][best["post"]]["score"], pr, cfg),
                        "base": _test_estimate(y, fitted[("base", target, position)][best["base"]]["score"], pr, cfg),
                        "post_minus_base": diff["difference"]})
    return out


def _value_head_rows(head: dict[str, np.ndarray], fitted: dict, table: list[dict], ys: dict, prs: dict,
                     cfg: ValueProbeConfig, model: str = "post") -> list[dict]:
    """Per position: the value head's predictions [n_records] and the best probe of V_model (on the
    model's activations) against V_model on the same test rows: Spearman and RMSE, and the paired
    differences probe - head."""
    target, out, kw = f"value_{model}", [], dict(n_boot=cfg.n_boot, seed=cfg.seed)
    rmse = lambda y_, s: float(np.sqrt(np.mean((y_ - s) ** 2)))  # noqa: E731
    for position, pr in prs.items():
        best = [r["best_site"] for r in table if (r["acts"], r["target"], r["position"]) == (model, target, position)]
        if not best or position not in head:
            continue
        y, t, g = ys[target][position][pr.split.test], pr.split.test, pr.groups[pr.split.test]
        probe, vh = fitted[(model, target, position)][best[0]]["score"][t], np.asarray(head[position])[pr.records][t]
        out.append({"position": position, "target": target, "probe_site": best[0], "n_test": int(len(t)),
                    "probe_spearman": stats.spearman(y, probe, groups=g, **kw).to_dict(),
                    "head_spearman": stats.spearman(y, vh, groups=g, **kw).to_dict(),
                    "probe_rmse": stats.bootstrap(rmse, y, probe, groups=g, **kw).to_dict(),
                    "head_rmse": stats.bootstrap(rmse, y, vh, groups=g, **kw).to_dict(),
                    "spearman_probe_minus_head": versus_strongest(y, probe, {"head": vh}, g, **kw)["difference"],
                    "rmse_probe_minus_head": stats.bootstrap(
                        lambda y_, a, b: rmse(y_, a) - rmse(y_, b), y, probe, vh, groups=g, **kw).to_dict()})
    return out


def _traces(rows: Sequence[dict], fitted: dict, table: list[dict], prs: dict, head: dict | None,
            model: str = "post") -> list[dict]:
    """Per test prefix (held-out prompts only): the Monte Carlo V_model with its standard error, the
    best V_model probe's prediction at that prefix's position and, with `head`, the value head's; one
    row per (record, position), for drawing V along a completion token by token."""
    target, out = f"value_{model}", []
    for position, pr in prs.items():
        best = [r["best_site"] for r in table if (r["acts"], r["target"], r["position"]) == (model, target, position)]
        if not best:
            continue
        score = fitted[(model, target, position)][best[0]]["score"]
        for j in pr.split.test:
            i = int(pr.index[j])
            out.append({"record": rows[i]["record"], "prompt_id": rows[i]["prompt_id"], "position": position,
                        "n_written": rows[i]["n_written"], "value": rows[i][target],
                        "value_se": rows[i].get(f"value_se_{model}"), "realized": rows[i]["realized"],
                        "probe": float(score[j]),
                        "head": None if head is None or position not in head else
                        float(np.asarray(head[position])[pr.records[j]])})
    return sorted(out, key=lambda t: (t["record"], t["n_written"]))


def value_probe_study(acts: dict[str, dict[str, np.ndarray]], rows: Sequence[dict], records: Sequence[dict],
                      cfg: ValueProbeConfig = ValueProbeConfig(), value_head: dict[str, np.ndarray] | None = None
                      ) -> dict:
    """The probe table, the cross matrix, the traces of V_post on test prefixes (`_traces`) and every
    cell (see the module docstring); with `value_head` ({position: the post model's value head's
    prediction per record}), also the value-head comparison."""
    targets = target_names(rows)
    prs = {pr.position: pr for pr in position_rows(rows, cfg)}
    sites = sorted({key.split("|")[0] for a in acts.values() for key in a}, key=_site_order)
    ys = {t: {p: np.asarray([rows[i][t] for i in pr.index], dtype=np.float64) for p, pr in prs.items()}
          for t in targets}
    cells, table, fitted = [], [], {}
    for position, pr in prs.items():
        feats = text_features(rows, records, pr)
        for target in targets:
            y = ys[target][position]
            text = {name: _fit(feats[name], y, pr.split, cfg, {"baseline": name}) for name in TEXT_BASELINES}
            for acts_name, a in acts.items():
                fits = {s: _fit(_acts(a, s, position, pr), y, pr.split, cfg, {"site": s}) for s in sites}
                fitted[(acts_name, target, position)] = fits
                cells += [{"acts": acts_name, "target": target, "position": position, "site": s,
                           **{k: v for k, v in f.items() if k != "score"}} for s, f in fits.items()]
                baselines = dict(text)
                if EMBEDDING_SITE in fits:
                    baselines["embedding"] = fits[EMBEDDING_SITE]
                table.append(_table_row(acts_name, target, pr, y, fits, baselines, cfg))
    result = {"n_prefixes": len(rows), "n_prompts": len({r["prompt_id"] for r in rows}),
              "split": {p: pr.split.sizes() for p, pr in prs.items()}, "positions": list(prs), "sites": sites,
              "models": list(acts), "targets": targets, "reliability": reliability(rows, ys, prs),
              "table": table, "cross": _cross(table, fitted, ys, prs, cfg)}
    if value_head is not None:
        result["value_head"] = _value_head_rows(value_head, fitted, table, ys, prs, cfg)
    if "post" in acts and "value_post" in targets:
        result["traces"] = _traces(rows, fitted, table, prs, value_head)
    return {**result, "cells": cells}


def _site_order(site: str) -> tuple:
    if site.startswith("blocks."):
        _, layer, kind = site.split(".")
        return int(layer), ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post").index(kind)
    return 10 ** 6, 0


def _acts(a: dict[str, np.ndarray], site: str, position: str, pr: PositionRows) -> np.ndarray:
    key = f"{site}|{position}"
    if key not in a:
        raise InputError(f"no activations for {site} at position {position}",
                         fix="collect activations at every position of the targets")
    return np.asarray(a[key], dtype=np.float64)[pr.records]


def collect_value_acts(models: dict, tokenizer, records: Sequence[dict], positions: Sequence, sites: Sequence[str],
                       batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """{model name: {"SITE|POSITION": float32 [n_records, d]}} at the targets' positions."""
    from rewardlab.acts import collect_activations

    return {name: {k: v.numpy() for k, v in collect_activations(model, tokenizer, records, sites, positions,
                                                                batch_size).items()}
            for name, model in models.items()}


def value_head_predictions(head, acts: dict[str, np.ndarray], positions: Sequence) -> dict[str, np.ndarray]:
    """{position: the value head's prediction per record [n_records]} from one model's activations at
    the head's site (`rl.value_head.ValueHead`, reading e.g. ln_final.hook_out)."""
    import torch

    out = {}
    with torch.no_grad():
        for position in positions:
            key = f"{head.site}|{position}"
            if key not in acts:
                raise InputError(f"no activations at the value head's site {head.site}",
                                 fix=f"include {head.site} in --sites")
            out[str(position)] = head(torch.as_tensor(acts[key], dtype=torch.float32)).double().numpy()
    return out


def future_direction(acts: dict[str, np.ndarray], rows: Sequence[dict], site: str, cfg: ValueProbeConfig,
                     model: str = "post") -> tuple[np.ndarray, float, int]:
    """The direction [d] of a ridge probe of F_model (expected reward still to come) at `site`, fitted
    on every completion-position prefix of the training prompts (penalty chosen on validation prompts,
    the study's grouped split), with its validation Spearman and the number of training prefixes.
    `acts` is one model's {"SITE|POSITION": [n_records, d]}."""
    target = f"future_{model}"
    index = [i for i, r in enumerate(rows) if str(r["position"]) != "last_prompt"]
    if not index:
        raise InputError("no completion-position prefixes to fit the F direction on",
                         fix="add completion offsets to positions")
    missing = {f"{site}|{rows[i]['position']}" for i in index} - set(acts)
    if missing:
        raise InputError(f"no activations for {', '.join(sorted(missing))}", fix=f"collect {site} at every position")
    x = np.vstack([np.asarray(acts[f"{site}|{rows[i]['position']}"], dtype=np.float64)[rows[i]["record"]]
                   for i in index])
    y = np.asarray([rows[i][target] for i in index], dtype=np.float64)
    split = grouped_split(np.asarray([rows[i]["prompt_id"] for i in index]), cfg.fractions, cfg.seed)
    probe, val = fit_cell(x, y, split, cfg.l2_grid, {"site": site, "target": target})
    return probe.direction(), float(val), int(len(split.train))
