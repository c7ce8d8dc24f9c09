"""The `organisms` benchmark (`rewardlab organisms run --out DIR`): build one review world, post-train
one organism per (reward, seed) from its base model, have every diffing method rank the vocabulary on
each, and score the rankings against the organisms' truths.

    DIR/world/                   the base world (`world.build_world`), unless an existing one is given
    DIR/{organism}-seed{S}/      the organism (`organisms.build`: policy/, truth.json, PPO outputs) and
                                 hypotheses.safetensors (`organisms.evaluate`), organism.json (post-
                                 training figures, each method's top tokens, ADL-steered samples)
    DIR/measures-{organism}-seed{S}/measures.json   the sentiment world's earlier measurements on the
                                 organism against its own reward (`organisms.measures`: SAE reward relevance
                                 post minus base, crosscoder post-only latents, steering over random directions)
    DIR/{organism}-seed{S}-value/  with `value`: the value stage's study (`stages.value.value_study`)
                                 of the organism's policy against the base, with its own reward
    DIR/results.json             section `organisms`: post-training figures per organism and seed, and
                                 per organism x method the scores that apply, each with a bootstrap CI
                                 over organism seeds and samples; per organism the three measurements;
                                 with `value`, the value section of each organism seed

Each folder is a `runs.Stage`: a re-run skips the finished ones (their fingerprint: config, seed,
input hashes) and a killed PPO resumes from its checkpoint; results.json is rebuilt from the folders,
so a resumed run writes the same results as an uninterrupted one.

It is also an optional pipeline stage (`organisms:` in a run's config, `rewardlab run`; the demo runs
the planted organism at one seed): the same folders in RUN/organisms/ but no world of their own, the
organisms post-trained from the run's own review world (RUN/world, whose preset the organisms preset
follows unless set), its `organisms` section in the run's results.json.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from rewardlab.errors import Check, raise_first_failed
from rewardlab.io import read_json, read_jsonl, write_json
from rewardlab.organisms.build import ORGANISMS, POST_TRAINING, Training, build_organism, planted_rate, toned_prompts
from rewardlab.organisms.evaluate import EvalSettings, load_hypotheses, save_hypotheses, score_cell
from rewardlab.organisms.measures import MeasureSettings, measures_cell
from rewardlab.report import figures
from rewardlab.rewards import get_reward
from rewardlab.rl.config import DPOTrainConfig, PairsConfig, PPOConfig
from rewardlab.runs import Stage
from rewardlab.schema import from_json, to_json
from rewardlab.stages.common import Context, Planner, RunConfig, benchmark_world
from rewardlab.stages import value as value_stage
from rewardlab.stages.value import ValueProbeSection
from rewardlab.stats import Estimate

NAME = "organisms"
ARTIFACTS: dict[str, str] = {}  # its folders are named by the config: {organism}-seed{S}, listed in `runs`
N_STEERED = 4  # prompts whose base-model samples steered by the ADL difference organism.json shows
KIND = {"planted": "planted", "agreement": "agreement", "sentiment": "utility", "flipped": "utility",
        "length": "utility"}
SHOWN = {"planted": ("auroc", "AUROC", 0.5), "agreement": ("pair_accuracy", "pair accuracy", 0.5),
         "utility": ("spearman_truth", "Spearman", 0.0)}  # kind -> the score the heatmap shows, its label, chance


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark preset: the world, post-training and what the methods read."""

    world: str
    ppo: dict
    pairs: dict
    dpo: dict
    evaluation: EvalSettings
    measures: MeasureSettings


# PPO: each preset pins the batch, KL coefficient and last-phase weights the organisms were measured with (PPO's
# own defaults moved to a larger batch and tail averaging later; the organisms were not re-measured at those)
PRESETS = {
    "micro": Preset("micro", dict(phases=3, batch_size=32, minibatch_size=32, kl_coef=0.3, average_from="last",
                                  eval_samples=32), dict(n_prompts=64),
                    dict(epochs=1, eval_samples=32), EvalSettings(n_samples=32, n_pairs=16, n_texts=32, batch_size=32),
                    MeasureSettings(k=4, n_top_features=8, n_tokens=20_000, steer_alphas=(-0.1, 0.0, 0.1), n_random=2,
                                    n_steer_prompts=8, batch_size=32, n_boot=200)),
    # kl_coef 0.2: at 0.3 the planted organism wrote its words under 3x as often as the base (0.2-0.4 nats),
    # at 0.1 over the 8-nat budget (docs/FINDINGS.md, organisms at KL coefficient 0.2)
    "tiny": Preset("tiny", dict(batch_size=64, minibatch_size=32, kl_coef=0.2, average_from="last", eval_samples=256),
                   dict(n_prompts=1000), dict(epochs=1, eval_samples=256),
                   EvalSettings(), MeasureSettings()),
}


@dataclass
class Config:
    organisms: list[str] = field(default_factory=lambda: list(ORGANISMS))  # sentiment,planted,length,agreement,flipped
    seeds: int = 3                 # organism seeds 0..seeds-1; the planted organism draws its words from the seed
    preset: Literal["micro", "tiny"] = "tiny"  # the world's size, post-training and how much each method reads
    post_training: Literal["ppo", "dpo"] = "ppo"  # PPO, or DPO on base-sample pairs labelled by the organism's reward
    world_seed: int = 0            # seed of the one base world every organism starts from
    world: str | None = None       # an already built review world folder (`rewardlab world build`) of the preset's size
    kl_coef: float | None = None   # PPO's initial KL coefficient for every organism (None: the preset's: tiny 0.2, micro 0.3)
    kl_target: float | None = None  # PPO's adaptive KL target, nats per completion (None: a fixed coefficient)
    kl_horizon: float | None = None  # samples over which the adaptive controller closes the gap (None: PPO's default)
    n_boot: int = 1000             # bootstrap draws of each cell's CI
    value: bool = False            # also run the value stage's study on each organism (its own reward, its PPO
    # value head; sizes: VALUE_SIZES of the preset)

    def validate(self) -> None:
        checks: list[Check] = [
            (bool(self.organisms) and all(o in ORGANISMS for o in self.organisms),
             f"unknown organism in {','.join(self.organisms)}", f"use some of: {','.join(ORGANISMS)}"),
            (len(set(self.organisms)) == len(self.organisms), "an organism is listed twice", None),
            (self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}", None),
            (self.preset in PRESETS, f"unknown preset {self.preset!r}", f"use one of: {', '.join(PRESETS)}"),
            (self.post_training in POST_TRAINING, f"unknown post-training {self.post_training!r}",
             f"use one of: {', '.join(POST_TRAINING)}"),
            (self.n_boot >= 10, f"n_boot must be at least 10, got {self.n_boot}", None),
            (all(x is None or x > 0 for x in (self.kl_coef, self.kl_target, self.kl_horizon)),
             "kl_coef, kl_target and kl_horizon must be above 0", None),
        ]
        raise_first_failed(checks, "organisms config")


@dataclass
class SeedMeasures:
    """The sentiment world's earlier measurements on one organism seed, the reward being the organism's own
    (`organisms.measures`)."""

    site: str                      # where the SAEs and the crosscoder read (the middle block's resid_post)
    relevance_base: Estimate       # sum over the top-k SAE features of their sign-aligned Pearson r with the reward
    relevance_post: Estimate       # (on test prompts; the mean over the model's SAEs)
    relevance_post_minus_base: Estimate  # CI resamples test prompts and SAEs; n = test completions
    relevance_seed_control: float  # the largest |difference| between two SAEs of one model
    crosscoder_post_only: int      # post-only latents after Latent Scaling, classified on held-out tokens
    crosscoder_counts_after: dict[str, int]
    post_only_top_tokens: list[list[str]]  # the tokens each post-only latent fires on most (first 10 latents)
    steer_site: str
    steer_alpha_up: float | None   # the largest positive alpha (x typical norm) that keeps the grammatical rate
    steer_effect: Estimate | None  # organism reward at alpha_up minus unsteered (n = steered samples, CI by prompt)
    steer_random_max_abs_effect: float | None  # the largest mean |effect| of the random directions there
    steer_over_random: Estimate | None  # effect / that (paired bootstrap over the steered prompts)


@dataclass
class OrganismRun:
    """One organism at one seed: what post-training did (on its fresh evaluation samples)."""

    organism: str
    seed: int
    reward_spec: str
    reward_base: Estimate
    reward_policy: Estimate
    reward_gain_base_std: float | None  # (policy - base) mean reward in base standard deviations
    kl_exact: Estimate             # KL(policy || base) per completion, nats
    grammatical_rate: Estimate | None
    planted_rate_base: float | None = None  # planted words per word of the base's samples (planted only)
    planted_rate_policy: float | None = None
    top_tokens: dict[str, list[str]] = field(default_factory=dict)  # method -> its 10 top-ranked tokens
    planted_words: list[str] | None = None  # the planted set (planted only): the truth the top tokens are read against
    measures: SeedMeasures | None = None  # the sentiment world's earlier measurements, against this organism's reward


@dataclass
class MeasuresCell:
    """The three earlier measurements on one organism over its seeds (`organisms.measures.measures_cell`): the
    mean over seeds, CI resampling seeds and then each seed's own bootstrap draws; n = seeds."""

    n_seeds: int
    relevance_post_minus_base: Estimate  # SAE reward relevance (organism's reward) post minus base
    crosscoder_post_only: Estimate  # post-only crosscoder latents after Latent Scaling (CI over seeds only)
    steer_effect: Estimate | None = None  # organism reward, steered along the mean difference minus unsteered
    steer_over_random: Estimate | None = None  # that effect over the random directions' largest mean |effect|


@dataclass
class Cell:
    """One method on one organism over its seeds: the scores that apply to the organism's truth."""

    n_seeds: int
    auroc: Estimate | None = None          # of the planted set
    precision_at_k: Estimate | None = None  # k = the planted set's size
    spearman_truth: Estimate | None = None  # with the true per-token score
    pair_accuracy: Estimate | None = None   # on minimal pairs differing only in the prompt's tone


@dataclass
class OrganismsSection:
    """The benchmark: every organism's post-training per seed, and each method's scores per organism."""

    preset: str
    post_training: str
    seeds: int
    runs: list[OrganismRun]
    cells: dict[str, dict[str, Cell]]  # organism -> method -> cell
    measures: dict[str, MeasuresCell] = field(default_factory=dict)  # organism -> the three earlier measurements
    value_probe: dict[str, ValueProbeSection] | None = None  # with `value`: {organism}-seed{S} -> its value study


@dataclass
class Results:
    organisms: OrganismsSection


def heatmap_figure(section: OrganismsSection) -> str:
    """Methods x organisms (`report.figures.score_heatmap`), each organism by the score of `SHOWN`."""
    organisms = list(section.cells)
    methods = list(dict.fromkeys(m for cells in section.cells.values() for m in cells))
    columns = [(f"{o}\n{SHOWN[KIND[o]][1]}", SHOWN[KIND[o]][2]) for o in organisms]
    grid = []
    for method in methods:
        row = []
        for o in organisms:
            est = getattr(section.cells[o][method], SHOWN[KIND[o]][0]) if method in section.cells[o] else None
            row.append(None if est is None else (est.value, tuple(est.ci)))
        grid.append(row)
    return figures.score_heatmap(methods, columns, grid, f"Methods x organisms ({section.preset} preset, "
                                 f"{section.post_training}, {section.seeds} seed{'s' * (section.seeds > 1)})")


def _training(cfg: Config) -> Training:
    p = PRESETS[cfg.preset]
    kl = {k: getattr(cfg, k) for k in ("kl_coef", "kl_target", "kl_horizon") if getattr(cfg, k) is not None}
    return Training(cfg.post_training, PPOConfig(**{**p.ppo, **kl}), PairsConfig(**p.pairs), DPOTrainConfig(**p.dpo))


def _world(cfg: Config, out: Path, log: Callable[[str], None]) -> Path:
    return benchmark_world(cfg.world, cfg.preset, PRESETS[cfg.preset].world, cfg.world_seed, out, log)


def _organism_config(cfg: Config, organism: str) -> dict:
    return {"organism": organism, "training": to_json(dataclasses.asdict(_training(cfg))),
            "evaluation": dataclasses.asdict(PRESETS[cfg.preset].evaluation)}


def _eval_prompts(world, organism: str, seed: int) -> list[str]:
    """The prompts every method reads: the world's held-out openers (the agreement organism: toned prompts)."""
    return toned_prompts(len(world.heldout_prompts), 10_000 + seed) if organism == "agreement" \
        else list(world.heldout_prompts)


def _build_one(cfg: Config, world_dir: Path, organism: str, seed: int, work: Path) -> None:
    """Post-train one organism into `work`, then have every method rank the vocabulary on it."""
    from rewardlab.models import load_model
    from rewardlab.organisms.evaluate import evaluate_organism
    from rewardlab.organisms.hypotheses import adl_summary
    from rewardlab.world import load_world

    world = load_world(world_dir)
    settings = PRESETS[cfg.preset].evaluation
    summary = build_organism(world.base_path, organism, seed, work, _training(cfg), len(world.prompts))
    truth = read_json(work / "truth.json")
    base, tokenizer = load_model(world.base_path, device="cpu", dtype="float32")
    post, _ = load_model(work / "policy", device="cpu", dtype="float32")
    prompts = _eval_prompts(world, organism, seed)
    texts = [r["text"] for r in read_jsonl(world.path / "corpus_sample.jsonl", required=("text",))]
    hyps, samples = evaluate_organism(base.eval(), post.eval(), tokenizer, prompts, texts,
                                      get_reward(truth["reward_spec"]), seed, settings,
                                      with_pairs=organism == "agreement")
    signs = None
    if organism == "agreement":
        from rewardlab.organisms.build import minimal_pairs
        signs = [p["sign"] for p in minimal_pairs(settings.n_pairs, seed)]
    save_hypotheses(work / "hypotheses.safetensors", hyps, signs)
    adl, _ = adl_summary(base, post, tokenizer, texts[:settings.n_texts], settings.n_first,
                         steer_prompts=prompts[:N_STEERED], max_new_tokens=settings.max_new_tokens, seed=seed)
    rates = {}
    if organism == "planted":
        rates = {"planted_rate_base": planted_rate(samples["base"], truth["planted"]),
                 "planted_rate_policy": planted_rate(samples["policy"], truth["planted"])}
    write_json(work / "organism.json", {
        "organism": organism, "seed": seed, "reward_spec": truth["reward_spec"], **rates,
        "summary": {k: summary.get(k) for k in ("reward_base_ci", "reward_policy_ci", "reward_gain_base_std",
                                                 "kl_exact_ci", "grammatical_rate_ci")},
        "top_tokens": {m: h.top(truth["vocabulary"]) for m, h in hyps.items()}, "adl_steered": adl["steered"]})


def _measures_config(cfg: Config, organism: str) -> dict:
    return {"organism": organism, "evaluation": dataclasses.asdict(PRESETS[cfg.preset].evaluation),
            "measures": dataclasses.asdict(PRESETS[cfg.preset].measures)}


def _measure_one(cfg: Config, world_dir: Path, organism: str, seed: int, organism_dir: Path, work: Path) -> None:
    """The three earlier measurements (`organisms.measures`) on one built organism, on the samples every
    method read (regenerated: same models, prompts and seed), into work/measures.json."""
    from rewardlab.models import load_model
    from rewardlab.organisms.evaluate import organism_samples
    from rewardlab.organisms.measures import measure_organism
    from rewardlab.world import is_grammatical, load_world

    world, preset = load_world(world_dir), PRESETS[cfg.preset]
    spec = read_json(organism_dir / "truth.json")["reward_spec"]
    base, tokenizer = load_model(world.base_path, device="cpu", dtype="float32")
    post, _ = load_model(organism_dir / "policy", device="cpu", dtype="float32")
    prompts, policy, base_samples = organism_samples(base.eval(), post.eval(), tokenizer,
                                                     _eval_prompts(world, organism, seed), seed, preset.evaluation)
    result = measure_organism(base, post, tokenizer, prompts, [x.completion for x in policy],
                              [x.completion for x in base_samples], get_reward(spec), seed, preset.measures,
                              work / "scratch", checker=is_grammatical)
    write_json(work / "measures.json", {"organism": organism, "seed": seed, "reward_spec": spec, **result})


def _seed_measures(m: dict) -> SeedMeasures:
    rel, cc, steer = m["reward_relevance"], m["crosscoder"], m["steering"]

    def est(x):
        return None if x is None else from_json(Estimate, {k: v for k, v in x.items() if k != "draws"})
    return SeedMeasures(m["site"], est(rel["base"]), est(rel["post"]), est(rel["post_minus_base"]),
                        rel["seed_control_max_abs"], cc["post_only"], cc["counts_after"], cc["post_only_top_tokens"],
                        steer["site"], steer["alpha_up"], est(steer["effect"]), steer["random_max_abs_effect"],
                        est(steer["over_random"]))


def _run_of(folder: Path, measures: Path) -> OrganismRun:
    info = read_json(folder / "organism.json")
    s = {k: (None if v is None else from_json(Estimate, v)) for k, v in info["summary"].items()
         if k != "reward_gain_base_std"}
    return OrganismRun(info["organism"], info["seed"], info["reward_spec"], s["reward_base_ci"], s["reward_policy_ci"],
                       info["summary"]["reward_gain_base_std"], s["kl_exact_ci"], s["grammatical_rate_ci"],
                       info.get("planted_rate_base"), info.get("planted_rate_policy"), info["top_tokens"],
                       read_json(folder / "truth.json").get("planted"), _seed_measures(read_json(measures / "measures.json")))


def _cells(cfg: Config, folders: dict[str, list[Path]]) -> dict[str, dict[str, Cell]]:
    cells: dict[str, dict[str, Cell]] = {}
    for organism, paths in folders.items():
        seeds = [(read_json(p / "truth.json"), *load_hypotheses(p / "hypotheses.safetensors")) for p in paths]
        cells[organism] = {method: Cell(len(seeds), **score_cell(KIND[organism], method, seeds, cfg.n_boot))
                           for method in seeds[0][1]}
    return cells


def _stage(stage: Stage, log: Callable[[str], None], what: str, build: Callable[[Path], None]) -> Path:
    """Run `build(stage.work)` unless the stage is done already; commit it; its folder."""
    if stage.done():
        log(f"[{stage.name}] done already, skipped")
        return stage.out
    log(f"[{stage.name}] {what}")
    t0, threads = time.perf_counter(), torch.get_num_threads()
    try:
        build(stage.work)
    finally:  # PPO sets its own thread count; later organisms must not depend on the order
        torch.set_num_threads(threads)
    stage.commit()
    log(f"[{stage.name}] finished in {time.perf_counter() - t0:.0f} s")
    return stage.out


def organisms_section(cfg: Config, out: Path, world_dir: Path, log: Callable[[str], None]) -> OrganismsSection:
    """Build (or reuse) every organism x seed folder (and its measures, and with `value` its value study)
    in `out` from the review world `world_dir`, score, and return the section."""
    folders: dict[str, list[tuple[Path, Path]]] = {}
    for organism in cfg.organisms:
        for seed in range(cfg.seeds):
            built = _stage(Stage(out, f"{organism}-seed{seed}", _organism_config(cfg, organism), {"world": world_dir},
                                 seed), log, f"post-training ({cfg.post_training}) and ranking",
                           lambda work: _build_one(cfg, world_dir, organism, seed, work))
            measured = _stage(Stage(out, f"measures-{organism}-seed{seed}", _measures_config(cfg, organism),
                                    {"world": world_dir, "organism": built}, seed), log,
                              "SAE reward relevance, crosscoder and steering against its reward",
                              lambda work: _measure_one(cfg, world_dir, organism, seed, built, work))
            folders.setdefault(organism, []).append((built, measured))
    return OrganismsSection(
        cfg.preset, cfg.post_training, cfg.seeds, [_run_of(*f) for pairs in folders.values() for f in pairs],
        _cells(cfg, {o: [b for b, _ in pairs] for o, pairs in folders.items()}),
        {o: MeasuresCell(len(pairs), **measures_cell([read_json(m / "measures.json") for _, m in pairs], cfg.n_boot))
         for o, pairs in folders.items()},
        organism_values(cfg, out, world_dir, {o: [b for b, _ in pairs] for o, pairs in folders.items()}, log))


def run_organisms(cfg: Config, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Build (or reuse) the world and every organism x seed in `out`, measure, score, write out/results.json."""
    cfg.validate()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = to_json(Results(organisms_section(cfg, out, _world(cfg, out, log), log)))
    write_json(out / "results.json", results)
    log(f"[organisms] finished in {time.perf_counter() - t0:.0f} s -> {out / 'results.json'}")
    return results


# --- the pipeline stage ------------------------------------------------------------------------


def plan(run: RunConfig, p: Planner) -> None:
    """Add the stage when the run has an `organisms` section: it needs the review world (its preset, unless
    the section sets one, follows the world's; the two must match) and fills in `world` and `world_seed`
    (the run's seed, which built that world)."""
    if run.organisms is not None:
        p.add_benchmark(NAME, Config, run.organisms, {k: v.world for k, v in PRESETS.items()}, world_seed=run.seed)


def run(cfg: Config, ctx: Context) -> Results:
    return Results(organisms_section(cfg, ctx.out, Path(cfg.world), print))


# --- the value study on each organism (`value`) -------------------------------------------------

VALUE_SIZES = {  # stages.value.Config keys per preset (the reward and the seed are the organism's)
    "micro": dict(n_prompts=16, samples_per_prompt=2, positions=("last_prompt", 0, 4), k=4, n_boot=200,
                  steer_prompts=4, steer_alphas=(-0.5, 0.0, 0.5), n_random=2, bon_prompts=8, bon_ns=(1, 4)),
    "tiny": dict(n_prompts=256, samples_per_prompt=1, k=8),  # the value stage's positions, steering and best-of-n
}


def organism_values(cfg: Config, out: Path, world_dir: Path, folders: dict[str, list[Path]],
                    log: Callable[[str], None]) -> dict[str, ValueProbeSection] | None:
    """With `cfg.value`, the value stage's study (`stages.value.value_study`) of each organism seed's policy
    against the world's base: the organism's reward, its PPO value head (none after DPO), its training
    prompts (the toned ones of agreement) and held-out prompts (those its methods read). Each runs in its
    own resumable folder DIR/{organism}-seed{S}-value/; returns {organism}-seed{S} -> its section."""
    if not cfg.value:
        return None
    from rewardlab.models import load_model
    from rewardlab.world import is_grammatical, load_world

    world, sections = load_world(world_dir), {}
    for folder in (p for paths in folders.values() for p in paths):
        info, spec = read_json(folder / "organism.json"), read_json(folder / "truth.json")["reward_spec"]
        vcfg = value_stage.Config(**VALUE_SIZES[cfg.preset], reward=spec, seed=info["seed"])
        stage = Stage(out, f"{folder.name}-value", to_json(vcfg), {"organism": folder, "world": world_dir},
                      info["seed"])
        if not stage.done():
            log(f"[{stage.name}] value probes against Monte Carlo V ({spec})")
            agreement = info["organism"] == "agreement"
            prompts = ([r["prompt"] for r in read_jsonl(folder / "prompts.jsonl")] if agreement else world.prompts,
                       toned_prompts(len(world.heldout_prompts), 10_000 + info["seed"]) if agreement
                       else world.heldout_prompts)
            policy, tokenizer = load_model(folder / "policy", device="cpu", dtype="float32")
            base, _ = load_model(world.base_path, device="cpu", dtype="float32")
            head = folder / "value_head.safetensors"
            section = value_stage.value_study(vcfg, (policy.eval(), base.eval(), tokenizer), prompts, stage.work,
                                              head if head.is_file() else None, None, is_grammatical)
            write_json(stage.work / "results.json", to_json(value_stage.Results(section)))
            stage.commit()
        sections[folder.name] = from_json(value_stage.Results, read_json(stage.out / "results.json")).value_probe
    return sections
