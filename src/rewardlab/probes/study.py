"""The probe-and-steering study on a post-trained policy: the numbers of research questions 1, 2, 3, 7.

    results = run_probe_study(policy_dir, base_dir, prompts, heldout_prompts, out, StudyConfig())
    results["probe"], results["steering"]    # the results.json sections

1. Data: `samples_per_prompt` completions per training prompt from the policy and as many from the
   base model (so the reward varies), scored with the true reward, the implicit reward
   log pi_policy - log pi_base, and (if the policy folder has one) the PPO value head.
2. Activations of both models on the same records at every site x `positions` (ActivationStore),
   a ridge probe per cell (`probes.sweep`): best cell by validation, reported on test prompts with
   the control task (selectivity), baselines and the prompt-only probe; the base model beside it.
3. Cross-signals on the test prompts: Spearman among probe, implicit reward, true reward, value
   head; cosines among the probe direction, the difference-of-means direction and the value head
   direction, each in the basis it lives in (module `probes.cross`).
4. Steering along a difference-of-means direction (and, without controls, a probe's direction)
   at `steer_site` (default the last block's resid_post) on held-out prompts
   (`steer.dose_response`), grammaticality checked with the review world's grammar.

Steering directions (`steer_direction`), both differences of means on the training prompts' records:
- "next_token_valence" (default): per-token activations of the policy at the steer site; mean where
  the next token is a positive-valence word minus where it is a negative one, within each current
  token (`cross.stratified_mean_difference`), with the "end the completion here" direction (the same
  contrast for "the next token ends the completion" vs "it goes on") projected out.
- "mean_diff": completion-level, mean activation of high- minus low-reward records at `steer_position`.
Why: the reward is a sum over words (it correlates with length), so high-reward completions differ
from low ones mostly by going on longer, and the completion-level mean_diff direction steers toward
*ending* (on the review-world PPO policy reward fell with alpha: 0.88, 0.77, 0.63, 0.33 at alpha 0,
0.25, 0.5, 1). Controlling length at the completion level (reward residualized on word count, or
reward per word) did not raise reward either. Per-token contrasts target what a word's reward
depends on, the next word; without the current-token strata the direction mostly encodes which word
the model is at, and without removing the end direction (cosine about 0.5 with it) it still shortens.
Measured there (64 held-out prompts): reward 1.09 at alpha 0, 0.87 at 0.25, then 1.38, 2.00, 3.80 at
0.5, 0.75, 1 (random directions at most 0.72 in |effect| at 1; 1.12 at -0.5, 0.66 at -1), but the rise comes with strings of
sentiment words (grammatical rate 0.89 -> 0.14 at 0.5, 0 beyond): the policy already writes mostly
positive words, so grammatical completions leave little reward to gain, and small perturbations of
any direction lower it a little.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardlab.errors import InputError
from rewardlab.io import read_jsonl, write_json, write_jsonl


@dataclass
class StudyConfig:
    samples_per_prompt: int = 4  # per model and training prompt
    n_prompts: int = 256  # training prompts used (the first n)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    positions: tuple = ("last_completion", "mean_completion", "last_prompt")
    sites: str = "all"  # "all" or comma-separated site names
    steer_site: str = "last_resid_post"  # site to steer: a site name, "best" (the best probe's), or the
    # last block's resid_post (default: late sites write the next token; the best probe cell may be
    # an input-side site such as the embeddings, where adding "a positive word was read" lowers reward)
    steer_direction: str = "next_token_valence"  # or "mean_diff" (module docstring)
    steer_position: str = "mean_completion"  # records' activations the mean_diff direction and the
    # steering-site probe are computed from
    steer_alphas: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0)  # x typical norm; 0.25 is kept
    # although the valence direction lowers the review-world PPO policy's reward there (module docstring)
    steer_where: str = "completion"  # the positions that pick tokens
    n_steer_prompts: int = 64  # held-out prompts for steering
    n_random: int = 8
    batch_size: int = 64
    seed: int = 0
    n_boot: int = 1000
    device: str | None = None


def _sample_records(models: dict, tokenizer, prompts: Sequence[str], cfg: StudyConfig) -> list[dict]:
    from rewardlab.sampling import generate

    records = []
    for k, (name, model) in enumerate(models.items()):
        repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        samples = generate(model, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           generator=torch.Generator().manual_seed(cfg.seed + k), batch_size=cfg.batch_size)
        records += [{"prompt": s.prompt, "completion": s.completion, "source": name} for s in samples]
    return records


def sites_resid_post(model) -> str:
    """The last block's resid_post site name."""
    from rewardlab.sites import n_layers

    return f"blocks.{n_layers(model) - 1}.hook_resid_post"


STEER_DIRECTIONS = ("next_token_valence", "mean_diff")


def next_token_valence_direction(store, site: str, tokenizer, table: dict[str, float], rows) -> tuple[np.ndarray, str]:
    """The default steering direction [d] from a per-token store (module docstring), training `rows` only,
    and what it was stratified by: "current token", or "none" where no current token is followed by
    both positive and negative words with different activations (tiny data).

    store: an ActivationStore holding `site` at position "tokens"; table: word -> valence.
    """
    from rewardlab.probes.cross import project_out, stratified_mean_difference, token_valences

    batch = next(store.iter_batches(site, 1 << 62, "tokens"))
    x, row, ids, index = (batch["acts"].double().numpy(), batch["row_ids"].numpy(), batch["token_ids"].numpy(),
                          batch["token_index"].numpy())
    next_id = np.full(len(ids), -1)
    same = (row[1:] == row[:-1]) & (index[1:] == index[:-1] + 1)
    next_id[:-1][same] = ids[1:][same]
    train = np.isin(row, np.asarray(rows))
    goes_on = train & (next_id >= 0)
    valence = token_valences(tokenizer, next_id[goes_on], table)
    ends = np.where(next_id[train] < 0, 1.0, -1.0)
    for strata, name in ((ids, "current token"), (None, "none")):
        try:
            toward_reward = stratified_mean_difference(x[goes_on], valence, None if strata is None else strata[goes_on])
            toward_end = stratified_mean_difference(x[train], ends, None if strata is None else strata[train])
        except ValueError:
            continue
        direction = project_out(toward_reward, toward_end)
        if np.linalg.norm(direction) > 0:
            return direction, name
    raise InputError(f"no positions before positive and negative words with different activations at {site}",
                     fix="sample more records, or use steer_direction='mean_diff'")


def value_head_predictions(head, store) -> np.ndarray:
    """The value head applied to its own site at the last completion token, [n_rows]."""
    x = store.load(head.site, "last_completion")
    with torch.no_grad():
        return head(x.to(next(head.parameters()).dtype)).double().numpy()


def value_head_direction(head, x: np.ndarray) -> tuple[np.ndarray, str]:
    """A linear head's weight, or an MLP head's mean input gradient over rows x; [d] and which."""
    if head.kind == "linear":
        return head.net.weight.detach().double().numpy()[0], "weight"
    h = torch.as_tensor(x, dtype=torch.float32).requires_grad_(True)
    head(h).sum().backward()
    return h.grad.double().numpy().mean(0), "mean input gradient"


def run_probe_study(policy_path, base_path, prompts: Sequence[str], heldout_prompts: Sequence[str],
                    out: str | Path, cfg: StudyConfig = StudyConfig(), value_head_path=None) -> dict:
    """Run the study (module docstring); write its artifacts into `out`; return the results sections."""
    from rewardlab import stats
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
    from rewardlab.models import load_model
    from rewardlab.probes.cross import cosine, mean_difference_direction, signal_correlations
    from rewardlab.probes.linear import fit_ridge, load_probe
    from rewardlab.probes.splits import grouped_split
    from rewardlab.probes.sweep import SweepConfig, sweep
    from rewardlab.rewards import UtilityReward
    from rewardlab.rl.value_head import load_value_head
    from rewardlab.sites import all_sites
    from rewardlab.steer import SteerConfig, dose_response
    from rewardlab.world.grammar import is_grammatical

    if cfg.steer_direction not in STEER_DIRECTIONS:
        raise InputError(f"unknown steering direction {cfg.steer_direction!r}",
                         fix=f"use {' or '.join(STEER_DIRECTIONS)}")
    out = Path(out)
    policy, tokenizer = load_model(policy_path, device=cfg.device, dtype="float32")
    base, _ = load_model(base_path, device=cfg.device, dtype="float32")
    reward = UtilityReward()
    records_path = out / "records.jsonl"
    if records_path.is_file():
        records = read_jsonl(records_path)
    else:
        records = _sample_records({"policy": policy, "base": base}, tokenizer, list(prompts)[:cfg.n_prompts], cfg)
        true = reward([r["completion"] for r in records])
        implicit = implicit_rewards(base, policy, tokenizer, [r["prompt"] for r in records],
                                    [r["completion"] for r in records], ScoreConfig(batch_size=cfg.batch_size))
        for r, t, i in zip(records, true, implicit):
            r["reward"], r["implicit_reward"] = t, i["implicit_reward"]
            r["from_policy"] = r["source"] == "policy"
        write_jsonl(records_path, records)

    sites = all_sites(policy) if cfg.sites == "all" else cfg.sites.split(",")
    cache_cfg = CacheConfig(sites=sites, positions=list(cfg.positions), batch_size=cfg.batch_size)
    stores = {"policy": cache_activations(policy, tokenizer, records, out / "acts-policy", cache_cfg, str(policy_path)),
              "base": cache_activations(base, tokenizer, records, out / "acts-base", cache_cfg, str(base_path))}
    sweep_cfg = SweepConfig(target="reward", seed=cfg.seed, n_boot=cfg.n_boot)
    swept = sweep(stores, sweep_cfg, out / "sweep")
    post = swept["models"]["policy"]
    best = post["best"]
    probe = load_probe(out / "sweep" / "probe-policy.safetensors")

    store = stores["policy"]
    split = grouped_split(store.prompt_ids, sweep_cfg.fractions, sweep_cfg.seed)
    groups = np.asarray(store.prompt_ids)
    y = store.field("reward")
    x_best = store.load(best["site"], best["position"]).double().numpy()
    signals = {"probe": probe.predict(x_best), "true_reward": y, "implicit_reward": store.field("implicit_reward")}
    candidates = [Path(value_head_path)] if value_head_path else [
        Path(policy_path) / "value_head.safetensors", Path(policy_path).parent / "value_head.safetensors"]
    found = [p for p in candidates if p.is_file()]
    head = load_value_head(found[0]) if found else None
    mean_diff = mean_difference_direction(x_best[split.train], y[split.train])
    directions = {"probe~mean_diff": cosine(probe.direction(), mean_diff)}
    value_head = None
    if head is not None:
        signals["value_head"] = value_head_predictions(head, store)
        x_vh = store.load(head.site, "last_completion").double().numpy()
        vh_dir, vh_how = value_head_direction(head, x_vh[split.train])
        probe_vh = fit_ridge(x_vh[split.train], y[split.train], l2=best["l2"])
        directions["value_head~probe_at_value_site"] = cosine(vh_dir, probe_vh.direction())
        directions["value_head~mean_diff_at_value_site"] = cosine(
            vh_dir, mean_difference_direction(x_vh[split.train], y[split.train]))
        value_head = {"site": head.site, "kind": head.kind, "direction": vh_how,
                      "cosine_with_probe_at_value_site": directions["value_head~probe_at_value_site"],
                      "spearman_true_test": stats.spearman(y[split.test], signals["value_head"][split.test],
                                                           groups=groups[split.test], n_boot=cfg.n_boot).to_dict(),
                      "note": ("the value head reads " + head.site + "; the best probe reads " + best["site"]
                               + ": directions compare only within one site, predictions compare anywhere")}
    test = split.test
    correlations = signal_correlations({k: v[test] for k, v in signals.items()}, groups[test], n_boot=cfg.n_boot,
                                       seed=cfg.seed)

    steer_site = {"best": best["site"], "last_resid_post": sites_resid_post(policy)}.get(cfg.steer_site, cfg.steer_site)
    x_steer = store.load(steer_site, cfg.steer_position).double().numpy()
    steer_probe_fit = fit_ridge(x_steer[split.train], y[split.train], l2=best["l2"],
                                meta={"site": steer_site, "position": cfg.steer_position})
    steer_mean_diff = mean_difference_direction(x_steer[split.train], y[split.train])
    directions["probe~mean_diff_at_steer_site"] = cosine(steer_probe_fit.direction(), steer_mean_diff)
    if cfg.steer_direction == "mean_diff":
        steer_direction, strata = steer_mean_diff, None
    else:
        token_store = cache_activations(policy, tokenizer, records, out / "acts-steer-tokens",
                                        CacheConfig(sites=[steer_site], positions=["tokens"],
                                                    batch_size=cfg.batch_size), str(policy_path))
        steer_direction, strata = next_token_valence_direction(token_store, steer_site, tokenizer, reward.table,
                                                               split.train)
    steer_prompts = list(heldout_prompts)[:cfg.n_steer_prompts]
    steer_cfg = SteerConfig(site=steer_site, alphas=tuple(cfg.steer_alphas), where=cfg.steer_where,
                            n_random=cfg.n_random, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                            n_boot=cfg.n_boot)
    reward_fn = reward

    def checker(completion: str, prompt: str) -> bool:
        return is_grammatical(completion, prompt)

    steer_md = dose_response(policy, tokenizer, steer_prompts, steer_direction, steer_cfg, reward_fn, probe=probe,
                             base=base, checker=checker, out=out / "steer-mean-diff")
    steer_probe = dose_response(policy, tokenizer, steer_prompts, steer_probe_fit.direction(),
                                replace(steer_cfg, n_random=0), reward_fn, probe=probe, checker=checker)
    write_json(out / "steer-mean-diff" / "steering.json", steer_md)
    write_json(out / "steer-probe.json", steer_probe)

    prompt_only = post.get("prompt_only", {})
    results = {
        "probe": {
            "best_site": best["site"], "best_position": best["position"],
            "spearman": best["test"]["spearman"]["value"], "ci": best["test"]["spearman"]["ci"],
            "n": best["test"]["spearman"]["n"], "selectivity": best["selectivity"],
            "control_spearman": best["control_spearman"],
            "prompt_only_spearman": prompt_only.get("test", {}).get("spearman"),
            "prompt_only_site": prompt_only.get("site"),
            "base_model_spearman": swept["models"]["base"]["best"]["test"]["spearman"],
            "base_model_best_site": swept["models"]["base"]["best"]["site"],
            "probe_mean_diff_cosine": directions["probe~mean_diff"],
            "value_head_cosine": None if value_head is None else value_head["cosine_with_probe_at_value_site"],
            "value_head": value_head, "cosines": directions, "correlations_test": correlations,
            "metrics_test": best["test"], "baselines_test": post["baselines"],
            "heatmaps": [f"sweep/heatmap-{m}.png" for m in stores],
        },
        "steering": {
            "site": steer_site, "position": cfg.steer_position, "direction": cfg.steer_direction,
            "direction_strata": strata, "where": cfg.steer_where,
            "probe_direction_cosine": cosine(steer_probe_fit.direction(), steer_direction),
            "mean_diff_direction_cosine": cosine(steer_mean_diff, steer_direction),
            "probe_mean_diff_cosine": directions["probe~mean_diff_at_steer_site"], "alphas": steer_md["alphas"],
            "typical_norm": steer_md["typical_norm"],
            "reward_mean": [r["reward_mean"] for r in steer_md["rows"]],
            "effect": [r["effect"] for r in steer_md["rows"]],
            "grammatical_rate": [r.get("grammatical_rate") for r in steer_md["rows"]],
            "kl_neutral": [r["kl_neutral"] for r in steer_md["rows"]],
            "random_max_abs_effect": steer_md["summary"]["random_max_abs_effect"],
            "summary": steer_md["summary"],
            "probe_direction_reward_mean": [r["reward_mean"] for r in steer_probe["rows"]],
            "plot": "steer-mean-diff/dose_response.png",
        },
        "config": asdict(cfg), "n_records": len(records),
    }
    write_json(out / "study.json", results)
    return results
