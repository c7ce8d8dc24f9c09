"""The stage registry, in run order, and the typed `results.json` that their sections make up."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from rewardlab.answers import Answer
from rewardlab.io import write_json
from rewardlab.schema import json_schema
from rewardlab.stages import (dialogue, diffing, dpo, organisms, pairs, ppo, probes, prompts, sae, sweep, value,
                              world)

SCHEMA_VERSION = 1  # bump when a section changes shape: finished stages then run again
REGISTRY = {m.NAME: m for m in (world, prompts, pairs, ppo, sweep, dpo, diffing, probes, sae, value,
                                 organisms, dialogue)}


@dataclass
class RunHeader:
    schema_version: int            # of this layout; docs/results.schema.json is generated from it
    name: str
    seed: int
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact name -> path relative to the run folder
    # (absolute for the PPO metrics of a given post model outside it)


def _section_fields() -> list[tuple[str, object, dataclasses.Field]]:
    """Every stage's sections, optional (a run may not have that stage), in run order."""
    out = []
    for module in REGISTRY.values():
        hints = typing.get_type_hints(module.Results)
        out += [(f.name, hints[f.name] | None, dataclasses.field(default=None)) for f in dataclasses.fields(module.Results)]
    return out


Results = dataclasses.make_dataclass(
    "Results", _section_fields() + [("answers", dict[str, Answer] | None, dataclasses.field(default=None))],
    bases=(RunHeader,))
Results.__doc__ = "A run's results.json: the header, every stage's sections and the answers to the research questions."
Results.__module__ = __name__


def results_schema() -> dict:
    """The JSON Schema of results.json (docs/results.schema.json is this, written by
    `python -m rewardlab.stages.registry docs/results.schema.json`)."""
    schema = json_schema(Results, "rewardlab results.json")
    schema["$defs"]["Results"]["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return schema


if __name__ == "__main__":
    import sys

    write_json(sys.argv[1], results_schema())
