"""What every stage shares: the run's own-models setting, the planner and the run context."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from rewardlab.config import chat_template_field, from_dict
from rewardlab.errors import InputError
from rewardlab.io import read_jsonl
from rewardlab.sites import parse_site


@dataclass
class ModelsSection:
    """Bring your own models instead of the review world: a base and, optionally, a post-trained one
    (else the ppo / dpo sections post-train `base`).

    The `prompts` stage splits the prompts: post-training and the probe records use the training
    prompts; the implicit reward, divergent sampling and steering use the held-out ones, the
    `heldout_prompts` file when given, else `heldout_fraction` of the distinct prompts drawn with the
    run's seed. `reward` is the known (true) reward every stage scores with. The generation settings,
    `reward` and `chat_template` are the defaults of every stage section that has such a key (a key
    set in the stage's section wins); every stage loads its tokenizer with `chat_template`. Checking the config reads no file and loads no model; the prompts
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
    temperature: float = 1.0       # sampling temperature
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1.0: off
    dtype: str = "float32"         # weights of the diffing, probe and SAE stages (bfloat16 for 7B models on a GPU)
    device: str | None = None      # None: an accelerator if there is one, else CPU (PPO and DPO: their own `device` keys)
    chat_template: str = chat_template_field()

    def generation(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p}


@dataclass
class RunConfig:
    """One run. A section set to null (or left out, for optional stages) is not run."""

    name: str = "rewardlab run"    # title of the report
    seed: int = 0                  # the seed of every stage
    world: dict | None = field(default_factory=dict)    # stages.world.Config; null when `models` is given
    models: dict | None = None                          # ModelsSection
    ppo: dict | None = field(default_factory=dict)      # rewardlab.rl.config.PPOConfig (base filled in)
    sweep: dict | None = None                           # stages.sweep.Config: the reward-KL frontier
    pairs: dict | None = None                           # rewardlab.rl.config.PairsConfig (model filled in)
    dpo: dict | None = None                             # rewardlab.rl.config.DPOTrainConfig
    diffing: dict | None = None                         # stages.diffing.Config
    probes: dict | None = None                          # stages.probes.Config
    sae: dict | None = None                             # rewardlab.sae.diffing.DiffConfig
    value: dict | None = None                           # stages.value.Config: value probes against Monte Carlo V
    organisms: dict | None = None                       # stages.organisms.Config: model organisms from the run's world
    dialogue: dict | None = None                        # stages.dialogue.Config: two-turn conversations (question 8)
    report: bool = True                                 # write report.html
    side_by_side: bool = False  # run a one-thread stage (PPO, DPO at `threads: 1`) beside another in its own process


@dataclass
class PlannedStage:
    """One stage of a plan: its module, its checked config and the paths its fingerprint hashes."""

    name: str
    config: Any                    # the stage's Config dataclass
    inputs: dict[str, Path]


@dataclass
class Planner:
    """The state of planning a run: what the stages planned so far provide to the next ones."""

    run: RunConfig
    run_dir: Path
    where: str                     # the config's name in error messages
    setting: ModelsSection | None = None  # the run's own models, None in the review world
    base: str = ""                 # the base model (a folder or a hub name)
    prompts: str | None = None     # the training prompts file, None: the world's
    n_blocks: int | None = None    # the base model's block count where known before loading it
    world_preset: str | None = None  # the review world's preset, None when the run brings its own models
    models: dict[str, str] = field(default_factory=dict)  # base, post, ppo, dpo: model folders
    stages: list[PlannedStage] = field(default_factory=list)

    def add(self, name: str, config: Any, inputs: dict[str, Path] | None = None) -> None:
        self.stages.append(PlannedStage(name, config, dict(inputs or {})))

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def data_inputs(self) -> dict[str, Path]:
        """The prompts stage's folder, when the run brings its own prompts."""
        return {"prompts": self.stage_dir("prompts")} if self.setting is not None else {}

    def config(self, cls: type, section: str, values: dict | None, **filled: Any) -> Any:
        """The stage config `cls` from its YAML section: the models section's defaults, then the
        section's own keys, then the keys the pipeline fills in (which the section may not set)."""
        values = dict(values or {})
        clash = set(values) & set(filled)
        if clash:
            raise InputError(f"{', '.join(clash)} is set by the pipeline", f"{self.where}.{section}",
                             "remove the key")
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {} if self.setting is None else {**self.setting.generation(), "reward": self.setting.reward,
                                                    "chat_template": self.setting.chat_template}
        given = {k: v for k, v in defaults.items() if k in names and k not in filled}
        cfg = from_dict(cls, {**given, **values, **filled}, f"{self.where}.{section}")
        if hasattr(cfg, "validate"):
            cfg.validate()
        return cfg

    def add_benchmark(self, name: str, cls: type, values: dict, world_of: dict[str, str], **filled: Any) -> None:
        """Add a benchmark (`dialogue`, `organisms`) as a pipeline stage from its section `values`: it needs
        the run's review world (RUN/world, filled in as the config's `world`, with `filled`, e.g. the run's
        seed); its `preset` follows the world's unless the section sets one; `world_of` maps each of the
        benchmark's presets to the world preset it needs (the two must match)."""
        where = f"{self.where}.{name}"
        if self.world_preset is None:
            raise InputError(f"the {name} stage needs the review world, this run brings its own models", where,
                             f"remove the {name} section, or run it in a review-world run (`world: {{preset: micro}}`)")
        values = dict(values)
        if "preset" not in values:
            if self.world_preset not in world_of:
                raise InputError(f"the {name} stage has no preset for a {self.world_preset} world", where,
                                 f"set world.preset to one of: {', '.join(world_of)}")
            values["preset"] = self.world_preset
        world = self.stage_dir("world")
        cfg = self.config(cls, name, values, **filled, world=str(world))
        if world_of[cfg.preset] != self.world_preset:
            raise InputError(f"the {cfg.preset} {name} preset needs a {world_of[cfg.preset]} world, the run's world "
                             f"is {self.world_preset}", f"{where}.preset",
                             f"leave the {name} preset out (it follows the world's), or change world.preset")
        self.add(name, cfg, {"world": world})

    def check_site(self, site: str, where: str) -> None:
        """A site name that parses, in range when the model's block count is known (else its syntax only)."""
        try:
            parse_site(site, self.n_blocks if self.n_blocks is not None else sys.maxsize)
        except InputError as e:
            raise InputError(e.what, f"{self.where}.{where}", e.fix) from None


@dataclass
class Context:
    """What a stage's `run` gets besides its config."""

    run_dir: Path
    out: Path                      # the stage's work folder; it becomes RUN/NAME when the stage finishes
    seed: int
    models: dict[str, str]         # base, and post / ppo / dpo where the run has them
    setting: ModelsSection | None  # the run's own models, None in the review world
    registry: dict[str, ModuleType]  # stage name -> stage module

    def artifact(self, stage: str, name: str) -> Path | None:
        """The finished `stage`'s artifact `name` (as its module declares it), None if it has none."""
        path = self.run_dir / stage / self.registry[stage].ARTIFACTS[name]
        return path if path.exists() else None

    def main_policy(self) -> str | None:
        return main_policy(self.models)

    @property
    def chat_template(self) -> str:
        """The run's chat-template setting: the models section's, auto in the review world."""
        return "auto" if self.setting is None else self.setting.chat_template


def load_policy_and_base(ctx: Context, device: str | None) -> tuple[Any, Any, Any]:
    """(the main policy, the base model, the policy's tokenizer loaded with the run's chat-template
    setting), in the run's dtype (float32 in the review world)."""
    from rewardlab.models import load_model  # loads transformers

    dtype = "float32" if ctx.setting is None else ctx.setting.dtype
    policy, tokenizer = load_model(ctx.main_policy(), device=device, dtype=dtype, chat_template=ctx.chat_template)
    base, _ = load_model(ctx.models["base"], device=device, dtype=dtype)
    return policy, base, tokenizer


def run_prompts(ctx: Context) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): the review world's, or the `prompts` stage's files."""
    if ctx.setting is None:
        from rewardlab.world import world_of_model

        world = world_of_model(ctx.models["base"])
        return list(world.prompts), list(world.heldout_prompts)
    return tuple(prompt_list(ctx.artifact("prompts", name)) for name in ("train_prompts", "heldout_prompts"))


def benchmark_world(world: str | None, preset: str, world_preset: str, seed: int, out: Path,
                    log: Callable[[str], None]) -> Path:
    """The review world of a benchmark folder (`organisms run`, `dialogue run`): `world` when given (it must
    be a `world_preset` world, the benchmark preset `preset` needs one), else one built once in out/world
    (a resumable `runs.Stage`) with `seed`."""
    from rewardlab.runs import Stage
    from rewardlab.world import build_world, load_world

    if world is not None:
        found = load_world(world).info["preset"]
        if found != world_preset:
            raise InputError(f"the world is a {found} world, the {preset} preset needs a {world_preset} one", world,
                             f"pass --preset {found}, or another world")
        return Path(world).resolve()
    stage = Stage(out, "world", {"preset": world_preset}, seed=seed)
    if not stage.done():
        log(f"[world] building the {world_preset} world")
        build_world(stage.work, preset=world_preset, seed=seed, progress=False, overwrite=True)
        stage.commit()
    return stage.out


def main_policy(models: dict[str, str]) -> str | None:
    """The run's post-trained model that divergent sampling, probes and SAEs study: PPO, else `post`, else DPO."""
    return next((models[k] for k in ("ppo", "post", "dpo") if k in models), None)


def prompt_list(path: str | Path) -> list[str]:
    """The `prompt` field of every row of a JSONL file."""
    return [r["prompt"] for r in read_jsonl(path, required=("prompt",))]


def check_file(path: str | None, where: str) -> None:
    if path is not None and not Path(path).is_file():
        raise InputError("file not found", where, f"create {path} (JSONL with a `prompt` field), or fix the path")
