"""The resumable pipeline behind `rewardlab run CONFIG.yaml --out RUN` and `rewardlab demo`: the
stage registry and the runner.

Stages (`rewardlab.stages`, one module each) run in registry order, each in its own folder RUN/NAME:

    world | prompts -> pairs -> ppo -> sweep -> dpo -> diffing -> probes -> sae -> value -> organisms
        -> dialogue -> results.json, report.html

Planning checks the whole config before any work (every stage's `plan` reads its section). A stage
is skipped when its manifest fingerprint (its config without the runtime settings such as `threads`,
the run's models section, the seed, and the hashes of the stage folders and files it reads) matches; a stage killed midway restarts from its
partial folder (PPO resumes from its last checkpoint). Each stage writes its typed results into
RUN/NAME/results.json; the run's results.json merges them with the artifacts the stages declare and
the answers to the research questions, so it is rebuilt identically from finished stages.

With `side_by_side: true` (a runtime setting, as the demo sets it) a stage that keeps one core busy
(PPO and DPO at their default `threads: 1`) runs beside the next such stage whose inputs are ready,
that one in its own process (`run_plan`); the numbers are those of a run one stage at a time.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rewardlab import answers, distributed
from rewardlab.config import from_dict, load_yaml, without_runtime
from rewardlab.errors import InputError
from rewardlab.io import read_json, write_json
from rewardlab.processes import Child, child_main
from rewardlab.report import build_report
from rewardlab.runs import Stage
from rewardlab.schema import from_json, to_json
from rewardlab.stages.common import Context, Planner, PlannedStage, RunConfig
from rewardlab.stages.registry import REGISTRY, SCHEMA_VERSION, Results
from rewardlab.stats import describe

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class Plan:
    """The validated configs of every stage that will run, with the folders they read and write."""

    run_dir: Path
    config: RunConfig
    stages: list[PlannedStage]
    models: dict[str, str]         # base, and post / ppo / dpo policies where the run has them
    setting: object = None         # the run's ModelsSection, None in the review world
    where: str = "config"          # the config's name in error messages

    def path(self, stage: str) -> Path:
        return self.run_dir / stage


def plan_run(config: dict, run_dir: str | Path, where: str = "config") -> Plan:
    """Validate the whole config and resolve each stage's inputs; raises InputError naming the key.

    Reads no data and loads no model: only the existence of the prompts files is checked."""
    run = from_dict(RunConfig, config, where)
    run_dir = Path(run_dir).resolve()  # stage configs hold paths: one folder, one spelling, or a re-run redoes them
    p = Planner(run, run_dir, where)
    if run.models is not None:
        REGISTRY["prompts"].plan(run, p)
    elif run.world is not None:
        REGISTRY["world"].plan(run, p)
    else:
        raise InputError("a run needs either a world or a models section", where, "add `world: {preset: tiny}`")
    p.models["base"] = p.base
    if p.setting is not None and p.setting.post is not None:
        p.models["post"] = p.setting.post
    for name, module in REGISTRY.items():
        if name not in ("world", "prompts"):
            module.plan(run, p)
    return Plan(run_dir, run, p.stages, p.models, p.setting, where)


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


def fingerprinted_config(plan: Plan, stage: PlannedStage) -> dict:
    """What a stage's fingerprint hashes besides its inputs: its config (without the runtime settings,
    `rewardlab.config.RUNTIME_SETTINGS`: a run resumes with another thread count), the run's models
    section and the results schema version (a stage whose results an older layout wrote runs again)."""
    setting = None if plan.setting is None else dataclasses.asdict(plan.setting)
    config = to_json(stage.config)
    return {"config": without_runtime(config) if isinstance(config, dict) else config, "models": setting,
            "schema_version": SCHEMA_VERSION}


def _stage_folder(plan: Plan, stage: PlannedStage) -> Stage:
    return Stage(plan.run_dir, stage.name, fingerprinted_config(plan, stage), _stage_inputs(plan, stage.inputs),
                 seed=plan.config.seed)


def run_stage(plan: Plan, stage: PlannedStage, log: Callable[[str], None] = print) -> None:
    """Run one stage of the plan in this process into RUN/NAME, or skip it when it is done already."""
    folder = _stage_folder(plan, stage)
    if folder.done():
        log(f"[{stage.name}] done already, skipped")
        return
    log(f"[{stage.name}] running")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    ctx = Context(plan.run_dir, folder.work, plan.config.seed, plan.models, plan.setting, REGISTRY)
    try:
        section = REGISTRY[stage.name].run(stage.config, ctx)
    finally:  # a stage that sets its own thread count (PPO, DPO) must not change later stages' floats:
        torch.set_num_threads(threads)  # a resumed run starts them with the default count
    write_json(folder.work / "results.json", to_json(section))
    folder.commit()
    log(f"[{stage.name}] finished in {time.perf_counter() - t0:.0f} s")


def _one_thread(stage: PlannedStage) -> bool:
    """Whether the stage keeps one core busy (its module's `threads(config)` is 1)."""
    threads = getattr(REGISTRY[stage.name], "threads", None)
    return threads is not None and threads(stage.config) == 1


def _reads(plan: Plan, stage: PlannedStage) -> set[str]:
    """The names of the run's stages whose folders `stage` reads."""
    names = {s.name for s in plan.stages}
    return {path.relative_to(plan.run_dir).parts[0] for path in _stage_inputs(plan, stage.inputs).values()
            if path.is_relative_to(plan.run_dir)} & names


@dataclass
class _Beside:
    """A stage running in a child process beside the stage `beside` running here."""

    child: Child
    started: float
    beside: str


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> dict:
    """Run (or skip) every stage, then merge their results into RUN/results.json and write the report.

    With the run's `side_by_side`, a one-thread stage that runs here gets a companion: the next one-thread
    stage whose inputs are finished runs at the same time in its own process (`python -m rewardlab.pipeline`,
    its output in RUN/NAME.log). A stage that reads the companion's folder, or that is not one-thread,
    waits for it first. Each stage's numbers do not depend on where it runs; its `seconds` do."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    finished: set[str] = set()
    beside: dict[str, _Beside] = {}

    def join(name: str) -> None:
        companion = beside.pop(name)
        companion.child.finish(f"the {name} stage")
        finished.add(name)
        log(f"[{name}] finished in {time.perf_counter() - companion.started:.0f} s, beside {companion.beside} "
            f"(its output: {companion.child.log})")

    side_by_side = plan.config.side_by_side and distributed.rank_and_world()[1] == 1
    try:
        for i, stage in enumerate(plan.stages):
            if stage.name in beside:
                join(stage.name)
            if stage.name in finished:  # it ran beside an earlier stage
                continue
            for name in set(beside) & _reads(plan, stage):
                join(name)
            if not _stage_folder(plan, stage).done():
                if not _one_thread(stage):  # it takes every core
                    for name in list(beside):
                        join(name)
                elif side_by_side and not beside:
                    _start_companion(plan, plan.stages[i + 1:], finished, beside, stage.name, log)
            run_stage(plan, stage, log)
            finished.add(stage.name)
        for name in list(beside):
            join(name)
    finally:
        for companion in beside.values():
            companion.child.kill()
    results = merge_results(plan)
    write_json(plan.run_dir / "results.json", results)
    if plan.config.report:
        build_report(plan.run_dir)
    return results


def _start_companion(plan: Plan, later: list[PlannedStage], finished: set[str], beside: dict[str, _Beside],
                     here: str, log: Callable[[str], None]) -> None:
    """Start the first of `later` that is one-thread, not done and whose inputs are finished, in a child process."""
    for stage in later:
        if _one_thread(stage) and _reads(plan, stage) <= finished and not _stage_folder(plan, stage).done():
            path = plan.run_dir / f"{stage.name}.log"
            child = Child.start("rewardlab.pipeline", [str(plan.run_dir), stage.name, plan.where,
                                                       json.dumps(dataclasses.asdict(plan.config))], path)
            beside[stage.name] = _Beside(child, time.perf_counter(), here)
            log(f"[{stage.name}] running beside {here}, in its own process (its output: {path})")
            return


def merge_results(plan: Plan) -> dict:
    """RUN/results.json: the sections of every finished stage in stage order, the artifacts they
    declare that exist, and the answers to the research questions."""
    merged: dict = {"schema_version": SCHEMA_VERSION, "name": plan.config.name, "seed": plan.config.seed,
                    "artifacts": {}}
    for stage in plan.stages:
        module = REGISTRY[stage.name]
        data = read_json(plan.path(stage.name) / "results.json")
        merged.update(to_json(from_json(module.Results, data, f"{stage.name}/results.json")))
        merged["artifacts"].update({k: f"{stage.name}/{v}" for k, v in module.ARTIFACTS.items()
                                    if (plan.path(stage.name) / v).is_file()})
    post_metrics = given_post_metrics(plan.models.get("post"))
    if post_metrics is not None and "ppo_metrics" not in merged["artifacts"]:
        merged["artifacts"]["ppo_metrics"] = str(post_metrics)
    typed = from_json(Results, merged, "results.json")
    merged["answers"] = to_json(answers.answer_all(typed))
    return merged


def given_post_metrics(post: str | None) -> Path | None:
    """The PPO metrics (absolute path) of a given post model that `rewardlab train ppo` wrote: metrics.jsonl
    in its folder or beside its policy/ folder, with PPO's columns; None otherwise (a Hub name, DPO's)."""
    if post is None:
        return None
    for path in (Path(post) / "metrics.jsonl", Path(post).parent / "metrics.jsonl"):
        if path.is_file():
            first = path.read_text(encoding="utf-8").split("\n", 1)[0]
            if all(f'"{k}"' in first for k in ("phase", "reward_mean", "kl_exact")):
                return path.resolve()
    return None


def run_config_file(config_path: str | Path, run_dir: str | Path, seed: int | None = None) -> dict:
    """Check the config, then run it into `run_dir` (re-using finished stages); `seed` overrides the config's."""
    config = load_yaml(config_path)
    if seed is not None:
        config["seed"] = seed
    return run_plan(plan_run(config, run_dir, where=str(config_path)))


SUMMARY_ROWS = [
    "world.grammatical_rate", "world.base_reward_mean", "world.base_reward_std",
    "ppo.reward_base", "ppo.reward_policy", "ppo.kl_exact", "ppo.grammatical_rate",
    "dpo.reward_policy", "dpo.pair_accuracy",
    "implicit_reward.spearman_true", "probe.spearman", "probe.selectivity", "probe.versus_baselines.difference",
    "probe.prompt_only.spearman", "probe.value_head.cosine_with_probe_at_value_site",
    "steering.effect_at_max_alpha", "steering.random_max_abs_effect", "steering.effect_over_random",
    "steering.effect_at_min_alpha", "steering.effect_over_random_at_min_alpha",
    "sae.fvu", "sae.mmcs", "sae.mmcs_random", "crosscoder.post_only",
    "interp.mean_score", "interp.wrong_feature_score", "reward_relevance.post_minus_base",
    "audit.accuracy", "params.top_layers",
]


def _lookup(results: dict, path: str):
    x = results
    for key in path.split("."):
        if not isinstance(x, dict) or key not in x:
            return None
        x = x[key]
    return x


def _fmt(x) -> str:
    if isinstance(x, dict) and "value" in x:
        return describe(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    if isinstance(x, list):
        return ", ".join(map(str, x))
    return str(x)


def summary_table(results: dict, run_dir: str | Path) -> str:
    """One screen: the headline numbers, the verdicts, then where the report is."""
    lines = [f"{results.get('name', 'run')} (seed {results.get('seed')})"]
    for path in SUMMARY_ROWS:
        x = _lookup(results, path)
        if x is not None:
            lines.append(f"  {path:<48} {_fmt(x)}")
    for qid, answer in results.get("answers", {}).items():
        lines.append(f"  {qid:<48} {answer['verdict']}")
    report = Path(run_dir) / "report.html"
    lines.append(f"results: {Path(run_dir) / 'results.json'}")
    if report.is_file():
        lines.append(f"report:  {report}")
    return "\n".join(lines)


def demo_config(fast: bool = False) -> Path:
    return CONFIG_DIR / ("demo-fast.yaml" if fast else "demo.yaml")


def _run_one_stage(run_dir: str, name: str, where: str, config: dict) -> None:
    """A companion stage of `run_plan` in its own process: plan the run again, run the named stage."""
    plan = plan_run(config, run_dir, where)
    run_stage(plan, next(s for s in plan.stages if s.name == name))


if __name__ == "__main__":  # python -m rewardlab.pipeline RUN_DIR STAGE WHERE CONFIG_JSON: one stage (`run_plan`)
    child_main(lambda: _run_one_stage(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
