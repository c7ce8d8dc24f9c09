"""The `probes` stage: reward probes and steering on the main policy, the numbers of research
questions 1, 2, 3 and 7.

1. Records: `samples_per_prompt` completions per training prompt from the policy and as many from
   the base model (so the reward varies), scored with the true reward and the implicit reward
   log pi_policy - log pi_base.
2. Activations of both models on the same records at every site x `positions` (`acts`), a ridge
   probe per cell (`probes.sweep`): the best cell chosen on validation prompts and reported on test
   prompts with the control task (selectivity), the baselines it must beat (length, bag of tokens,
   the embedding-layer probe) and the prompt-only probe with its own baselines; the base model beside it.
3. Cross-signals on the test prompts: Spearman among probe, implicit reward, true reward and (for a
   PPO policy) the value head; cosines among the probe direction, the difference-of-means direction
   and the value head direction, each in the basis it lives in (`probes.cross`).
4. Steering on held-out prompts (`steer.dose_response`) at `steer_site` (default the last block's
   resid_post, completion positions), with shared random controls, grammaticality from the review
   world's grammar, else perplexity; effects over random are read only at alphas whose fluency holds
   (`steer.fluency`), and every steered text is saved (`steered_texts`). Three directions, from all the records (training prompts):
   - "mean_diff" (the headline): mean activation at `steer_position` of the base model's samples
     above the median reward minus those below, read through the policy (the policy's own samples
     are nearly all positive and differ from the base's in style as well as reward);
   - "reward_gradient": the score-function estimate of d E[reward] / d v from the policy's samples,
     the causal reference the others are compared with;
   - "probe": the ridge probe fitted at the steering site.
5. Kinds of reward probe (`probes.kinds`), on the policy's activations at `kinds_position`: a rating
   probe (ridge on the records' true reward), a winner/loser probe (logistic, chosen vs rejected) and
   a Bradley-Terry probe (logistic on chosen - rejected, no intercept) on preference pairs (the pairs
   stage's first `kinds_pairs`, else each training prompt's best and worst record), the site chosen
   on validation prompts: their directions' cosines and each one's test score on the three tasks,
   beside the same three probes on the bag of words.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardlab import stats
from rewardlab.acts import CacheConfig, cache_activations, collect_activations, parse_position
from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.errors import InputError, raise_first_failed
from rewardlab.io import read_jsonl, write_json, write_jsonl
from rewardlab.probes.cross import cosine, mean_difference_direction, signal_correlations
from rewardlab.probes import kinds
from rewardlab.probes.linear import Probe, fit_ridge, load_probe
from rewardlab.probes.splits import grouped_split
from rewardlab.probes.sweep import SweepConfig, sweep
from rewardlab.report import figures
from rewardlab.rewards import get_reward
from rewardlab.rl.config import sampling_checks
from rewardlab.rl.value_head import load_value_head
from rewardlab.sampling import generate
from rewardlab.schema import from_json
from rewardlab.sites import all_sites, n_layers, parse_site
from rewardlab.text import prompt_id
from rewardlab.stages import pairs as pairs_stage
from rewardlab.stages import ppo as ppo_stage
from rewardlab.stages.common import (Context, Planner, RunConfig, check_file, load_policy_and_base, main_policy,
                                     run_prompts)
from rewardlab.stats import Estimate
from rewardlab.steer import WHERE, SteerConfig, dose_response, reward_gradient_direction
from rewardlab.world import is_grammatical

NAME = "probes"
ARTIFACTS = {"records": "records.jsonl", "probe_heatmap_policy_png": "sweep/heatmap-policy.png",
             "probe_heatmap_base_png": "sweep/heatmap-base.png", "probe": "sweep/probe-policy.safetensors",
             "steering": "steer/steering.json", "dose_response_png": "steer/dose_response.png",
             "steered_texts": "steer/steered.jsonl"}


@dataclass
class Config:
    samples_per_prompt: int = 4    # completions per model and training prompt
    n_prompts: int = 256           # training prompts used (the first n)
    max_new_tokens: int = 32       # length cap of every sampled completion, tokens
    temperature: float = 1.0       # sampling temperature
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1.0: off
    positions: tuple = ("last_completion", "mean_completion", "last_prompt")  # probed token positions
    sites: str = "all"             # "all" or comma-separated site names
    steer_site: str = "last_resid_post"  # a site name, "best" (the best probe's) or the last block's resid_post
    # (late sites write the next token; the best probe cell may be an input-side site such as the
    # embeddings, where adding "a positive word was read" lowers reward)
    steer_position: str = "mean_completion"  # records' activations the mean_diff direction and the
    # steering-site probe are computed from
    steer_alphas: tuple[float, ...] = (-0.1, -0.05, 0.0, 0.025, 0.05, 0.075, 0.1)  # x the site's typical norm
    steer_where: str = "completion"  # the positions steered: completion (the tokens it picks) or all
    n_steer_prompts: int = 128     # held-out prompts for steering
    steer_samples_per_prompt: int = 4  # samples per prompt and alpha (CIs resample prompts)
    n_random: int = 8              # random control directions
    batch_size: int = 64           # sequences per forward pass
    seed: int = 0                  # sampling, split and bootstrap seed (the run's seed)
    n_boot: int = 1000             # bootstrap resamples per CI
    kinds_position: str = "mean_completion"  # records' position of the rating vs winner/loser vs Bradley-Terry
    # probes (one of `positions`, a completion position)
    kinds_pairs: int = 512         # preference pairs read (the first n); 0: no comparison of probe kinds
    kinds_n_refit: int = 100       # refits on resampled training prompts for the CIs of the kinds' cosines,
    # and random halvings of them for the split-half cosines
    pairs: str | None = None       # preference pairs JSONL (prompt, chosen, rejected); filled in with the pairs
    # stage's when the run has one; None: each training prompt's best and worst record
    device: str | None = None      # None: an accelerator if there is one, else CPU

    def validate(self) -> None:
        for p in (*self.positions, self.steer_position):
            parse_position(p)
        raise_first_failed([
            (self.kinds_pairs == 0 or (self.kinds_position in self.positions
                                       and self.kinds_position not in ("last_prompt", "tokens")),
             f"kinds_position {self.kinds_position!r} must be a completion position among positions "
             f"{list(self.positions)}", "add it to positions, or set kinds_pairs to 0"),
            (self.kinds_pairs >= 0 and self.kinds_n_refit >= 1,
             "kinds_pairs must be at least 0 and kinds_n_refit at least 1", None),
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


@dataclass
class Comparison:
    """A probe against the strongest of its baselines (the one with the highest test Spearman)."""

    baseline: str
    difference: Estimate           # Spearman(probe) - Spearman(baseline), paired bootstrap over test prompts


@dataclass
class PromptOnlyProbe:
    """The best probe at the last prompt token: the completion's reward before any of it is written."""

    site: str
    spearman: Estimate             # test Spearman with the completion's true reward
    baselines: dict[str, Estimate]  # their test Spearman: bag of the prompt's tokens, embedding-layer probe
    versus_baselines: Comparison


@dataclass
class ValueHeadReadout:
    site: str                      # the site the PPO value head reads
    kind: str                      # linear or mlp
    d_model: int                   # the width of its site
    direction: str                 # how its direction was taken: weight or mean input gradient
    cosine_with_probe_at_value_site: float
    spearman_true_test: Estimate   # its predictions against the true reward on test prompts
    note: str


@dataclass
class ProbeSection:
    best_site: str                 # the best cell, chosen by validation Spearman
    best_position: str | int
    spearman: Estimate             # test Spearman of the best cell's probe with the true reward
    selectivity: Estimate          # minus the control task's (shuffled labels), paired bootstrap
    control_spearman: float
    versus_baselines: Comparison   # against length, bag of tokens, the embedding-layer probe
    base_model_spearman: Estimate  # the same sweep on the base model
    base_model_best_site: str
    probe_mean_diff_cosine: float  # the probe's direction against the high-minus-low mean difference
    metrics_test: dict[str, Estimate]
    baselines_test: dict[str, dict[str, Estimate]]
    cosines: dict[str, float]
    correlations_test: dict[str, Estimate]  # Spearman between signals: probe, true and implicit reward, value head
    prompt_only: PromptOnlyProbe | None = None
    value_head: ValueHeadReadout | None = None


@dataclass
class SteeringSummary:
    """One direction against the random controls (`steer.summarize`), read only at alphas whose
    fluency holds: "max alpha" is alpha_up, the largest positive fluent alpha, "min alpha" alpha_down,
    the most negative fluent one (None when no such alpha keeps fluency)."""

    positive_alphas: int
    monotone_positive: bool
    negative_lowers: bool | None
    fluent: list[bool]             # per alpha: fluency within its bound (`steer.fluency`)
    alpha_up: float | None
    fluency_up: float | None       # the fluency measure there
    alpha_down: float | None
    fluency_down: float | None
    effect_at_max_alpha: float | None  # at alpha_up
    random_max_abs_effect: float | None  # the largest mean |effect| of the random directions there
    effect_over_random: float | None
    effect_at_min_alpha: float | None  # at alpha_down
    effect_over_random_at_min_alpha: float | None
    random_max_abs_effect_per_alpha: list[float]


@dataclass
class DirectionCurve:
    """Per alpha (the section's `alphas`), mean over steered samples (CIs resample prompts)."""

    reward_mean: list[Estimate]    # true reward
    effect: list[Estimate]         # true reward minus the unsteered sample's
    kl_neutral: list[Estimate | float]  # next-token KL(steered || unsteered) on the prompts, nats (0 at alpha 0)
    summary: SteeringSummary
    fluency: list[float]           # grammatical rate, or perplexity / the unsteered perplexity
    fluent: list[bool]             # fluency within its bound (the section's fluency_bound)
    probe_score: list[Estimate] | None = None
    implicit_reward: list[Estimate] | None = None
    grammatical_rate: list[Estimate] | None = None  # review world
    perplexity: list[float] | None = None  # elsewhere: under the unsteered policy


@dataclass
class SteeringSection:
    site: str
    direction: str                 # the headline direction
    position: str                  # the records' position its direction was taken at
    where: str                     # the positions steered
    alphas: list[float]            # multiples of the site's typical norm
    typical_norm: float
    n: int                         # steered samples per alpha
    n_prompts: int
    fluency_bound: str             # when an alpha keeps fluency (the headline reads only those)
    alpha_up: float | None         # the largest positive alpha whose fluency holds (headline direction)
    fluency_up: float | None
    effect_at_max_alpha: Estimate | None  # the headline direction's, at alpha_up
    effect_over_random: float | None  # that effect over the largest random effect there
    random_max_abs_effect: float | None
    alpha_down: float | None       # the most negative alpha whose fluency holds
    fluency_down: float | None
    effect_at_min_alpha: Estimate | None  # at alpha_down
    effect_over_random_at_min_alpha: float | None
    directions: dict[str, DirectionCurve]
    random_effects: list[list[float]]  # [n_random][n_alphas] mean effect of each random direction
    cosines: dict[str, float]      # among the directions, at the steering site


@dataclass
class ProbeKindsSection:
    """Rating (ridge on the true reward), winner/loser (logistic: chosen 1, rejected 0) and Bradley-Terry
    (logistic on chosen - rejected, no intercept) probes on the policy's activations at one site
    (`probes.kinds`); rows "bag_of_words:KIND" fit the same on the text's word counts."""

    site: str                      # chosen on validation prompts: the three probes' mean own-task score
    position: str
    pairs_source: str              # where the preference pairs come from
    n_rows: dict[str, int]         # rated completions per part (train, val, test)
    n_pairs: dict[str, int]        # preference pairs per part
    l2: dict[str, float]           # each probe's penalty, chosen by its own task's validation score
    val: dict[str, float]          # that validation score (rating: Spearman, winner_loser: AUC, pair: accuracy)
    site_val_scores: dict[str, float]  # per site: mean of the three on a correlation's scale (2 AUC - 1 ...)
    cosines: dict[str, Estimate]   # "a~b": cosine of the probe directions (raw basis), fitted on training prompts
    cosine_ci: str                 # how the cosines' CIs are made
    split_half: dict[str, dict[str, Estimate]]  # fits on disjoint halves of the training prompts: self (same
    # kind), across (two kinds), disattenuated (across / sqrt(self_a self_b)); interval: spread over halvings
    scores: dict[str, dict[str, Estimate]]  # row (probe or bag_of_words:KIND) -> task -> test score
    versus_text: dict[str, Estimate]  # per task: its own probe minus the bag-of-words probe of that kind, paired


@dataclass
class Results:
    probe: ProbeSection
    steering: SteeringSection
    probe_kinds: ProbeKindsSection | None = None


def plan(run: RunConfig, p: Planner) -> None:
    if run.probes is None and run.sae is None:
        return
    policy = main_policy(p.models)
    if policy is None:
        raise InputError("the probe and SAE stages need a post-trained model", f"{p.where}.probes",
                         "add a ppo or dpo section, or models.post")
    values = dict(run.probes or {})
    if p.setting is not None:
        values.setdefault("device", p.setting.device)
    cfg = p.config(Config, NAME, values, seed=run.seed)
    if cfg.steer_site not in ("best", "last_resid_post"):
        p.check_site(cfg.steer_site, "probes.steer_site")
    for site in ([] if cfg.sites == "all" else cfg.sites.split(",")):
        p.check_site(site.strip(), "probes.sites")
    check_value_site(cfg, p)
    inputs = {"base": Path(p.base), "policy": Path(policy), **p.data_inputs()}
    if cfg.kinds_pairs and any(s.name == pairs_stage.NAME for s in p.stages):
        pairs_file = p.stage_dir(pairs_stage.NAME) / pairs_stage.ARTIFACTS["pairs"]
        cfg = p.config(Config, NAME, values, seed=run.seed, pairs=str(pairs_file))
        inputs["pairs"] = p.stage_dir(pairs_stage.NAME)
    elif cfg.kinds_pairs and cfg.pairs is not None:
        check_file(cfg.pairs, f"{p.where}.probes.pairs")
        inputs["pairs"] = Path(cfg.pairs)
    p.add(NAME, cfg, inputs)


def check_value_site(cfg: Config, p: Planner) -> None:
    """With a PPO stage in the run, the value-head readout needs the head's site at the last completion
    token in the activation cache: InputError at config check when `sites` or `positions` leave it out."""
    ppo = next((s.config for s in p.stages if s.name == ppo_stage.NAME), None)
    if ppo is None:
        return
    depth = p.n_blocks if p.n_blocks is not None else sys.maxsize
    where, value_site = f"{p.where}.probes", parse_site(ppo.value_site, depth).name
    if cfg.sites != "all" and value_site not in {parse_site(s.strip(), depth).name for s in cfg.sites.split(",")}:
        raise InputError(f"probes.sites leaves out {value_site}, the site the PPO value head reads", f"{where}.sites",
                         f"add {value_site} to probes.sites (or use all), or set ppo.value_site to a probed site")
    if "last_completion" not in cfg.positions:
        raise InputError("probes.positions leaves out last_completion, where the PPO value head reads",
                         f"{where}.positions", "add last_completion to probes.positions")


def sample_records(models: dict, tokenizer, prompts: Sequence[str], cfg: Config) -> list[dict]:
    """`samples_per_prompt` completions of each prompt from each model, tagged with its `source`."""
    records = []
    for k, (name, model) in enumerate(models.items()):
        repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        samples = generate(model, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           generator=torch.Generator().manual_seed(cfg.seed + k), batch_size=cfg.batch_size,
                           desc=f"sampling ({name})")
        records += [{"prompt": s.prompt, "completion": s.completion, "source": name} for s in samples]
    return records


def scored_records(path: Path, policy, base, tokenizer, prompts, reward, cfg: Config) -> list[dict]:
    """The records at `path`, sampled and scored (true and implicit reward) when not there yet."""
    if path.is_file():
        return read_jsonl(path)
    records = sample_records({"policy": policy, "base": base}, tokenizer, list(prompts)[:cfg.n_prompts], cfg)
    true = reward([r["completion"] for r in records])
    implicit = implicit_rewards(base, policy, tokenizer, [r["prompt"] for r in records],
                                [r["completion"] for r in records], ScoreConfig(batch_size=cfg.batch_size))
    for r, t, i in zip(records, true, implicit):
        r["reward"], r["implicit_reward"] = t, i["implicit_reward"]
        r["from_policy"] = r["source"] == "policy"
    write_jsonl(path, records)
    return records


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


def value_head_readout(head, store, split, y: np.ndarray, l2: float, cosines: dict, cfg: Config
                       ) -> tuple[ValueHeadReadout, np.ndarray]:
    """The value head's predictions [n_rows], and its direction against a probe and the mean
    difference at its own site (added to `cosines`)."""
    predictions = value_head_predictions(head, store)
    groups = np.asarray(store.prompt_ids)
    x = store.load(head.site, "last_completion").double().numpy()
    direction, how = value_head_direction(head, x[split.train])
    probe = fit_ridge(x[split.train], y[split.train], l2=l2)
    cosines["value_head~probe_at_value_site"] = cosine(direction, probe.direction())
    cosines["value_head~mean_diff_at_value_site"] = cosine(
        direction, mean_difference_direction(x[split.train], y[split.train]))
    return ValueHeadReadout(
        site=head.site, kind=head.kind, d_model=x.shape[1], direction=how,
        cosine_with_probe_at_value_site=cosines["value_head~probe_at_value_site"],
        spearman_true_test=stats.spearman(y[split.test], predictions[split.test], groups=groups[split.test],
                                          n_boot=cfg.n_boot),
        note=f"the value head reads {head.site}: directions compare only within one site, predictions compare "
             "anywhere"), predictions


def probe_section(swept: dict, stores: dict, probe: Probe, value_head_file: Path | None, cfg: Config
                  ) -> tuple[ProbeSection, dict]:
    """The probe section from the sweep, with the cross-signals on test prompts; also the cosines."""
    post = swept["models"]["policy"]
    best = post["best"]
    store = stores["policy"]
    split = grouped_split(store.prompt_ids, SweepConfig().fractions, cfg.seed)
    groups = np.asarray(store.prompt_ids)
    y = store.field("reward")
    x_best = store.load(best["site"], best["position"]).double().numpy()
    signals = {"probe": probe.predict(x_best), "true_reward": y, "implicit_reward": store.field("implicit_reward")}
    cosines = {"probe~mean_diff": cosine(probe.direction(),
                                         mean_difference_direction(x_best[split.train], y[split.train]))}
    value_head = None
    if value_head_file is not None:
        value_head, signals["value_head"] = value_head_readout(load_value_head(value_head_file), store, split, y,
                                                               best["l2"], cosines, cfg)
    test = split.test
    correlations = signal_correlations({k: v[test] for k, v in signals.items()}, groups[test], n_boot=cfg.n_boot,
                                       seed=cfg.seed)
    prompt_only = post.get("prompt_only")
    base_best = swept["models"]["base"]["best"]
    section = ProbeSection(
        best_site=best["site"], best_position=best["position"], spearman=from_json(Estimate, best["test"]["spearman"]),
        selectivity=from_json(Estimate, best["selectivity"]), control_spearman=best["control_spearman"],
        versus_baselines=from_json(Comparison, best["versus_baselines"]),
        base_model_spearman=from_json(Estimate, base_best["test"]["spearman"]), base_model_best_site=base_best["site"],
        probe_mean_diff_cosine=cosines["probe~mean_diff"],
        metrics_test=from_json(dict[str, Estimate], best["test"]),
        baselines_test=from_json(dict[str, dict[str, Estimate]], post["baselines"]),
        cosines=cosines, correlations_test=from_json(dict[str, Estimate], correlations),
        prompt_only=None if prompt_only is None else PromptOnlyProbe(
            site=prompt_only["site"], spearman=from_json(Estimate, prompt_only["test"]["spearman"]),
            baselines={k: from_json(Estimate, v["spearman"]) for k, v in prompt_only["baselines"].items()},
            versus_baselines=from_json(Comparison, prompt_only["versus_baselines"])),
        value_head=value_head)
    return section, cosines


def best_and_worst(records: list[dict]) -> list[tuple[int, int]]:
    """Per prompt (in order of first appearance): the indices of its highest- and lowest-reward records
    (the first of equals); a prompt whose records all score the same gives none (the pairs stage's rule)."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_prompt.setdefault(r["prompt"], []).append(i)
    out = []
    for idx in by_prompt.values():
        rewards = [records[i]["reward"] for i in idx]
        if max(rewards) > min(rewards):
            out.append((idx[int(np.argmax(rewards))], idx[int(np.argmin(rewards))]))
    return out


def kind_datas(policy, tokenizer, records: list[dict], store, cfg: Config
               ) -> tuple[dict[str, kinds.KindData], list[str], list[str], str]:
    """Per site of `store`, the records (rated rows) and the preference pairs in the policy's
    activations at `kinds_position`; the pairs' chosen and rejected texts; where the pairs come from."""
    pos = parse_position(cfg.kinds_position)
    y, groups = store.field("reward"), np.asarray(store.prompt_ids)
    rated = {site: store.load(site, pos).double().numpy() for site in store.sites}
    if cfg.pairs is not None:
        rows = read_jsonl(cfg.pairs, required=("prompt", "chosen", "rejected"))[:cfg.kinds_pairs]
        chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
        acts = collect_activations(policy, tokenizer, [{"prompt": r["prompt"], "completion": t}
                                                       for r, t in zip(rows + rows, chosen + rejected)],
                                   store.sites, [pos], cfg.batch_size)
        n = len(rows)
        pair_x = {site: (acts[f"{site}|{pos}"][:n].double().numpy(), acts[f"{site}|{pos}"][n:].double().numpy())
                  for site in store.sites}
        pair_groups = np.asarray([prompt_id(r["prompt"]) for r in rows])
        source = f"{cfg.pairs}: its first {n} pairs, read through the policy"
    else:
        picked = best_and_worst(records)[:cfg.kinds_pairs]
        best, worst = [b for b, _ in picked], [w for _, w in picked]
        chosen, rejected = [records[i]["completion"] for i in best], [records[i]["completion"] for i in worst]
        pair_x = {site: (x[best], x[worst]) for site, x in rated.items()}
        pair_groups = groups[best]
        source = f"the records: each training prompt's best and worst record by true reward ({len(picked)} pairs)"
    datas = {site: kinds.KindData(x, y, groups, *pair_x[site], pair_groups) for site, x in rated.items()}
    return datas, chosen, rejected, source


def kinds_section(policy, tokenizer, records: list[dict], store, cfg: Config) -> ProbeKindsSection:
    """Rating vs winner/loser vs Bradley-Terry probes on the policy's activations (`probes.kinds`)."""
    datas, chosen, rejected, source = kind_datas(policy, tokenizer, records, store, cfg)
    first = next(iter(datas.values()))
    sweep_cfg = SweepConfig()
    try:
        split = kinds.kind_split(first.groups, first.pair_groups, sweep_cfg.fractions, cfg.seed)
    except InputError as err:
        raise InputError(err.what, "probes.kinds_pairs", "give more prompts and pairs, or set probes.kinds_pairs "
                         "to 0 to skip the comparison of probe kinds") from None
    words = kinds.bag_of_words_data([r["completion"] for r in records], chosen, rejected, first, split)
    out = kinds.compare_kinds(datas, words, split, sweep_cfg.l2_grid, cfg.n_boot, cfg.kinds_n_refit, cfg.seed)
    return ProbeKindsSection(
        site=out["site"], position=cfg.kinds_position, pairs_source=source, n_rows=out["n"]["rows"],
        n_pairs=out["n"]["pairs"], l2=out["l2"], val=out["val"], site_val_scores=out["site_val_scores"],
        cosines=out["cosines"],
        cosine_ci=f"percentile, {cfg.kinds_n_refit} refits of the three probes (penalties fixed) on resamples "
                  "with replacement of the training prompts (noise pulls refitted cosines toward 0: the interval sits "
                  "low; split_half gives the noise ceiling)", split_half=out["split_half"],
        scores=out["scores"], versus_text=out["versus_text"])


def steering_directions(policy, tokenizer, records: list[dict], store, steer_site: str, l2: float, cfg: Config
                        ) -> dict[str, np.ndarray]:
    """The mean_diff, reward_gradient and probe directions at the steering site, [d] each."""
    y = store.field("reward")
    x = store.load(steer_site, cfg.steer_position).double().numpy()
    from_base = np.asarray([r["source"] == "base" for r in records])  # every record is from a training prompt
    from_policy = np.flatnonzero(~from_base)
    return {
        "mean_diff": mean_difference_direction(x[from_base], y[from_base]),
        "reward_gradient": reward_gradient_direction(
            policy, tokenizer, [records[i]["prompt"] for i in from_policy],
            [records[i]["completion"] for i in from_policy], y[from_policy], steer_site, cfg.steer_where,
            cfg.batch_size),
        "probe": fit_ridge(x, y, l2=l2, meta={"site": steer_site, "position": cfg.steer_position}).direction(),
    }


def direction_curve(entry: dict) -> DirectionCurve:
    """One direction of a `steer.dose_response` result ({"rows", "summary"}) as its typed curve."""
    rows = entry["rows"]
    columns = {k: [r[k] for r in rows] for k in ("probe_score", "implicit_reward", "grammatical_rate",
                                                 "perplexity") if k in rows[0]}
    return from_json(DirectionCurve, {"reward_mean": [r["reward_mean"] for r in rows],
                                      "effect": [r["effect"] for r in rows],
                                      "kl_neutral": [r["kl_neutral"] for r in rows],
                                      "fluency": [r["fluency"] for r in rows], "fluent": [r["fluent"] for r in rows],
                                      "summary": entry["summary"], **columns}, "steering")


def steering_section(steered: dict, site: str, n: int, n_prompts: int, cosines: dict, cfg: Config
                     ) -> SteeringSection:
    headline = steered["directions"]["mean_diff"]
    summary = headline["summary"]
    effect = {r["alpha"]: from_json(Estimate, r["effect"]) for r in headline["rows"]}
    return SteeringSection(
        site=site, direction="mean_diff", position=cfg.steer_position, where=cfg.steer_where,
        alphas=steered["alphas"], typical_norm=steered["typical_norm"], n=n, n_prompts=n_prompts,
        fluency_bound=headline["rows"][0]["fluency_measure"],
        alpha_up=summary["alpha_up"], fluency_up=summary["fluency_up"],
        effect_at_max_alpha=effect.get(summary["alpha_up"]), effect_over_random=summary["effect_over_random"],
        random_max_abs_effect=summary["random_max_abs_effect"],
        alpha_down=summary["alpha_down"], fluency_down=summary["fluency_down"],
        effect_at_min_alpha=effect.get(summary["alpha_down"]),
        effect_over_random_at_min_alpha=summary["effect_over_random_at_min_alpha"],
        directions={name: direction_curve(entry) for name, entry in steered["directions"].items()},
        random_effects=steered["random_effects"],
        cosines={k: v for k, v in cosines.items() if k.endswith("_at_steer_site")})


def save_heatmaps(swept: dict, folder: Path) -> None:
    """Each swept model's cells (`probes.sweep.sweep`), drawn by `report.figures.probe_heatmap`, as
    `folder`/heatmap-{model}.png."""
    target = swept["config"]["target"]
    for name, result in swept["models"].items():
        figures.save_png(figures.probe_heatmap(result["cells"], f"{name}: validation Spearman of {target}"),
                         folder / f"heatmap-{name}.png")


def save_dose_response(steered: dict, path: Path) -> None:
    """A dose-response (`steer.dose_response`), drawn by `report.figures.dose_response`, as the PNG `path`."""
    curves = {name: ([r["reward_mean"]["value"] for r in d["rows"]], [tuple(r["reward_mean"]["ci"]) for r in d["rows"]])
              for name, d in steered["directions"].items()}
    figures.save_png(figures.dose_response(steered["alphas"], curves, steered["random_effects"],
                                           steered["config"]["site"]), path)


def run(cfg: Config, ctx: Context) -> Results:
    policy_path, base_path = ctx.main_policy(), ctx.models["base"]
    policy, base, tokenizer = load_policy_and_base(ctx, cfg.device)
    prompts, heldout = run_prompts(ctx)
    if ctx.setting is None:
        reward, checker = get_reward("utility"), is_grammatical
    else:
        reward, checker = get_reward(ctx.setting.reward, device=cfg.device), None
    out = ctx.out
    records = scored_records(out / ARTIFACTS["records"], policy, base, tokenizer, prompts, reward, cfg)
    sites = all_sites(policy) if cfg.sites == "all" else cfg.sites.split(",")
    cache_cfg = CacheConfig(sites=sites, positions=list(cfg.positions), batch_size=cfg.batch_size)
    stores = {"policy": cache_activations(policy, tokenizer, records, out / "acts-policy", cache_cfg, str(policy_path)),
              "base": cache_activations(base, tokenizer, records, out / "acts-base", cache_cfg, str(base_path))}
    swept = sweep(stores, SweepConfig(target="reward", seed=cfg.seed, n_boot=cfg.n_boot), out / "sweep")
    save_heatmaps(swept, out / "sweep")
    best = swept["models"]["policy"]["best"]
    probe = load_probe(out / ARTIFACTS["probe"])
    value_head_file = ctx.artifact(ppo_stage.NAME, "value_head") if "ppo" in ctx.models else None
    probe_results, cosines = probe_section(swept, stores, probe, value_head_file, cfg)
    probe_kinds = kinds_section(policy, tokenizer, records, stores["policy"], cfg) if cfg.kinds_pairs else None
    steer_site = {"best": best["site"], "last_resid_post": f"blocks.{n_layers(policy) - 1}.hook_resid_post"}.get(
        cfg.steer_site, cfg.steer_site)
    directions = steering_directions(policy, tokenizer, records, stores["policy"], steer_site, best["l2"], cfg)
    for a, b in (("mean_diff", "reward_gradient"), ("probe", "reward_gradient"), ("probe", "mean_diff")):
        cosines[f"{a}~{b}_at_steer_site"] = cosine(directions[a], directions[b])
    steer_prompts = [p for p in list(heldout)[:cfg.n_steer_prompts] for _ in range(cfg.steer_samples_per_prompt)]
    steer_cfg = SteerConfig(site=steer_site, alphas=tuple(cfg.steer_alphas), where=cfg.steer_where,
                            n_random=cfg.n_random, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                            n_boot=cfg.n_boot)
    steered = dose_response(policy, tokenizer, steer_prompts, directions, steer_cfg, reward, probe=probe,
                            base=base, checker=checker)
    write_jsonl(out / ARTIFACTS["steered_texts"], steered.pop("samples"))
    write_json(out / ARTIFACTS["steering"], steered)
    save_dose_response(steered, out / ARTIFACTS["dose_response_png"])
    return Results(probe_results, steering_section(steered, steer_site, len(steer_prompts), len(set(steer_prompts)),
                                                   cosines, cfg), probe_kinds)
