"""The resumable pipeline behind `rewardlab run CONFIG.yaml --out RUN` and `rewardlab demo`.

Stages run in order, each in its own folder under RUN (see `rewardlab.runs.Stage`):

    world | prompts -> ppo -> pairs -> dpo -> diffing -> probes -> sae -> (results.json, report.html)

The review world (`world`) brings its base model, prompts, grammar and known reward; a `models`
section brings the user's own (see `ModelsSection` and `examples/`), and its `prompts` stage splits
the prompts into training and held-out ones.

A stage is skipped when its manifest fingerprint (its config section, the seed, and the hashes of
the stage folders it reads) matches; a stage killed midway restarts from its partial folder (PPO
resumes from its last checkpoint). Each stage writes `results.json` in its folder with the
sections it answers; the run's `results.json` merges them, so it is rebuilt identically from
finished stages. The whole config is checked before any work starts.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rewardlab.config import from_dict, load_yaml
from rewardlab.errors import InputError
from rewardlab.io import read_json, write_json, write_jsonl
from rewardlab.runs import Stage
from rewardlab.stats import describe

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class WorldSection:
    preset: str = "tiny"           # micro | tiny | small


@dataclass
class ModelsSection:
    """Bring your own models instead of the review world: a base and, optionally, a post-trained one
    (else the ppo / dpo sections post-train `base`).

    The `prompts` stage splits the prompts: post-training and the probe records use the training
    prompts; the implicit reward, divergent sampling and steering use the held-out ones, the
    `heldout_prompts` file when given, else `heldout_fraction` of the distinct prompts drawn with the
    run's seed. `reward` is the known (true) reward every stage scores with. The generation settings
    and `reward` are the defaults of every stage section that has such a key (a key set in the
    stage's section wins). Checking the config reads no file and loads no model; the prompts
    files must exist by then, models are loaded by the stages.

    Outside the review world there is no grammar and no minimal-pair world: grammatical rates are
    replaced by perplexity (under the base model for divergent samples, under the unsteered policy
    for steering), and the audit is skipped (results say why).
    """

    base: str = ""                 # Hugging Face name or local folder
    post: str | None = None        # the post-trained model to diff against base (skips ppo when set)
    prompts: str | None = None     # JSONL with a `prompt` field (required)
    heldout_prompts: str | None = None  # JSONL of held-out prompts; None: split off from `prompts`
    heldout_fraction: float = 0.2  # of the distinct prompts, when there is no heldout_prompts file
    reward: str = "utility"        # the true reward, a rewardlab.rewards.get_reward spec
    max_new_tokens: int = 32       # generation defaults of every sampling stage
    temperature: float = 1.0
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1.0: off
    dtype: str = "float32"         # weights of the diffing, probe and SAE stages (bfloat16 for 7B models on a GPU)
    device: str | None = None      # None: an accelerator if there is one, else CPU (PPO/DPO: their own `cpu` key)

    def generation(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p}


@dataclass
class SweepSection:
    """The reward-KL frontier: PPO (the ppo section's settings) at several KL coefficients."""

    kl_coefs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    phases: int = 20               # per coefficient (the main PPO run has its own)
    eval_samples: int = 256


@dataclass
class RunConfig:
    """One run. A section set to null (or left out, for optional stages) is not run."""

    name: str = "rewardlab run"
    seed: int = 0
    world: dict | None = field(default_factory=dict)    # WorldSection; null when `models` is given
    models: dict | None = None                          # ModelsSection
    ppo: dict | None = field(default_factory=dict)      # rewardlab.rl.config.PPOConfig (base filled in)
    sweep: dict | None = None                           # SweepSection: the reward-KL frontier
    pairs: dict | None = None                           # rewardlab.rl.config.PairsConfig (model filled in)
    dpo: dict | None = None                             # rewardlab.rl.config.DPOTrainConfig
    diffing: dict | None = None                         # rewardlab.diff.acceptance.DiffingConfig
    probes: dict | None = None                          # rewardlab.probes.pipeline config
    sae: dict | None = None                             # rewardlab.sae.diffing.DiffConfig
    report: bool = True


@dataclass
class Plan:
    """The validated configs of every stage that will run, with the folders they read and write."""

    run_dir: Path
    config: RunConfig
    stages: list[tuple[str, Any, Callable[["Plan", Any, Path], dict], dict[str, Path]]]
    models: dict[str, str]         # base, and post / ppo / dpo policies where the run has them

    def path(self, stage: str) -> Path:
        return self.run_dir / stage


# ------------------------------------------------------------------------------------------------
# stage bodies: each reads earlier stage folders, writes into `out`, returns its results sections


def _world(plan: Plan, cfg: WorldSection, out: Path) -> dict:
    from rewardlab.world import build_world

    info = build_world(out, preset=cfg.preset, seed=plan.config.seed, overwrite=True)
    est = info["estimates"]
    return {"world": {"grammatical_rate": est["grammatical_rate"], "base_reward_mean": est["base_reward_mean"],
                      "base_reward_std": est["base_reward_std"], "heldout_loss": info["heldout_loss"],
                      "preset": info["preset"], "vocab_size": info["vocab_size"], "seconds": info["seconds"]}}


def split_heldout(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training rows, held-out prompts): `fraction` of the distinct prompts (at least one, leaving at
    least one), drawn with numpy's default_rng(seed) from the sorted distinct prompts; every row of a
    held-out prompt leaves the training rows."""
    unique = sorted(set(prompts))
    if len(unique) < 2:
        raise InputError(f"{len(unique)} distinct prompt(s): at least 2 are needed to hold some out",
                         fix="give more prompts, or a heldout_prompts file")
    n = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held = {unique[i] for i in np.random.default_rng(seed).permutation(len(unique))[:n]}
    return [p for p in prompts if p not in held], [p for p in unique if p in held]


def _prompt_list(path: str | Path) -> list[str]:
    from rewardlab.io import read_jsonl

    return [r["prompt"] for r in read_jsonl(path, required=("prompt",))]


def _prompts(plan: Plan, cfg: dict, out: Path) -> dict:
    rows = _prompt_list(cfg["prompts"])
    if cfg["heldout_prompts"] is not None:
        train, heldout = rows, _prompt_list(cfg["heldout_prompts"])
    else:
        train, heldout = split_heldout(rows, cfg["heldout_fraction"], plan.config.seed)
    if not train or not heldout:
        raise InputError("no training or no held-out prompts", cfg["heldout_prompts"] or cfg["prompts"],
                         "each file needs at least one row with a `prompt`")
    write_jsonl(out / "train.jsonl", ({"prompt": p} for p in train))
    write_jsonl(out / "heldout.jsonl", ({"prompt": p} for p in heldout))
    return {"prompts": {"train": len(train), "heldout": len(heldout),
                        "heldout_from": "file" if cfg["heldout_prompts"] is not None else "split"}}


def _with_cis(summary: dict, keys: tuple[str, ...]) -> dict:
    """The summary's `keys`, each as its estimate (value, CI, n) where the summary has `KEY_ci`."""
    return {k: summary.get(f"{k}_ci", summary[k]) for k in keys if k in summary}


def _ppo(plan: Plan, cfg, out: Path) -> dict:
    from rewardlab.rl.ppo import train_ppo

    summary = train_ppo(cfg, out)
    keys = ("reward_base", "reward_base_std", "reward_policy", "kl_exact", "grammatical_rate",
            "grammatical_rate_base", "reward_gain_base_std", "seconds")
    return {"ppo": _with_cis(summary, keys),
            "artifacts": {"ppo_metrics": "ppo/metrics.jsonl", "ppo_samples": "ppo/samples.jsonl"}}


def _sweep(plan: Plan, cfg, out: Path) -> dict:
    from rewardlab.rl.sweep import sweep_kl

    sweep_kl(cfg["ppo"], cfg["kl_coefs"], out)
    return {"artifacts": {"frontier": "sweep/frontier.jsonl"}}


def _pairs(plan: Plan, cfg, out: Path) -> dict:
    from rewardlab.rl.pairs import make_pairs

    return {"pairs": make_pairs(cfg, out / "pairs.jsonl")}


def _dpo(plan: Plan, cfg, out: Path) -> dict:
    from rewardlab.rl.dpo import train_dpo

    summary = train_dpo(cfg, out)
    keys = ("reward_base", "reward_policy", "pair_accuracy", "kl_exact", "grammatical_rate", "seconds")
    return {"dpo": _with_cis(summary, keys)}


def main_policy(models: dict[str, str]) -> str | None:
    """The run's post-trained model that divergent sampling, probes and SAEs study: PPO, else `post`, else DPO."""
    return next((models[k] for k in ("ppo", "post", "dpo") if k in models), None)


def _diffing(plan: Plan, stage: dict, out: Path) -> dict:
    from rewardlab.diff.acceptance import diffing_results

    models = stage["models"]
    setting = {} if models is None else dict(
        prompts=_prompt_list(plan.path("prompts") / "heldout.jsonl"), reward=models.reward,
        generation=models.generation(), dtype=models.dtype, device=models.device)
    sections = diffing_results(plan.models["base"], ppo=plan.models.get("ppo"), dpo=plan.models.get("dpo"),
                               post=plan.models.get("post"), cfg=stage["diffing"], out_dir=out, **setting)
    artifacts = {"divergent_samples": "divergent.jsonl", "param_divergence": "params.csv",
                 "param_divergence_png": "params.png"}
    sections["artifacts"] = {k: f"diffing/{f}" for k, f in artifacts.items() if (out / f).is_file()}
    if "utility" in sections["audit"]:
        sections["audit"]["by_attribute"] = sections["audit"]["utility"]["per_attribute"]
    return sections


def _probes(plan: Plan, stage: dict, out: Path) -> dict:
    from rewardlab.probes.study import run_probe_study

    models = stage["models"]
    if models is None:
        from rewardlab.world import is_grammatical, world_of_model

        world = world_of_model(plan.models["base"])
        prompts, heldout = world.prompts, world.heldout_prompts
        setting = dict(reward="utility", checker=is_grammatical)
    else:
        prompts, heldout = (_prompt_list(plan.path("prompts") / f) for f in ("train.jsonl", "heldout.jsonl"))
        setting = dict(reward=models.reward, checker=None, dtype=models.dtype)
    policy = main_policy(plan.models)
    value_head = Path(policy).parent / "value_head.safetensors"
    sections = run_probe_study(policy, plan.models["base"], prompts, heldout, out, stage["probes"],
                               value_head_path=value_head if value_head.is_file() else None, **setting)
    sections.pop("config", None)
    sections.pop("n_records", None)
    sections["artifacts"] = {f"probe_heatmap_{i}_png": f"probes/{h}" for i, h in enumerate(sections["probe"]["heatmaps"])}
    sections["artifacts"]["steering_png"] = f"probes/{sections['steering']['plot']}"
    return sections


def _sae(plan: Plan, stage: dict, out: Path) -> dict:
    from rewardlab.io import read_jsonl
    from rewardlab.models import ModelPair
    from rewardlab.sae.diffing import acceptance_summary, compare_models

    models = stage["models"]
    loading = {"dtype": "float32"} if models is None else {"dtype": models.dtype, "device": models.device}
    pair = ModelPair.load(plan.models["base"], main_policy(plan.models), **loading)
    records = read_jsonl(plan.run_dir / "probes" / "records.jsonl", required=("prompt", "completion"))
    res = compare_models(pair.base, pair.post, pair.tokenizer, records, out, stage["sae"])
    acc, checks = res["acceptance"], acceptance_summary(res)["checks"]
    layer = res["by_layer"][str(res["layers"][0])]
    post = layer["models"]["post"]
    relevance = layer["activation_relevance"]
    counts_after = acc["crosscoder"]["counts_after"]
    interp = acc.get("interp", {})
    write_jsonl(out / "top_features.jsonl", [
        {"model": name, "feature": f["feature"], "explanation": f.get("explanation"), "score": f.get("simulation"),
         "mcs": f.get("mcs")} for name in ("post", "base") for f in layer["models"][name]["top_features"]])
    return {
        "sae": {"layer": acc["layer"], "site": acc["site"], "fvu": acc["sae"]["post"]["fvu"],
                "l0": acc["sae"]["post"]["l0"], "dead_fraction": acc["sae"]["post"]["dead_fraction"],
                "ce_loss_recovered": acc["sae"]["post"]["ce_loss_recovered"],
                "mmcs": post["mmcs"]["mmcs_max"], "mmcs_one_to_one": post["mmcs"]["mmcs_one_to_one"],
                "mmcs_random": post["baseline_random"]["mmcs_max"],
                "mmcs_other_seed": post["baseline_other_seed"]["mmcs_max"],
                "shared_features": post["mmcs"]["n_shared"], "checks": checks},
        "crosscoder": {"post_only": counts_after.get("post_only", 0), "base_only": counts_after.get("base_only", 0),
                       "shared": counts_after.get("shared", 0), "counts_before": acc["crosscoder"]["counts_before"],
                       "counts_after": counts_after,
                       "post_only_top_tokens": checks["crosscoder"]["post_only_top_tokens"]},
        "interp": {"explainer": "lexical (offline)", "mean_score": interp.get("simulation"),
                   "wrong_feature_score": interp.get("wrong_simulation"),
                   "difference": interp.get("simulation_minus_wrong"), "detection": interp.get("detection")},
        "reward_relevance": {"base": relevance["base"], "post": relevance["post"],
                             "post_minus_base": relevance["post_minus_base"],
                             "ci": relevance["post_minus_base"]["ci"],
                             "seed_control": checks["reward_relevance_post_minus_base"]["seed_control_max_abs"],
                             "description_metric": {m: layer["models"][m]["description_relevance"]
                                                    for m in ("base", "post")}},
        "artifacts": {"features": "sae/top_features.jsonl"},
    }


# ------------------------------------------------------------------------------------------------
# planning: every config checked before any work


def _check_file(path: str | None, where: str) -> None:
    if path is not None and not Path(path).is_file():
        raise InputError("file not found", where, f"create {path} (JSONL with a `prompt` field), or fix the path")


def _check_site(site: str, n_blocks: int | None, where: str) -> None:
    """A site name that parses, in range when the model's block count is known (else its syntax only)."""
    from rewardlab.sites import parse_site

    try:
        parse_site(site, n_blocks if n_blocks is not None else sys.maxsize)
    except InputError as e:
        raise InputError(e.what, where, e.fix) from None


def plan_run(config: dict, run_dir: str | Path, where: str = "config") -> Plan:
    """Validate the whole config and resolve each stage's inputs; raises InputError naming the key.

    Reads no data and loads no model: only the existence of the prompts files is checked."""
    from rewardlab.rl.config import DPOTrainConfig, PairsConfig, PPOConfig

    run = from_dict(RunConfig, config, where)
    run_dir = Path(run_dir).resolve()  # stage configs hold paths: one folder, one spelling, or a re-run redoes them
    stages: list = []
    n_blocks: int | None = None       # the base model's block count where it is known before loading it
    byo: ModelsSection | None = None  # the models section, when the run brings its own models
    defaults: dict[str, Any] = {}     # defaults the models section gives every stage section
    if run.models is not None:
        byo = from_dict(ModelsSection, run.models, f"{where}.models")
        if not byo.base:
            raise InputError("models.base is required", f"{where}.models.base", "a model name or folder")
        if byo.prompts is None:
            raise InputError("models.prompts is required", f"{where}.models.prompts",
                             "a JSONL file with a `prompt` field (see examples/)")
        if not 0 < byo.heldout_fraction < 1:
            raise InputError("heldout_fraction must be between 0 and 1", f"{where}.models.heldout_fraction")
        _check_file(byo.prompts, f"{where}.models.prompts")
        _check_file(byo.heldout_prompts, f"{where}.models.heldout_prompts")
        split = {k: getattr(byo, k) for k in ("prompts", "heldout_prompts", "heldout_fraction")}
        stages.append(("prompts", split, _prompts, {k: Path(v) for k, v in split.items()
                                                    if k != "heldout_fraction" and v is not None}))
        base, post, prompts = byo.base, byo.post, str(run_dir / "prompts" / "train.jsonl")
        defaults = {**byo.generation(), "reward": byo.reward}
    elif run.world is not None:
        from rewardlab.world import PRESETS

        world = from_dict(WorldSection, run.world, f"{where}.world")
        if world.preset not in PRESETS:
            raise InputError(f"unknown world preset {world.preset!r}", f"{where}.world.preset",
                             f"use one of: {', '.join(PRESETS)}")
        n_blocks = PRESETS[world.preset].n_layer
        stages.append(("world", world, _world, {}))
        base, post, prompts = str(run_dir / "world" / "base"), None, None
    else:
        raise InputError("a run needs either a world or a models section", where, "add `world: {preset: tiny}`")

    def stage_cfg(cls, section: str, values: dict | None, **filled):
        values = dict(values or {})
        clash = set(values) & set(filled)
        if clash:
            raise InputError(f"{', '.join(clash)} is set by the pipeline", f"{where}.{section}", "remove the key")
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in defaults.items() if k in names and k not in filled}
        cfg = from_dict(cls, {**given, **values, **filled}, f"{where}.{section}")
        if hasattr(cfg, "validate"):
            cfg.validate()
        return cfg

    models = {"base": base}
    data_inputs = {"prompts": run_dir / "prompts"} if byo is not None else {}
    if post is not None:
        models["post"] = post
    elif run.ppo is not None:
        ppo = stage_cfg(PPOConfig, "ppo", run.ppo, base=base, prompts=prompts, seed=run.seed)
        _check_site(ppo.value_site, n_blocks, f"{where}.ppo.value_site")
        stages.append(("ppo", ppo, _ppo, {"base": Path(base), **data_inputs}))
        models["ppo"] = str(run_dir / "ppo" / "policy")
        if run.sweep is not None:
            sweep = from_dict(SweepSection, run.sweep, f"{where}.sweep")
            swept = dataclasses.replace(ppo, phases=sweep.phases, eval_samples=sweep.eval_samples)
            stages.append(("sweep", {"ppo": swept, "kl_coefs": sweep.kl_coefs}, _sweep,
                           {"base": Path(base), **data_inputs}))
    if run.dpo is not None:
        pairs = stage_cfg(PairsConfig, "pairs", run.pairs, model=base, prompts=prompts, seed=run.seed)
        stages.append(("pairs", pairs, _pairs, {"base": Path(base), **data_inputs}))
        dpo = stage_cfg(DPOTrainConfig, "dpo", run.dpo, base=base, pairs=str(run_dir / "pairs" / "pairs.jsonl"),
                        prompts=prompts, seed=run.seed)
        stages.append(("dpo", dpo, _dpo, {"base": Path(base), "pairs": run_dir / "pairs", **data_inputs}))
        models["dpo"] = str(run_dir / "dpo" / "policy")
    model_inputs = {**{k: Path(v) for k, v in models.items()}, **data_inputs}
    if run.diffing is not None:
        from rewardlab.diff.acceptance import DiffingConfig

        stages.append(("diffing", {"diffing": stage_cfg(DiffingConfig, "diffing", run.diffing, seed=run.seed),
                                   "models": byo}, _diffing, model_inputs))
    if run.probes is not None or run.sae is not None:
        from rewardlab.probes.study import StudyConfig
        from rewardlab.sae.diffing import DiffConfig

        policy = main_policy(models)
        if policy is None:
            raise InputError("the probe and SAE stages need a post-trained model", f"{where}.probes",
                             "add a ppo or dpo section, or models.post")
        probe_values = dict(run.probes or {})
        if byo is not None:
            probe_values.setdefault("device", byo.device)
        probes = stage_cfg(StudyConfig, "probes", probe_values, seed=run.seed)
        if probes.steer_site not in ("best", "last_resid_post"):
            _check_site(probes.steer_site, n_blocks, f"{where}.probes.steer_site")
        for site in ([] if probes.sites == "all" else probes.sites.split(",")):
            _check_site(site.strip(), n_blocks, f"{where}.probes.sites")
        inputs = {"base": Path(base), "policy": Path(policy), **data_inputs}
        stages.append(("probes", {"probes": probes, "models": byo}, _probes, inputs))
        if run.sae is not None:
            sae = stage_cfg(DiffConfig, "sae", run.sae, seed=run.seed)
            for layer in sae.layers or []:
                _check_site(f"blocks.{layer}.{sae.site_kind}", n_blocks, f"{where}.sae.layers")
            stages.append(("sae", {"sae": sae, "models": byo}, _sae, {**inputs, "probes": run_dir / "probes"}))
    return Plan(run_dir, run, stages, models)


# ------------------------------------------------------------------------------------------------
# running


def _stage_inputs(plan: Plan, inputs: dict[str, Path]) -> dict[str, Path]:
    """Inputs inside the run are identified by their stage folder (its manifest), not by files being written."""
    resolved = {}
    for key, path in inputs.items():
        path = Path(path)
        try:
            rel = path.relative_to(plan.run_dir)
            resolved[key] = plan.run_dir / rel.parts[0]
        except ValueError:
            resolved[key] = path
    return resolved


def _config_dict(cfg: Any) -> Any:
    """A stage's config as plain data for its fingerprint (a dataclass, or a dict holding some)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return {k: _config_dict(v) for k, v in cfg.items()}
    return cfg


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> dict:
    """Run (or skip) every stage, then merge their results into RUN/results.json and write the report."""
    import torch

    plan.run_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg, body, inputs in plan.stages:
        cfg_dict = _config_dict(cfg)
        stage = Stage(plan.run_dir, name, cfg_dict, _stage_inputs(plan, inputs), seed=plan.config.seed)
        if stage.done():
            log(f"[{name}] done already, skipped")
            continue
        log(f"[{name}] running")
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            sections = body(plan, cfg, stage.work)
        finally:  # a stage that sets its own thread count (PPO, DPO) must not change later stages' floats:
            torch.set_num_threads(threads)  # a resumed run starts them with the default count
        write_json(stage.work / "results.json", sections)
        stage.commit()
        log(f"[{name}] finished in {time.perf_counter() - t0:.0f} s")
    results = merge_results(plan)
    write_json(plan.run_dir / "results.json", results)
    if plan.config.report:
        from rewardlab.report import build_report

        build_report(plan.run_dir)
    return results


def merge_results(plan: Plan) -> dict:
    """RUN/results.json: the sections of every finished stage, artifacts merged, in stage order."""
    results: dict = {"name": plan.config.name, "seed": plan.config.seed, "artifacts": {}}
    for name, *_ in plan.stages:
        sections = read_json(plan.path(name) / "results.json")
        results["artifacts"].update(sections.pop("artifacts", {}))
        results.update(sections)
    return results


def run_config_file(config_path: str | Path, run_dir: str | Path, seed: int | None = None) -> dict:
    """Check the config, then run it into `run_dir` (re-using finished stages); `seed` overrides the config's."""
    config = load_yaml(config_path)
    if seed is not None:
        config["seed"] = seed
    return run_plan(plan_run(config, run_dir, where=str(config_path)))


def _fmt(x: Any) -> str:
    if isinstance(x, dict) and "value" in x:
        return describe(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


SUMMARY_ROWS = [
    ("world", "grammatical_rate"), ("world", "base_reward_mean"), ("world", "base_reward_std"),
    ("ppo", "reward_base"), ("ppo", "reward_policy"), ("ppo", "kl_exact"), ("ppo", "grammatical_rate"),
    ("dpo", "reward_policy"), ("dpo", "pair_accuracy"),
    ("implicit_reward", "spearman_true"), ("probe", "spearman"), ("probe", "selectivity"),
    ("probe", "prompt_only_spearman"), ("probe", "value_head_cosine"), ("steering", "effect_at_max_alpha"),
    ("steering", "random_max_abs_effect"), ("steering", "effect_over_random"), ("steering", "effect_at_min_alpha"),
    ("steering", "effect_over_random_at_min_alpha"),
    ("sae", "fvu"), ("sae", "mmcs"), ("sae", "mmcs_random"), ("crosscoder", "post_only"),
    ("interp", "mean_score"), ("interp", "wrong_feature_score"), ("reward_relevance", "post_minus_base"),
    ("audit", "accuracy"), ("params", "top_layers"),
]
CI_BESIDE = {("implicit_reward", "spearman_true"), ("probe", "spearman")}  # their CI and n are the section's "ci", "n"


def summary_table(results: dict, run_dir: str | Path) -> str:
    """One screen: the headline number of each section, then where the report is."""
    lines = [f"{results.get('name', 'run')} (seed {results.get('seed')})"]
    for section, key in SUMMARY_ROWS:
        values = results.get(section, {})
        if key in values:
            x = values[key]
            if (section, key) in CI_BESIDE and isinstance(x, float) and "ci" in values:
                x = {"value": x, "ci": values["ci"], "n": values["n"]}
            lines.append(f"  {section + '.' + key:<34} {_fmt(x)}")
    report = Path(run_dir) / "report.html"
    lines.append(f"results: {Path(run_dir) / 'results.json'}")
    if report.is_file():
        lines.append(f"report:  {report}")
    return "\n".join(lines)


def demo_config(fast: bool = False) -> Path:
    return CONFIG_DIR / ("demo-fast.yaml" if fast else "demo.yaml")
