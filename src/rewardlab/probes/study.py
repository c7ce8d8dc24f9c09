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
4. Steering on held-out prompts (`steer.dose_response`, `steer_samples_per_prompt` samples each) at
   `steer_site` (default the last block's resid_post, completion positions), with shared random
   controls, grammaticality checked with `checker` (the review world's grammar), else perplexity.
   Three directions, from all the records (training prompts; steering runs on held-out ones):
   - "mean_diff" (the headline): mean activation at `steer_position` of the base model's samples
     above the median reward minus those below, read through the policy. Base samples, because the
     policy's own are nearly all positive and differ from the base's in style as well as reward.
   - "reward_gradient": the score-function estimate of d E[reward] / d v from the policy's samples
     (`steer.reward_gradient_direction`): the causal reference the others are compared with.
   - "probe": the ridge probe fitted at the steering site.
   Their cosines are reported. On the review-world PPO policy the mean_diff direction raises reward
   but sits at cosine about 0.65 with the gradient: the gradient also prefers sentence templates
   (intensifier routes) over which sentiment words to write, which the high-vs-low contrast misses.
   To first order a direction's effect over the largest of 8 random ones is about
   cosine * sqrt(d_model) / 2 (module `steer`), about 3.7 at cosine 0.65 and d_model 128; measured
   1.9 at alpha 0.1 (4.1 for the gradient itself, where an exact gradient would give about 6: the
   estimate is noisy, so cosines with it understate how far a direction is from the true one).
   The alphas are small (at most 0.1 of the typical norm), where grammar holds; beyond that random
   directions lower the reward of the already optimized policy nearly as fast as any direction
   raises it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rewardlab.errors import raise_first_failed
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
    steer_position: str = "mean_completion"  # records' activations the mean_diff direction and the
    # steering-site probe are computed from
    steer_alphas: tuple[float, ...] = (-0.1, -0.05, 0.0, 0.025, 0.05, 0.075, 0.1)  # x typical norm
    steer_where: str = "completion"  # the positions that pick tokens
    n_steer_prompts: int = 128  # held-out prompts for steering
    steer_samples_per_prompt: int = 4  # samples per prompt and alpha (CIs resample prompts)
    n_random: int = 8
    batch_size: int = 64
    seed: int = 0
    n_boot: int = 1000
    device: str | None = None

    def validate(self) -> None:
        from rewardlab.acts import parse_position
        from rewardlab.rl.config import sampling_checks
        from rewardlab.steer import WHERE

        for p in (*self.positions, self.steer_position):
            parse_position(p)
        raise_first_failed([
            (min(self.samples_per_prompt, self.n_prompts, self.n_steer_prompts, self.steer_samples_per_prompt,
                 self.batch_size, self.n_boot, self.n_random) >= 1,
             "samples_per_prompt, n_prompts, n_steer_prompts, steer_samples_per_prompt, batch_size, n_boot and "
             "n_random must be at least 1", None),
            (0.0 in self.steer_alphas and all(math.isfinite(a) for a in self.steer_alphas),
             f"steer_alphas must be finite and include 0 (the unsteered reference), got {list(self.steer_alphas)}",
             None),
            (self.steer_where in WHERE, f"unknown steer_where {self.steer_where!r}", f"use {' or '.join(WHERE)}"),
            *sampling_checks(self),
        ], "probe study config")


def _sample_records(models: dict, tokenizer, prompts: Sequence[str], cfg: StudyConfig) -> list[dict]:
    from rewardlab.sampling import generate

    records = []
    for k, (name, model) in enumerate(models.items()):
        repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        samples = generate(model, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           generator=torch.Generator().manual_seed(cfg.seed + k), batch_size=cfg.batch_size,
                           desc=f"sampling ({name})")
        records += [{"prompt": s.prompt, "completion": s.completion, "source": name} for s in samples]
    return records


def sites_resid_post(model) -> str:
    """The last block's resid_post site name."""
    from rewardlab.sites import n_layers

    return f"blocks.{n_layers(model) - 1}.hook_resid_post"


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
                    out: str | Path, cfg: StudyConfig = StudyConfig(), value_head_path=None,
                    reward: str | Callable[[list[str]], list[float]] = "utility",
                    checker: Callable[[str, str], bool] | None = None, dtype: str = "float32") -> dict:
    """Run the study (module docstring); write its artifacts into `out`; return the results sections.

    reward: the true reward, a `get_reward` spec or a function of texts; checker(completion, prompt):
    grammaticality for steering (the review world's `is_grammatical`), None: perplexity."""
    from rewardlab import stats
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
    from rewardlab.models import load_model
    from rewardlab.probes.cross import cosine, mean_difference_direction, signal_correlations
    from rewardlab.probes.linear import fit_ridge, load_probe
    from rewardlab.probes.splits import grouped_split
    from rewardlab.probes.sweep import SweepConfig, sweep
    from rewardlab.rewards import get_reward
    from rewardlab.rl.value_head import load_value_head
    from rewardlab.sites import all_sites
    from rewardlab.steer import SteerConfig, dose_response, reward_gradient_direction

    cfg.validate()
    out = Path(out)
    policy, tokenizer = load_model(policy_path, device=cfg.device, dtype=dtype)
    base, _ = load_model(base_path, device=cfg.device, dtype=dtype)
    reward = get_reward(reward, device=cfg.device) if isinstance(reward, str) else reward
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
    from_base = np.asarray([r["source"] == "base" for r in records])  # every record is from a training prompt
    from_policy = np.flatnonzero(~from_base)
    steer_probe_fit = fit_ridge(x_steer, y, l2=best["l2"], meta={"site": steer_site, "position": cfg.steer_position})
    steer_directions = {
        "mean_diff": mean_difference_direction(x_steer[from_base], y[from_base]),
        "reward_gradient": reward_gradient_direction(
            policy, tokenizer, [records[i]["prompt"] for i in from_policy],
            [records[i]["completion"] for i in from_policy], y[from_policy], steer_site, cfg.steer_where,
            cfg.batch_size),
        "probe": steer_probe_fit.direction(),
    }
    for a, b in (("mean_diff", "reward_gradient"), ("probe", "reward_gradient"), ("probe", "mean_diff")):
        directions[f"{a}~{b}_at_steer_site"] = cosine(steer_directions[a], steer_directions[b])
    steer_prompts = [p for p in list(heldout_prompts)[:cfg.n_steer_prompts] for _ in range(cfg.steer_samples_per_prompt)]
    steer_cfg = SteerConfig(site=steer_site, alphas=tuple(cfg.steer_alphas), where=cfg.steer_where,
                            n_random=cfg.n_random, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                            n_boot=cfg.n_boot)
    steered = dose_response(policy, tokenizer, steer_prompts, steer_directions, steer_cfg, reward, probe=probe,
                            base=base, checker=checker, out=out / "steer")
    write_json(out / "steer" / "steering.json", steered)

    def curves(entry: dict) -> dict:
        rows = entry["rows"]
        measure = "grammatical_rate" if checker is not None else "perplexity"
        return {"reward_mean": [r["reward_mean"] for r in rows], "effect": [r["effect"] for r in rows],
                measure: [r[measure] for r in rows], "kl_neutral": [r["kl_neutral"] for r in rows],
                "probe_score": [r["probe_score"] for r in rows],
                "implicit_reward": [r["implicit_reward"] for r in rows], "summary": entry["summary"]}

    prompt_only = post.get("prompt_only", {})
    headline = steered["directions"]["mean_diff"]
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
            "site": steer_site, "direction": "mean_diff", "position": cfg.steer_position, "where": cfg.steer_where,
            "alphas": steered["alphas"], "typical_norm": steered["typical_norm"], "n": len(steer_prompts),
            "n_prompts": len(set(steer_prompts)), **curves(headline),
            "effect_at_max_alpha": max(headline["rows"], key=lambda r: r["alpha"])["effect"],
            "effect_over_random": headline["summary"]["effect_over_random"],
            "random_max_abs_effect": headline["summary"]["random_max_abs_effect"],
            "effect_at_min_alpha": min(headline["rows"], key=lambda r: r["alpha"])["effect"],
            "effect_over_random_at_min_alpha": headline["summary"]["effect_over_random_at_min_alpha"],
            "random_effects": steered["random_effects"],
            "directions": {name: curves(entry) for name, entry in steered["directions"].items()},
            "cosines": {k: v for k, v in directions.items() if k.endswith("_at_steer_site")},
            "plot": "steer/dose_response.png",
        },
        "config": asdict(cfg), "n_records": len(records),
    }
    write_json(out / "study.json", results)
    return results
