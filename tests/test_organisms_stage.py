"""The organisms benchmark as an optional pipeline stage (`organisms:` in a run's config): its section in
the run's results.json, built from the run's own world and the same as `rewardlab organisms run` gives on
that world, the report's section, and its config checked before any work."""

import pytest
import yaml

from rewardlab.cli import main
from rewardlab.errors import InputError
from rewardlab.io import read_json
from rewardlab.organisms.hypotheses import METHODS
from rewardlab.pipeline import plan_run
from rewardlab.schema import from_json
from rewardlab.stages.organisms import OrganismsSection

MICRO = {"name": "t", "seed": 0, "world": {"preset": "micro"}}


def test_fast_demo_has_the_planted_organism_built_from_its_world(fast_demo):
    results = read_json(fast_demo / "results.json")
    section = from_json(OrganismsSection, results["organisms"], "organisms")
    assert (section.preset, section.post_training, section.seeds) == ("micro", "ppo", 1)  # micro follows the world
    assert [(r.organism, r.seed, r.reward_spec) for r in section.runs] == [("planted", 0, "planted:k=3,seed=0")]
    assert list(section.cells) == ["planted"] and list(section.cells["planted"]) == list(METHODS)
    for method, cell in section.cells["planted"].items():
        assert cell.n_seeds == 1 and cell.spearman_truth is None and cell.pair_accuracy is None
        for est in (cell.auroc, cell.precision_at_k):
            assert est.ci[0] <= est.value <= est.ci[1], method
    assert list(section.measures) == ["planted"] and section.value_probe is None
    # the organism was post-trained from the run's world, not from a second one
    inner = read_json(fast_demo / "organisms" / "planted-seed0" / "manifest.json")
    assert inner["inputs"]["world"] == str(fast_demo.resolve() / "world")
    assert not (fast_demo / "organisms" / "world").exists()


def test_the_stage_gives_the_same_section_as_the_command_on_the_same_world(fast_demo, tmp_path):
    out = tmp_path / "bench"
    assert main(["organisms", "run", "--out", str(out), "--world", str(fast_demo / "world"), "--preset", "micro",
                 "--organisms", "planted", "--seeds", "1"]) == 0
    assert read_json(out / "results.json")["organisms"] == read_json(fast_demo / "results.json")["organisms"]
    assert not (out / "world").exists()


def test_the_report_renders_the_organisms_section(fast_demo):
    from test_report import parse

    text = parse(fast_demo / "report.html").text["ev-organisms"]
    assert "could not read" not in text and "Not run" not in text
    for heading in ("Methods x organisms", "Every score with its CI", "What each method put at its top"):
        assert heading in text
    planted = read_json(fast_demo / "organisms" / "planted-seed0" / "truth.json")["planted"]
    assert all(word in text for word in planted) and "adl" in text and "crosscoder" in text


def test_a_run_without_the_section_has_no_stage_and_says_so(fast_demo, tmp_path):
    from test_report import parse

    assert "organisms" not in [s.name for s in plan_run(MICRO, "/x").stages]
    assert "organisms" not in [s.name for s in plan_run({**MICRO, "organisms": None}, "/x").stages]
    run = tmp_path / "run"
    run.mkdir()
    results = read_json(fast_demo / "results.json")
    results.pop("organisms")
    (run / "results.json").write_text(__import__("json").dumps({**results, "artifacts": {}}))
    from rewardlab.report import build_report

    text = parse(build_report(run)).text["ev-organisms"]
    assert "Not run: no organisms stage in this run" in text


def test_the_organisms_preset_follows_the_world():
    def planned(config):
        return next(s for s in plan_run(config, "/x/run").stages if s.name == "organisms")

    stage = planned({**MICRO, "organisms": {"organisms": ["planted", "length"], "seeds": 2}})
    cfg = stage.config
    assert (cfg.preset, cfg.organisms, cfg.seeds, cfg.world, cfg.world_seed) == (
        "micro", ["planted", "length"], 2, "/x/run/world", 0)
    assert {k: str(v) for k, v in stage.inputs.items()} == {"world": "/x/run/world"}
    assert planned({"seed": 3, "world": {}, "organisms": {}}).config.preset == "tiny"  # the world's default preset
    assert planned({"seed": 3, "world": {}, "organisms": {}}).config.world_seed == 3  # the seed that built the world


@pytest.mark.parametrize("config,match", [
    ({**MICRO, "organisms": {"preset": "tiny"}},
     r"config.organisms.preset: the tiny organisms preset needs a tiny world, the run's world is micro"),
    ({**MICRO, "world": {"preset": "small"}, "organisms": {}},
     r"config.organisms: the organisms stage has no preset for a small world"),
    ({**MICRO, "organisms": {"world": "/some/world"}}, r"config.organisms: world is set by the pipeline"),
    ({**MICRO, "organisms": {"world_seed": 1}}, r"config.organisms: world_seed is set by the pipeline"),
    ({**MICRO, "organisms": {"organisms": ["planted", "sycophancy"]}}, r"unknown organism in planted,sycophancy"),
    ({**MICRO, "organisms": {"seeds": 0}}, r"seeds must be at least 1, got 0"),
    ({**MICRO, "organisms": {"post_training": "grpo"}}, r"config.organisms.post_training"),
    ({**MICRO, "organisms": {"seed": 1}}, r"config.organisms.seed: unknown key 'seed'"),
    ({"seed": 0, "world": None, "models": {"base": "gpt2", "prompts": __file__}, "organisms": {}},
     r"config.organisms: the organisms stage needs the review world"),
])
def test_organisms_config_errors(config, match):
    with pytest.raises(InputError, match=match):
        plan_run(config, "/nonexistent/run")


def test_a_bad_organisms_section_stops_the_cli_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**MICRO, "organisms": {"organisms": ["planted"], "seeds": 0}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "organisms config" in err and "seeds must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
