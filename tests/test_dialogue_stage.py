"""The dialogue benchmark as an optional pipeline stage (`dialogue:` in a run's config): its section in
the run's results.json, built from the run's own world, question 8 answered from it (and "not run"
without it), the report's section, and its config checked before any work."""

import pytest
import yaml

from rewardlab.answers import answer_all, answer_dialogue
from rewardlab.cli import main
from rewardlab.errors import InputError
from rewardlab.io import read_json
from rewardlab.pipeline import plan_run
from rewardlab.schema import from_json, to_json
from rewardlab.stages.dialogue import DialogueSection, verdict
from rewardlab.stages.registry import Results

MICRO = {"name": "t", "seed": 0, "world": {"preset": "micro"}}


def test_fast_demo_has_the_dialogue_section_and_answers_q8_from_it(fast_demo):
    results = read_json(fast_demo / "results.json")
    section = from_json(DialogueSection, results["dialogue"], "dialogue")
    assert section.preset == "micro"  # follows the run's micro world
    assert [(p.name, p.bonus) for p in section.policies] == [
        ("base", True), ("base", False), ("single-turn", True), ("multi-turn", True), ("single-turn", False),
        ("multi-turn", False)]
    for p in section.policies:
        for est in (p.eliciting, p.kl, p.reward_turn1, p.grammatical_turn2):
            assert est.ci[0] <= est.value <= est.ci[1] and est.n == 32
    assert [to_json(v) for v in section.verdicts] == [to_json(verdict(*section.policies[2:4])),
                                                      to_json(verdict(*section.policies[4:6]))]
    assert section.value_probe is not None and section.value_probe.table and len(section.user_side) == 2
    q8 = results["answers"]["q8-dialogue"]
    assert q8 == to_json(answer_dialogue(section)) and not q8["text"].startswith("Not run")
    # the dialogue world was fine-tuned from the run's world, not from a second one
    inner = read_json(fast_demo / "dialogue" / "dialogue" / "manifest.json")
    assert inner["inputs"]["world"] == str(fast_demo.resolve() / "world")
    assert not (fast_demo / "dialogue" / "world").exists()
    assert results["artifacts"]["dialogue_value_targets"] == "dialogue/measures/targets.jsonl"


def test_the_report_renders_the_dialogue_section(fast_demo):
    from test_report import parse

    page = parse(fast_demo / "report.html")
    text = page.text["ev-dialogue"]
    assert "could not read" not in text and "Not run" not in text
    assert "multi-turn" in text and "single-turn" in text and "bonus_value_gap" not in text
    verdict_word = read_json(fast_demo / "results.json")["answers"]["q8-dialogue"]["verdict"]
    assert verdict_word in page.text["q8-dialogue"].lower() and "Not run" not in page.text["q8-dialogue"]


def test_a_run_without_the_section_says_so(fast_demo):
    results = read_json(fast_demo / "results.json")
    results.pop("dialogue")
    results.pop("answers")
    q8 = answer_all(from_json(Results, results))["q8-dialogue"]
    assert q8.verdict == "inconclusive" and q8.text.startswith("Not run: no dialogue stage in this run")
    assert "dialogue" not in [s.name for s in plan_run(MICRO, "/x").stages]


def test_the_dialogue_preset_follows_the_world():
    def planned(config):
        return next(s.config for s in plan_run(config, "/x/run").stages if s.name == "dialogue")

    cfg = planned({**MICRO, "dialogue": {"followup_bonus": "about:plot,value=5"}})
    assert (cfg.preset, cfg.followup_bonus, cfg.world, cfg.seed) == ("micro", "about:plot,value=5", "/x/run/world", 0)
    assert planned({"seed": 3, "world": {}, "dialogue": {}}).preset == "tiny"  # the world's default preset
    assert planned({"seed": 3, "world": {}, "dialogue": {}}).seed == 3


@pytest.mark.parametrize("config,match", [
    ({**MICRO, "dialogue": {"preset": "tiny"}},
     r"config.dialogue.preset: the tiny dialogue preset needs a tiny world, the run's world is micro"),
    ({**MICRO, "world": {"preset": "small"}, "dialogue": {}},
     r"config.dialogue: the dialogue stage has no preset for a small world"),
    ({**MICRO, "dialogue": {"world": "/some/world"}}, r"config.dialogue: world is set by the pipeline"),
    ({**MICRO, "dialogue": {"seed": 1}}, r"config.dialogue: seed is set by the pipeline"),
    ({**MICRO, "dialogue": {"followup_bonus": "off"}}, r"the benchmark needs a bonus"),
    ({**MICRO, "dialogue": {"reward": "nope"}}, r"unknown reward"),
    ({**MICRO, "dialogue": {"kl_cof": 0.1}}, r"config.dialogue.kl_cof: unknown key 'kl_cof'"),
    ({"seed": 0, "world": None, "models": {"base": "gpt2", "prompts": __file__}, "dialogue": {}},
     r"config.dialogue: the dialogue stage needs the review world"),
])
def test_dialogue_config_errors(config, match):
    with pytest.raises(InputError, match=match):
        plan_run(config, "/nonexistent/run")


def test_a_bad_dialogue_section_stops_the_cli_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**MICRO, "dialogue": {"preset": "tiny"}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "c.yaml.dialogue.preset: the tiny dialogue preset needs a tiny world" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
