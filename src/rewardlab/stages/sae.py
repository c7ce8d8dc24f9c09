"""The `sae` stage: SAEs of the base and the main policy on the probes stage's records, compared
(`sae.diffing.compare_models`): dictionary similarity against random and other-seed baselines, a
crosscoder's post-only latents, offline explanations and reward relevance; with `diffdict`, the difference
dictionary beside the difference SAE and a crosscoder (`sae.diffdict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardlab.io import read_jsonl, write_jsonl
from rewardlab.models import ModelPair
from rewardlab.sae.diffing import DiffConfig as Config
from rewardlab.sae.diffing import compare_models, headline_checks
from rewardlab.schema import from_json
from rewardlab.stages import probes as probes_stage
from rewardlab.stages.common import Context, Planner, RunConfig, main_policy
from rewardlab.stats import Estimate

NAME = "sae"
ARTIFACTS = {"features": "top_features.jsonl"}


@dataclass
class SAESection:
    """The headline SAE of the post model at the chosen layer, and its dictionary comparison."""

    layer: int
    layer_rule: str                # what chose the layer: a block standing out in parameter divergence, else the middle
    site: str
    fvu: float                     # fraction of variance unexplained on held-out tokens
    l0: float                      # active latents per token
    dead_fraction: float           # latents that never fire on held-out tokens
    ce_loss_recovered: float       # of the next-token loss gap between zero-ablation and the clean model, at the
    # positions the SAE models (no first position, special token or norm outlier: `rewardlab.sae.sinks`)
    kl_recovered: float            # 1 - KL(clean || SAE spliced) / KL(clean || zero-ablated), same positions
    mmcs: float                    # mean max cosine similarity of the 1x and 2x dictionaries' decoder rows
    mmcs_one_to_one: float
    mmcs_random: float             # the same for random dictionaries of the same shapes
    mmcs_other_seed: float         # for the same-size SAE trained with another seed
    shared_features: int
    checks: dict[str, Any]         # each headline figure with its target (`sae.diffing.headline_checks`)


@dataclass
class CrosscoderSection:
    post_only: int                 # latents by relative decoder norm, after Latent Scaling
    base_only: int
    shared: int
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    post_only_top_tokens: list[list[str]]


@dataclass
class DiffDictSection:
    """The difference dictionary (encoder reads base, decoder predicts post) at the headline site, beside the
    difference SAE, a crosscoder and two baselines (`sae.diffdict`); only with the option sae.diffdict."""

    site: str
    d_sae: int                     # width of each of the three dictionaries
    k: int
    n_train_tokens: int
    fvu: dict[str, Estimate]       # prediction -> FVU of the post activations on held-out tokens (CI over held-out
    # prompts): identity (post = base), affine (least squares), diffdict read base only; diff_sae, crosscoder read post too
    diffdict_minus: dict[str, Estimate]  # FVU(diffdict) - FVU(other prediction), paired over the same resampled prompts
    top_latents: dict[str, list[list[str]]]  # dictionary -> its most important latents' promoted tokens (post unembedding)
    latent_explanations: dict[str, list[str | None]] = field(default_factory=dict)  # dictionary -> the same latents' explanations (None: no
    # activation on held-out tokens), by the run's explainer from their top-activating held-out tokens
    explanation_score: dict[str, Estimate | None] = field(default_factory=dict)  # dictionary -> mean simulation score of those explanations
    # over latents (CI over latents; None: fewer than 2 explained)


@dataclass
class FeatureExplanation:
    model: str                     # base or post
    feature: int
    explanation: str | None
    score: float | None            # simulation score
    mcs: float | None              # max cosine similarity with the larger dictionary


@dataclass
class InterpSection:
    explainer: str
    mean_score: Estimate | None    # simulation score of the headline SAE's features
    wrong_feature_score: Estimate | None  # the same explanations scored on other features' records
    difference: Estimate | None
    detection: Estimate | None
    top_features: list[FeatureExplanation]


@dataclass
class RewardRelevanceSection:
    """Top-k summed |Pearson| between feature activations and the reward, per model."""

    base: Estimate
    post: Estimate
    post_minus_base: Estimate      # CI resamples completions and SAEs
    seed_control: float            # the largest |difference| between two SAEs of one model
    description_metric: dict[str, float]  # |VADER valence| of the explanation words (the 2023 SAE paper's)


@dataclass
class Results:
    sae: SAESection
    crosscoder: CrosscoderSection
    interp: InterpSection
    reward_relevance: RewardRelevanceSection
    diffdict: DiffDictSection | None = None


def plan(run: RunConfig, p: Planner) -> None:
    if run.sae is None:
        return
    cfg = p.config(Config, NAME, run.sae, seed=run.seed)
    for layer in cfg.layers or []:
        p.check_site(f"blocks.{layer}.{cfg.site_kind}", "sae.layers")
    policy = main_policy(p.models)
    p.add(NAME, cfg, {"base": Path(p.base), "policy": Path(policy), **p.data_inputs(),
                      "probes": p.stage_dir(probes_stage.NAME)})


def run(cfg: Config, ctx: Context) -> Results:
    loading = {"dtype": "float32"} if ctx.setting is None else {"dtype": ctx.setting.dtype,
                                                                 "device": ctx.setting.device}
    pair = ModelPair.load(ctx.models["base"], ctx.main_policy(), chat_template=ctx.chat_template, **loading)
    records = read_jsonl(ctx.artifact(probes_stage.NAME, "records"), required=("prompt", "completion"))
    res = compare_models(pair.base, pair.post, pair.tokenizer, records, ctx.out, cfg)
    head, checks = res["headline"], headline_checks(res)["checks"]
    layer = res["by_layer"][str(res["layers"][0])]
    post, relevance = layer["models"]["post"], layer["activation_relevance"]
    counts_after = head["crosscoder"]["counts_after"]
    interp = head.get("interp", {})
    features = [FeatureExplanation(name, f["feature"], f.get("explanation"), f.get("simulation"), f.get("mcs"))
                for name in ("post", "base") for f in layer["models"][name]["top_features"]]
    write_jsonl(ctx.out / ARTIFACTS["features"], [vars(f) for f in features])
    post_sae = head["sae"]["post"]
    diffdict = None
    if "diffdict" in res:
        d = res["diffdict"]
        diffdict = DiffDictSection(
            site=d["site"], d_sae=d["d_sae"], k=d["k"], n_train_tokens=d["n_train_tokens"],
            fvu={m: from_json(Estimate, e) for m, e in d["fvu"].items()},
            diffdict_minus={m: from_json(Estimate, e) for m, e in d["diffdict_minus"].items()},
            top_latents={m: [latent["promoted"][:5] for latent in rows[:5]] for m, rows in d["latents"].items()},
            latent_explanations={m: [latent["explanation"] for latent in rows[:5]] for m, rows in d["latents"].items()},
            explanation_score={m: None if "simulation" not in i["summary"] else from_json(Estimate, i["summary"]["simulation"])
                               for m, i in d["interp"].items()})
    return Results(
        sae=SAESection(layer=head["layer"], layer_rule=res["layer_rule"], site=head["site"], fvu=post_sae["fvu"], l0=post_sae["l0"],
                       dead_fraction=post_sae["dead_fraction"], ce_loss_recovered=post_sae["ce_loss_recovered"],
                       kl_recovered=post_sae["kl_recovered"],
                       mmcs=post["mmcs"]["mmcs_max"], mmcs_one_to_one=post["mmcs"]["mmcs_one_to_one"],
                       mmcs_random=post["baseline_random"]["mmcs_max"],
                       mmcs_other_seed=post["baseline_other_seed"]["mmcs_max"],
                       shared_features=post["mmcs"]["n_shared"], checks=checks),
        crosscoder=CrosscoderSection(
            post_only=counts_after.get("post_only", 0), base_only=counts_after.get("base_only", 0),
            shared=counts_after.get("shared", 0), counts_before=head["crosscoder"]["counts_before"],
            counts_after=counts_after, post_only_top_tokens=checks["crosscoder"]["post_only_top_tokens"]),
        interp=InterpSection(
            explainer="lexical (offline)",
            **{k: None if interp.get(src) is None else from_json(Estimate, interp[src])
               for k, src in (("mean_score", "simulation"), ("wrong_feature_score", "wrong_simulation"),
                              ("difference", "simulation_minus_wrong"), ("detection", "detection"))},
            top_features=features),
        reward_relevance=RewardRelevanceSection(
            base=from_json(Estimate, relevance["base"]), post=from_json(Estimate, relevance["post"]),
            post_minus_base=from_json(Estimate, relevance["post_minus_base"]),
            seed_control=checks["reward_relevance_post_minus_base"]["seed_control_max_abs"],
            description_metric={m: layer["models"][m]["description_relevance"] for m in ("base", "post")}),
        diffdict=diffdict)
