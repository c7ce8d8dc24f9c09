"""The pipeline's stages, one module each (world, prompts, ppo, sweep, pairs, dpo,
diffing, probes, sae, value, organisms, dialogue).

A stage module holds:
- `Config`: its config dataclass (the keys of its section in a run's YAML config);
- `Results`: its typed results dataclass; each field is one top-level section of `results.json`;
- `ARTIFACTS`: {artifact name: path inside the stage folder} of the files it writes that other
  stages or the report read (names are unique across stages);
- `plan(run, planner)`: add the stage to the plan when the run's config asks for it;
- `run(cfg, ctx) -> Results`: the work, written into `ctx.out`.

Stages call the method modules (`rl/`, `diff/`, `probes/`, `sae/`, ...) and read each other's
outputs only through `ctx.artifact(stage, name)` and `ctx.models`. `rewardlab.pipeline` is the
registry and the runner.
"""
