"""The `value` stage: does the policy estimate its own expected reward? The evidence of research
questions 1 and 2 against a Monte Carlo truth (`value.targets`, `value.probes`).

1. Records: `samples_per_prompt` completions of each of the first `n_prompts` training prompts,
   sampled from the policy.
2. Targets: for each record's prefixes at `positions` (the last prompt token, completion offsets),
   V_M(h) = the mean true reward of `k` continuations sampled from M, for M = the policy (post) and
   the base model, with R(h) (the reward of the words already written) and F_M(h) = V_M(h) - R(h).
3. Value probes on both models' activations at every site: per target and position class, the best
   site (chosen on validation prompts) against the strongest text-only baseline (bag of words, R(h),
   both, the embedding-layer probe; also chosen on validation), the difference on test prompts with a
   paired bootstrap CI; the cross matrix (post against base activations); with a PPO policy, its
   value head beside the best V probe; V along held-out completions (`traces`).
4. Steering along the F direction (the causal test): a ridge probe of F_post at `steer_site` (pooled
   completion positions, training prompts), added at alphas x the site's typical norm on held-out
   prompts, against random directions of the same norm (`steer.dose_response`).
5. Best-of-n on held-out prompts (`probes.best_of_n`): max(bon_ns) policy samples per prompt, the
   pick of n by the true reward (the oracle), by the implicit reward and by the run's reward probe
   (the probes stage's, when the run has one), scored by its true reward.

The answers to questions 1 and 2 read this section when a run has it (`answers.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewardlab.acts import collect_activations
from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.errors import InputError, raise_first_failed
from rewardlab.io import write_json, write_jsonl
from rewardlab.probes.best_of_n import best_of_n_table
from rewardlab.probes.linear import load_probe
from rewardlab.report import figures
from rewardlab.rewards import get_reward
from rewardlab.rl.config import sampling_checks
from rewardlab.rl.value_head import load_value_head
from rewardlab.sampling import generate
from rewardlab.schema import from_json, to_json
from rewardlab.sites import all_sites, n_layers
from rewardlab.stages import ppo as ppo_stage
from rewardlab.stages import probes as probes_stage
from rewardlab.stages.common import Context, Planner, RunConfig, load_policy_and_base, main_policy, run_prompts
from rewardlab.stages.probes import DirectionCurve, direction_curve
from rewardlab.stats import Estimate
from rewardlab.steer import SteerConfig, dose_response
from rewardlab.value.probes import (ValueProbeConfig, check_enough_prompts, collect_value_acts, future_direction,
                                    value_head_predictions, value_probe_study)
from rewardlab.value.targets import TargetsConfig, compute_targets
from rewardlab.world import is_grammatical

NAME = "value"
ARTIFACTS = {"value_records": "records.jsonl", "value_targets": "targets.jsonl", "value_study": "value_probe.json",
             "value_traces": "traces.jsonl", "value_probe_png": "value_probe.png",
             "value_traces_png": "value_traces.png", "best_of_n_samples": "best_of_n.jsonl",
             "value_steered_texts": "steered.jsonl"}


@dataclass
class Config:
    n_prompts: int = 128           # training prompts whose completions are cut into prefixes (the first n)
    samples_per_prompt: int = 4    # policy completions per prompt
    positions: tuple = ("last_prompt", 0, 2, 5, 10)  # prefix ends: last_prompt, or completion offsets >= 0
    k: int = 16                    # continuations per prefix and model (the Monte Carlo sample)
    reward: str = "utility"        # the true reward, a rewardlab.rewards.get_reward spec
    max_new_tokens: int = 32       # completion budget of records and continuations, tokens
    temperature: float = 1.0       # sampling temperature of records and continuations
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1.0: off
    sites: str = "all"             # "all" or comma-separated site names probed
    steer_site: str = "last_resid_post"  # where the F direction is fitted and added: a site, or the last
    # block's resid_post
    steer_prompts: int = 32        # held-out prompts steered along the F direction (0: skip it)
    steer_samples_per_prompt: int = 2  # samples per prompt and alpha (CIs resample prompts)
    steer_alphas: tuple[float, ...] = (-0.1, -0.05, 0.0, 0.05, 0.1)  # x the site's typical norm; must include 0
    n_random: int = 4              # random control directions of the same norm
    bon_prompts: int = 64          # held-out prompts for best-of-n selection (0: skip it)
    bon_ns: tuple[int, ...] = (1, 4, 16)  # n of best-of-n; the largest is the samples drawn per prompt
    batch_size: int = 64           # prompts per sampling batch (continuations: 8x as many rows)
    n_boot: int = 1000             # bootstrap resamples per CI
    seed: int = 0                  # sampling, split and bootstrap seed (the run's seed)
    device: str | None = None      # None: an accelerator if there is one, else CPU

    def validate(self) -> None:
        raise_first_failed([
            (min(self.n_prompts, self.samples_per_prompt, self.batch_size, self.n_boot) >= 1,
             "n_prompts, samples_per_prompt, batch_size and n_boot must be at least 1", None),
            (self.steer_prompts >= 0 and self.steer_samples_per_prompt >= 1 and self.n_random >= 1
             and 0.0 in self.steer_alphas, "steer_prompts must be >= 0, steer_samples_per_prompt and n_random >= 1, "
             f"and steer_alphas must include 0 (got {list(self.steer_alphas)})", None),
            (self.bon_prompts >= 0 and len(self.bon_ns) > 0 and min(self.bon_ns) >= 1,
             f"bon_prompts must be >= 0 and bon_ns positive, got {self.bon_prompts} and {list(self.bon_ns)}", None),
            *sampling_checks(self),
        ], "value stage config")
        check_enough_prompts(self.n_prompts, ValueProbeConfig(seed=self.seed), "value stage config.n_prompts")
        self.targets().validate()

    def targets(self) -> TargetsConfig:
        return TargetsConfig(k=self.k, positions=list(self.positions), reward=self.reward,
                             max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p, batch_size=8 * self.batch_size, seed=self.seed, threads=0)


@dataclass
class BaselineFit:
    val_spearman: float            # on validation prompts (how the strongest baseline is chosen)
    spearman: Estimate             # on test prompts


@dataclass
class ValueProbeRow:
    """One activation model x target x position class: the best site against the strongest baseline."""

    acts: str                      # whose activations: post (the policy) or base
    target: str                    # value_M (V_M) or future_M (F_M = V_M - R)
    position: str                  # last_prompt or a completion offset
    n_test: int                    # test prefixes
    n_test_prompts: int            # test prompts (the bootstrap resamples these)
    best_site: str                 # chosen by validation Spearman
    l2: float
    val_spearman: float
    spearman: Estimate             # test Spearman with the Monte Carlo target
    r2: Estimate
    baselines: dict[str, BaselineFit]  # text-only: bag_of_words, realized, bag_and_realized; embedding
    strongest_baseline: str | None  # chosen by validation Spearman
    evidence: Estimate | None      # Spearman(probe) - Spearman(strongest baseline), paired, test prompts
    verdict: str                   # beats the baseline | below the baseline | no difference detected


@dataclass
class CrossRow:
    """Per target and position: the best probe on the policy's activations against the base's."""

    target: str
    position: str
    post_site: str
    base_site: str
    post: Estimate
    base: Estimate
    post_minus_base: Estimate      # paired bootstrap over test prompts


@dataclass
class ValueHeadRow:
    """The PPO value head against the best probe of V_post at one position (same test prefixes)."""

    position: str
    target: str
    probe_site: str
    n_test: int
    probe_spearman: Estimate
    head_spearman: Estimate
    probe_rmse: Estimate           # reward units
    head_rmse: Estimate
    spearman_probe_minus_head: Estimate
    rmse_probe_minus_head: Estimate


@dataclass
class BestOfNRow:
    """Best-of-n on held-out prompts (`probes.best_of_n`: exact over every n-subset of the samples)."""

    selector: str                  # true_reward (the oracle), implicit_reward, reward_probe
    n: int
    n_prompts: int
    reward: Estimate               # mean true reward of the pick, CI over prompts
    gain_over_best_of_1: Estimate  # paired over prompts


@dataclass
class FutureSteering:
    """Steering along the direction of a ridge probe of F_post (the reward still to come) against random
    directions of the same norm (`steer.dose_response`), on held-out prompts."""

    site: str
    alphas: list[float]            # multiples of the site's typical norm
    typical_norm: float
    n: int                         # steered samples per alpha
    n_prompts: int
    probe_val_spearman: float      # the F probe's validation Spearman (pooled completion positions)
    n_train_prefixes: int
    fluency_bound: str             # when an alpha keeps fluency
    curve: DirectionCurve          # the true reward, effect, fluency per alpha; summary against random
    random_effects: list[list[float]]  # [n_random][n_alphas] mean effect of each random direction


@dataclass
class ValueProbeSection:
    k: int                         # Monte Carlo continuations per prefix and model
    n_records: int
    n_prefixes: int
    n_prompts: int
    positions: list[str]
    models: list[str]              # whose activations were probed
    targets: list[str]
    reliability: dict[str, dict[str, float]]  # target -> position -> 1 - mean se^2 / variance (noise ceiling)
    table: list[ValueProbeRow]
    cross: list[CrossRow]
    value_head: list[ValueHeadRow] | None = None
    best_of_n: list[BestOfNRow] | None = None  # by true reward, implicit reward and the run's reward probe
    steering_future: FutureSteering | None = None  # the causal test of the F direction


@dataclass
class Results:
    value_probe: ValueProbeSection


def plan(run: RunConfig, p: Planner) -> None:
    section = getattr(run, NAME, None)
    if section is None:
        return
    policy = main_policy(p.models)
    if policy is None:
        raise InputError("the value stage needs a post-trained model", f"{p.where}.{NAME}",
                         "add a ppo or dpo section, or models.post")
    values = dict(section)
    if p.setting is not None:
        values.setdefault("device", p.setting.device)
    cfg = p.config(Config, NAME, values, seed=run.seed)
    for site in ([] if cfg.sites == "all" else cfg.sites.split(",")):
        p.check_site(site.strip(), f"{NAME}.sites")
    if cfg.steer_site != "last_resid_post":
        p.check_site(cfg.steer_site, f"{NAME}.steer_site")
    probes = {"probes": p.stage_dir(probes_stage.NAME)} if run.probes is not None else {}
    p.add(NAME, cfg, {"base": Path(p.base), "policy": Path(policy), **p.data_inputs(), **probes})


def sample_policy_records(policy, tokenizer, prompts: list[str], cfg: Config) -> list[dict]:
    """`samples_per_prompt` policy completions of each prompt, as prompt/completion records."""
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    samples = generate(policy, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, generator=torch.Generator().manual_seed(cfg.seed),
                       batch_size=cfg.batch_size, desc="sampling records (policy)")
    return [{"prompt": s.prompt, "completion": s.completion} for s in samples]


def best_of_n(policy, base, tokenizer, prompts: list[str], reward, probe_file: Path | None, cfg: Config
              ) -> tuple[list[dict], list[dict]]:
    """Best-of-n by the true reward, the implicit reward and (with `probe_file`, the probes stage's
    reward probe) the probe, on max(bon_ns) policy samples of each of `prompts`: (the samples, the table)."""
    n_samples = max(cfg.bon_ns)
    repeated = [p for p in prompts for _ in range(n_samples)]
    samples = generate(policy, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, generator=torch.Generator().manual_seed(cfg.seed + 1),
                       batch_size=cfg.batch_size, desc="sampling best-of-n (policy)")
    records = [{"prompt": s.prompt, "completion": s.completion} for s in samples]
    completions = [r["completion"] for r in records]
    scores = {"true_reward": reward(completions, repeated),
              "implicit_reward": [r["implicit_reward"] for r in implicit_rewards(
                  base, policy, tokenizer, repeated, completions, ScoreConfig(batch_size=cfg.batch_size))]}
    if probe_file is not None:
        probe = load_probe(probe_file)
        site, position = probe.meta["site"], probe.meta["position"]
        acts = collect_activations(policy, tokenizer, records, [site], [position], cfg.batch_size)
        scores["reward_probe"] = probe.predict(acts[f"{site}|{position}"].double().numpy()).tolist()
    for i, r in enumerate(records):
        r.update({name: float(v[i]) for name, v in scores.items()})
    shape = (len(prompts), n_samples)
    table = best_of_n_table(np.reshape(scores["true_reward"], shape),
                            {k: np.reshape(v, shape) for k, v in scores.items()}, cfg.bon_ns, cfg.n_boot, cfg.seed)
    return records, table


def steer_future(policy, base, tokenizer, acts_post: dict, rows: list[dict], prompts: list[str], reward,
                 checker, cfg: Config) -> tuple[FutureSteering, list[dict]]:
    """Fit the F_post direction at the steering site and steer the policy along it on `prompts`:
    (the section, the steered samples)."""
    site = resolve_steer_site(policy, cfg)
    direction, val, n_train = future_direction(acts_post, rows, site, ValueProbeConfig(seed=cfg.seed))
    repeated = [p for p in prompts for _ in range(cfg.steer_samples_per_prompt)]
    steer_cfg = SteerConfig(site=site, alphas=tuple(cfg.steer_alphas), where="completion", n_random=cfg.n_random,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                            top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed, n_boot=cfg.n_boot)
    steered = dose_response(policy, tokenizer, repeated, {"future_probe": direction}, steer_cfg, reward, base=base,
                            checker=checker)
    entry = steered["directions"]["future_probe"]
    section = FutureSteering(site=site, alphas=list(steered["alphas"]), typical_norm=steered["typical_norm"],
                             n=len(repeated), n_prompts=len(prompts), probe_val_spearman=val, n_train_prefixes=n_train,
                             fluency_bound=entry["rows"][0]["fluency_measure"], curve=direction_curve(entry),
                             random_effects=steered["random_effects"])
    return section, steered["samples"]


def resolve_steer_site(model, cfg: Config) -> str:
    return f"blocks.{n_layers(model) - 1}.hook_resid_post" if cfg.steer_site == "last_resid_post" else cfg.steer_site


def section_of(study: dict, cfg: Config, n_records: int, bon: list[dict] | None,
               steering: FutureSteering | None) -> ValueProbeSection:
    """The typed section from `value.probes.value_probe_study`'s result."""
    return from_json(ValueProbeSection, {
        "k": cfg.k, "n_records": n_records, "n_prefixes": study["n_prefixes"], "n_prompts": study["n_prompts"],
        "positions": [str(p) for p in study["positions"]], "models": study["models"], "targets": study["targets"],
        "reliability": study["reliability"],
        "table": [{**r, "position": str(r["position"])} for r in study["table"]],
        "cross": [{**r, "position": str(r["position"])} for r in study["cross"]],
        "value_head": study.get("value_head"), "best_of_n": bon,
        "steering_future": None if steering is None else to_json(steering)}, "value_probe")


def run(cfg: Config, ctx: Context) -> Results:
    policy, base, tokenizer = load_policy_and_base(ctx, cfg.device)
    prompts, heldout = run_prompts(ctx)
    head_file = ctx.artifact(ppo_stage.NAME, "value_head") if "ppo" in ctx.models else None
    return Results(value_study(cfg, (policy, base, tokenizer), (list(prompts), list(heldout)), ctx.out, head_file,
                               ctx.artifact(probes_stage.NAME, "probe"),  # None without a probes stage
                               is_grammatical if ctx.setting is None else None))


def value_study(cfg: Config, models: tuple, prompts: tuple[list[str], list[str]], out: Path,
                head_file: Path | None = None, probe_file: Path | None = None, checker=None) -> ValueProbeSection:
    """The whole study (the module docstring's steps 1-5) of `models` = (policy, base, the policy's
    tokenizer) on `prompts` = (training prompts, held-out prompts), its files written into `out`
    (`ARTIFACTS`): `head_file` a PPO value head (`rl.value_head`) to compare, `probe_file` a reward probe
    for best-of-n, `checker` the fluency check of steered text (None: perplexity under the base)."""
    policy, base, tokenizer = models
    train_prompts, heldout = prompts
    reward = get_reward(cfg.reward, device=cfg.device)
    check_enough_prompts(len(set(train_prompts[:cfg.n_prompts])), ValueProbeConfig(seed=cfg.seed),
                         "value stage: the run's training prompts (distinct, of the first n_prompts)")
    records = sample_policy_records(policy, tokenizer, train_prompts[:cfg.n_prompts], cfg)
    write_jsonl(out / ARTIFACTS["value_records"], records)
    rows = compute_targets({"post": policy, "base": base}, tokenizer, records, reward, cfg.targets())
    write_jsonl(out / ARTIFACTS["value_targets"], rows)
    head = load_value_head(head_file) if head_file is not None else None
    sites = all_sites(policy) if cfg.sites == "all" else [s.strip() for s in cfg.sites.split(",")]
    sites = list(dict.fromkeys(sites + ([head.site] if head else []) + ([resolve_steer_site(policy, cfg)]
                                                                        if cfg.steer_prompts else [])))
    positions = list(dict.fromkeys(r["position"] for r in rows))
    acts = collect_value_acts({"post": policy, "base": base}, tokenizer, records, positions, sites, cfg.batch_size)
    predictions = value_head_predictions(head, acts["post"], positions) if head else None
    study = value_probe_study(acts, rows, records, ValueProbeConfig(seed=cfg.seed, n_boot=cfg.n_boot),
                              value_head=predictions)
    traces = study.pop("traces", [])
    write_json(out / ARTIFACTS["value_study"], study)
    write_jsonl(out / ARTIFACTS["value_traces"], traces)
    figures.save_png(figures.value_probes(study["table"]), out / ARTIFACTS["value_probe_png"])
    if traces:
        figures.save_png(figures.value_traces(traces), out / ARTIFACTS["value_traces_png"])
    steering = None
    if cfg.steer_prompts:
        steering, steered = steer_future(policy, base, tokenizer, acts["post"], rows, heldout[:cfg.steer_prompts],
                                         reward, checker, cfg)
        write_jsonl(out / ARTIFACTS["value_steered_texts"], steered)
    bon = None
    if cfg.bon_prompts:
        bon_records, bon = best_of_n(policy, base, tokenizer, heldout[:cfg.bon_prompts], reward, probe_file, cfg)
        write_jsonl(out / ARTIFACTS["best_of_n_samples"], bon_records)
    return section_of(study, cfg, len(records), bon, steering)
