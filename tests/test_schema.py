"""Typed results: dataclasses to JSON and back, key-path errors, and the shipped JSON Schema that the
demo's results.json validates against."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jsonschema
import pytest

from rewardlab.errors import InputError
from rewardlab.schema import from_json, json_schema, to_json
from rewardlab.stages.registry import SCHEMA_VERSION, results_schema
from rewardlab.stats import Estimate

SCHEMA_FILE = Path(__file__).parents[1] / "docs" / "results.schema.json"


@dataclass
class Inner:
    score: float                   # a number
    tag: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    est: Estimate
    inners: list[Inner]
    by_key: dict[str, Inner]
    pair: tuple[float, ...] = (0.0, 1.0)
    maybe: Inner | None = None
    either: str | int = 0
    extra: dict = field(default_factory=dict)


def test_round_trip_and_none_fields_left_out():
    x = Outer("n", Estimate(0.5, (0.25, 0.75), 10, 3), [Inner(1.0), Inner(math.nan, "b")], {"k": Inner(2.0)},
              either=7, extra={"any": [1, "x"]})
    data = to_json(x)
    assert "maybe" not in data and data["inners"][1]["score"] is None  # nan is not JSON: null
    assert data["est"] == {"value": 0.5, "ci": [0.25, 0.75], "n": 10, "n_groups": 3}
    back = from_json(Outer, json.loads(json.dumps(data)))
    assert back.est == x.est and back.pair == (0.0, 1.0) and back.either == 7 and back.maybe is None
    assert math.isnan(back.inners[1].score) and back.by_key["k"] == Inner(2.0) and back.extra == {"any": [1, "x"]}
    assert from_json(dict[str, Estimate], {"a": to_json(x.est)}) == {"a": x.est}


@pytest.mark.parametrize("data,match", [
    ({"name": "n", "est": {"value": 1, "ci": [0, 2], "n": 3}, "inners": [], "by_key": {}, "oops": 1},
     r"^oops: unknown key 'oops'"),
    ({"name": "n", "inners": [], "by_key": {}}, r"^Outer: missing key 'est'"),
    ({"name": "n", "est": {"value": 1, "ci": [0, 2], "n": 3}, "inners": [{"score": "high"}], "by_key": {}},
     r"^inners\[0\]\.score: expected a number, got str 'high'"),
    ({"name": "n", "est": {"value": 1, "ci": [0, 2], "n": 3}, "inners": [{"score": 1, "tag": "c"}], "by_key": {}},
     r"^inners\[0\]\.tag: expected 'a' \| 'b'"),
    ({"name": "n", "est": {"value": 1, "ci": [0, 2], "n": 2.5}, "inners": [], "by_key": {}},
     r"^est\.n: expected an integer"),
])
def test_decoding_errors_name_the_key(data, match):
    with pytest.raises(InputError, match=match):
        from_json(Outer, data)


def test_schema_of_a_dataclass_carries_types_and_field_docs():
    schema = json_schema(Outer, "t")
    inner = schema["$defs"]["Inner"]
    assert inner["properties"]["score"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "description": "a number"}
    assert inner["properties"]["tag"]["enum"] == ["a", "b"] and inner["required"] == ["score"]
    outer = schema["$defs"]["Outer"]
    assert outer["properties"]["maybe"] == {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]}
    assert set(outer["required"]) == {"name", "est", "inners", "by_key"} and outer["additionalProperties"] is False


def test_the_shipped_schema_is_the_generated_one():
    """docs/results.schema.json is regenerated with `python -m rewardlab.stages.registry docs/results.schema.json`."""
    assert json.loads(SCHEMA_FILE.read_text()) == results_schema()


def test_the_demo_results_validate_against_the_schema(fast_demo):
    results = json.loads((fast_demo / "results.json").read_text())
    assert results["schema_version"] == SCHEMA_VERSION
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    validator.validate(results)
    for section, key, value in (("probe", "spearman", 0.9),  # the pre-schema shape: a number beside "ci" and "n"
                                ("sae", "unknown", 1), ("answers", "q1-probe", {"verdict": "maybe", "text": ""})):
        broken = json.loads(json.dumps(results))
        broken[section][key] = value
        assert not validator.is_valid(broken), (section, key)


def _estimates(x, path=""):
    if isinstance(x, dict):
        if "value" in x and isinstance(x.get("ci"), list):
            yield path, x
        for k, v in x.items():
            yield from _estimates(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _estimates(v, f"{path}[{i}]")


def test_every_estimate_in_the_demo_results_contains_its_value(fast_demo):
    results = json.loads((fast_demo / "results.json").read_text())
    found = list(_estimates(results))
    assert len(found) > 100
    outside = [(p, e["value"], e["ci"]) for p, e in found
               if None not in (e["value"], *e["ci"]) and not e["ci"][0] - 1e-9 <= e["value"] <= e["ci"][1] + 1e-9]
    assert not outside, outside
