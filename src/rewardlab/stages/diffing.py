"""The `diffing` stage: what changed between the base and the post-trained models, each statistic
with its bootstrap CI and n.

- implicit reward: `n_samples` base-model samples on the held-out prompts (cycled; the CI resamples
  prompts), Spearman between log pi_policy/pi_base summed over the completion and the true reward,
  for every policy of the run (PPO, post, DPO);
- divergent sampling from the main policy (PPO, else `post`, else DPO) at `alphas`: mean true reward
  and grammatical rate per alpha (outside the review world: perplexity under the base model);
- audits of the utility and of the DPO policy's implicit reward (reference: base) on review-world
  minimal pairs; outside the world the audit is skipped, and the section says why;
- parameter divergence of the main policy, its most changed blocks, and which blocks stand out
  above a permutation noise floor (`diff.params`; often none).

Inside the review world the prompts, generation settings and grammar are the world's and the reward
is the utility; a `models` section sets them for other models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rewardlab import stats
from rewardlab.audit import PairConfig, audit, get_scorer, minimal_pairs, world_sources, world_words, write_audit
from rewardlab.diff.divergent import DivergentConfig, divergent_summary, sample_divergent
from rewardlab.diff.implicit import implicit_reward_vs_true
from rewardlab.diff.params import LayerDivergence, parameter_divergence, write_divergence
from rewardlab.errors import InputError, raise_first_failed
from rewardlab.io import write_jsonl
from rewardlab.models import load_model, model_folder
from rewardlab.report import figures
from rewardlab.rewards import get_reward
from rewardlab.sampling import generate
from rewardlab.schema import from_json
from rewardlab.stages import prompts as prompts_stage
from rewardlab.stages.common import Context, Planner, RunConfig, prompt_list
from rewardlab.stats import Estimate
from rewardlab.world import world_of_model
from rewardlab.world.grammar import grammatical_rate

NAME = "diffing"
ARTIFACTS = {"divergent_samples": "divergent.jsonl", "param_divergence": "params.csv", "params_png": "params.png"}
AUDIT_SKIPPED = "the minimal-pair audit needs the review world's pairs; this base model is not a world's"


@dataclass
class Config:
    n_samples: int = 1000          # held-out base samples for the implicit-reward correlations
    n_divergent: int = 300         # divergent samples per alpha
    alphas: tuple[float, ...] = (-0.5, 0.0, 2.0)  # amplification strengths of divergent sampling
    plausibility: float = 0.1      # keep tokens with p_post >= this * max p_post
    n_audit_sources: int = 300     # review-world texts edited into minimal pairs
    batch_size: int = 64           # sequences per forward pass
    seed: int = 0                  # sampling and bootstrap seed (the run's seed)

    def validate(self) -> None:
        raise_first_failed([
            (self.n_samples >= 2 and self.n_divergent >= 1 and self.n_audit_sources >= 1 and self.batch_size >= 1,
             "n_samples must be at least 2; n_divergent, n_audit_sources and batch_size at least 1", None),
            (bool(self.alphas) and all(math.isfinite(a) for a in self.alphas), "alphas must be finite numbers",
             None),
            (0 <= self.plausibility <= 1, f"plausibility must be in [0, 1], got {self.plausibility}", None),
        ], "diffing config")


@dataclass
class ImplicitRewardFit:
    """How one policy's implicit reward log pi_policy - log pi_base ranks base samples like the true reward."""

    spearman_true: Estimate        # summed over the completion
    pearson_true: Estimate
    spearman_true_mean_per_token: Estimate


@dataclass
class ImplicitRewardSection:
    spearman_true: Estimate        # the main policy's (PPO, else post, else DPO)
    policy: str                    # which policy that is
    by_policy: dict[str, ImplicitRewardFit]


@dataclass
class DivergentSection:
    """Amplified sampling from post + alpha * (post - base), per alpha (CIs resample prompts)."""

    alphas: list[float]
    reward_mean: list[Estimate]    # mean true reward
    implicit_reward_mean: list[Estimate]  # mean summed log pi_post - log pi_base, nats
    reward_increases_with_alpha_ci_disjoint: bool
    grammatical_rate: list[float] | None = None  # review world
    base_perplexity: list[Estimate | None] | None = None  # elsewhere


@dataclass
class AttributeAudit:
    accuracy: float                # pairs where the expected member scores higher; ties count as wrong
    accuracy_ci: Estimate
    tie_rate: float
    accuracy_ties_half: float      # ties counted as half right
    mean_margin: Estimate
    num_pairs: int
    num_prompts: int


@dataclass
class RewardModelAudit(AttributeAudit):
    model: str = ""
    ref_model: str | None = None
    per_attribute: dict[str, AttributeAudit] | None = None


@dataclass
class AuditSection:
    accuracy: Estimate | None = None  # the utility's accuracy on sentiment edits
    by_attribute: dict[str, AttributeAudit] | None = None  # the utility's, per edit
    reward_models: dict[str, RewardModelAudit] | None = None  # utility, dpo_implicit
    skipped: str | None = None     # why there is no audit


@dataclass
class ParamsSection:
    """Parameter divergence of the main policy per block, and which blocks stand out (`diff.params`)."""

    policy: str                    # the policy compared with the base
    top_layers: list[str]          # the five blocks with the largest sum of tensor norms, whether or not they stand out
    standing_out: list[str]        # blocks whose score exceeds the threshold, highest first (often none)
    noise_floor: float | None      # 95th percentile of the top block score when tensors are permuted among blocks
    threshold: float | None        # the score a block must exceed: max(noise floor, 1 + diff.params.MIN_EXCESS)
    statement: str                 # which blocks stand out, or "no layer stands out"
    layers: list[LayerDivergence]


@dataclass
class BaseSamplesSection:
    n: int
    reward: str                    # the true reward's spec
    reward_mean: Estimate


@dataclass
class Results:
    implicit_reward: ImplicitRewardSection | None
    divergent: DivergentSection | None
    audit: AuditSection
    params: ParamsSection | None
    base_samples: BaseSamplesSection


def plan(run: RunConfig, p: Planner) -> None:
    if run.diffing is None:
        return
    cfg = p.config(Config, NAME, run.diffing, seed=run.seed)
    p.add(NAME, cfg, {**{k: Path(v) for k, v in p.models.items()}, **p.data_inputs()})


@dataclass
class Setting:
    """Where the stage's samples come from: held-out prompts, generation settings, reward, checker."""

    prompts: list[str]
    generation: dict[str, Any]     # max_new_tokens, temperature, top_k, top_p
    reward: Any                    # rewardlab.rewards.Reward
    in_world: bool                 # the base model is a review world's (grammar and audit available)
    dtype: str = "float32"
    device: str | None = None


def setting_of(ctx: Context, base: str) -> Setting:
    if ctx.setting is not None:
        s = ctx.setting
        heldout = prompt_list(ctx.artifact(prompts_stage.NAME, "heldout_prompts"))
        return Setting(heldout, s.generation(), get_reward(s.reward, device=s.device),
                       Path(base).is_dir() and world_of_model(base) is not None, s.dtype, s.device)
    world = world_of_model(base)
    if world is None:
        raise InputError("the base model is not a review world's (no world.json beside it)", str(base),
                         "give DIR/base of a folder built by `rewardlab world build`")
    return Setting(world.heldout_prompts, world.generation, get_reward("utility"), True)


def sample_base(base_model, tokenizer, s: Setting, cfg: Config) -> list[dict]:
    """`n_samples` base-model completions of the cycled held-out prompts, each with its true reward."""
    if not s.prompts:
        raise InputError("no held-out prompts to sample from", fix="give at least one prompt")
    gen = s.generation
    cycled = [s.prompts[i % len(s.prompts)] for i in range(cfg.n_samples)]
    samples = generate(base_model, tokenizer, cycled, max_new_tokens=gen["max_new_tokens"],
                       temperature=gen.get("temperature", 1.0), top_k=gen.get("top_k", 0),
                       top_p=gen.get("top_p", 1.0), generator=torch.Generator().manual_seed(cfg.seed),
                       batch_size=cfg.batch_size, desc="sampling (base)")
    records = [{"prompt": x.prompt, "completion": x.completion} for x in samples]
    for r, u in zip(records, s.reward([r["completion"] for r in records])):
        r["reward"] = u
    return records


def divergence(base_model, policy, tokenizer, s: Setting, cfg: Config, out: Path) -> DivergentSection:
    """Divergent samples of the main policy at every alpha, written to `out`, and their summary."""
    gen = s.generation
    div_prompts = [s.prompts[i % len(s.prompts)] for i in range(cfg.n_divergent)]
    rows = sample_divergent(base_model, policy, tokenizer, div_prompts, DivergentConfig(
        alphas=cfg.alphas, plausibility=cfg.plausibility, max_new_tokens=gen["max_new_tokens"],
        temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0), batch_size=cfg.batch_size,
        seed=cfg.seed))
    write_jsonl(out / ARTIFACTS["divergent_samples"], rows)
    summary = divergent_summary(rows, cfg.alphas, s.reward, grammatical_rate if s.in_world else None)
    return from_json(DivergentSection, summary, "divergent")


def run(cfg: Config, ctx: Context) -> Results:
    base = model_folder(ctx.models["base"])
    s = setting_of(ctx, base)
    base_model, tokenizer = load_model(base, device=s.device, dtype=s.dtype, chat_template=ctx.chat_template)
    records = sample_base(base_model, tokenizer, s, cfg)
    policies = {name: model_folder(ctx.models[name]) for name in ("ppo", "post", "dpo") if name in ctx.models}
    main = next(iter(policies), None)  # divergent sampling and parameter divergence: PPO, else post, else DPO
    audits: dict[str, RewardModelAudit] = {}
    if s.in_world:
        pairs = minimal_pairs(world_sources(cfg.n_audit_sources, cfg.seed, 3), world_words(), PairConfig(seed=cfg.seed))
        audits["utility"] = run_audit("utility", get_scorer("utility"), pairs, cfg.seed, ctx.out / "audit_utility")
    fits: dict[str, ImplicitRewardFit] = {}
    divergent = params = None
    for name, folder in policies.items():
        policy, _ = load_model(folder, device=s.device, dtype=s.dtype)
        fits[name] = ImplicitRewardFit(**implicit_reward_vs_true(base_model, policy, tokenizer, records,
                                                                 cfg.batch_size))
        if name == "dpo" and s.in_world:
            audits["dpo_implicit"] = run_audit("dpo_implicit", get_scorer(f"dpo:{folder}", ref=str(base),
                                                                          device=s.device),
                                               pairs, cfg.seed, ctx.out / "audit_dpo")
        if name == main:
            divergent = divergence(base_model, policy, tokenizer, s, cfg, ctx.out)
            div = parameter_divergence(base_model, policy, seed=cfg.seed)
            write_divergence(div, ctx.out, "base", name)
            figures.save_png(params_figure(div.layers, f"{name} vs base"), ctx.out / ARTIFACTS["params_png"])
            params = ParamsSection(name, [r.group for r in div.layers if r.group.startswith("blocks.")][:5],
                                   div.standing_out, div.noise_floor, div.threshold, div.statement, div.layers)
    implicit = None if main is None else ImplicitRewardSection(fits[main].spearman_true, main, fits)
    reward_mean = stats.mean([r["reward"] for r in records], groups=[r["prompt"] for r in records])
    return Results(implicit_reward=implicit, divergent=divergent, audit=audit_section(audits), params=params,
                   base_samples=BaseSamplesSection(len(records), s.reward.name, reward_mean))


def params_figure(layers: Sequence[LayerDivergence], title: str) -> str:
    """The parameter divergence of the transformer blocks in order (of every group when there are no
    blocks), as `report.figures.param_divergence` draws it."""
    blocks = sorted((r for r in layers if r.group.startswith("blocks.")), key=lambda r: int(r.group.split(".")[1]))
    shown = blocks or list(layers)
    return figures.param_divergence([r.group.removeprefix("blocks.") for r in shown], [r.tensor_norm_sum for r in shown],
                                    [r.relative_change for r in shown], title)


def run_audit(name: str, scorer, pairs: list[dict], seed: int, out: Path) -> RewardModelAudit:
    """Audit one reward model on the minimal pairs; its scores go to `out`."""
    result, rows = audit(scorer, pairs, seed=seed)
    write_audit(out, result, rows)
    return from_json(RewardModelAudit, result, f"audit.{name}")


def audit_section(audits: dict[str, RewardModelAudit]) -> AuditSection:
    """The utility's sentiment-edit accuracy as the headline, every reward model's audit beside it."""
    if "utility" not in audits:
        return AuditSection(skipped=AUDIT_SKIPPED)
    by_attribute = audits["utility"].per_attribute
    return AuditSection(accuracy=by_attribute["sentiment"].accuracy_ci, by_attribute=by_attribute,
                        reward_models=audits)
