import json

import pytest

from rewardlab.audit import (PairConfig, audit, format_table, get_scorer, load_template, minimal_pairs, read_pairs,
                             world_sources, world_words, write_audit)
from rewardlab.errors import InputError
from rewardlab.world.grammar import is_grammatical
from tiny_lm import COMPLETIONS, PROMPTS, tiny_pair


class FixedScorer:
    name, ref_name = "fixed", None

    def __init__(self, table):
        self.table = table

    def __call__(self, prompts, completions):
        return [self.table[c] for c in completions]


def test_world_pairs_are_minimal_grammatical_and_utility_audit_passes(tmp_path):
    pairs = minimal_pairs(world_sources(200, 0, 3), world_words(), PairConfig(seed=0))
    by_attr = {a: [p for p in pairs if p["attribute"] == a] for a in ("sentiment", "neutral", "length")}
    assert all(len(v) > 50 for v in by_attr.values())
    for p in pairs:
        assert is_grammatical(p["chosen"], p["prompt"]) and is_grammatical(p["rejected"], p["prompt"])
        if p["attribute"] != "length":
            diff = [(a, b) for a, b in zip(p["chosen"].split(), p["rejected"].split()) if a != b]
            assert len(diff) == 1 and len(p["chosen"].split()) == len(p["rejected"].split())
    results, rows = audit(get_scorer("utility"), pairs)
    per = results["per_attribute"]
    assert per["sentiment"]["accuracy"] >= 0.95
    assert per["neutral"]["accuracy"] == 0.0 and per["neutral"]["tie_rate"] == 1.0
    assert per["neutral"]["accuracy_ties_half"] == 0.5
    assert results["model"] == "utility" and results["num_prompts"] == len({p["prompt"] for p in pairs})
    write_audit(tmp_path, results, rows)
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"] == results["accuracy"]
    first = json.loads((tmp_path / "scores.jsonl").read_text().splitlines()[0])
    assert {"score_chosen", "score_rejected", "results", "attribute"} <= first.keys()
    assert "sentiment" in format_table(results)


def test_ties_lose_and_margin():
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "attribute": "x"},
             {"prompt": "p", "chosen": "c", "rejected": "d", "attribute": "x"},
             {"prompt": "q", "chosen": "e", "rejected": "f", "attribute": "y"}]
    results, rows = audit(FixedScorer({"a": 1.0, "b": 0.0, "c": 2.0, "d": 2.0, "e": 0.0, "f": 3.0}), pairs)
    assert [r["results"] for r in rows] == [1, 0, 0]
    assert results["accuracy"] == pytest.approx(1 / 3) and results["tie_rate"] == pytest.approx(1 / 3)
    assert results["accuracy_ties_half"] == pytest.approx(0.5)
    assert results["mean_margin"]["value"] == pytest.approx((1 + 0 - 3) / 3)
    assert results["per_attribute"]["x"]["accuracy"] == 0.5 and results["num_prompts"] == 2


def test_dpo_implicit_reward_and_reference_free_scorers(tmp_path):
    from rewardlab.diff.implicit import implicit_rewards
    from rewardlab.diff.logprobs import completion_logprobs

    base, post, tok = tiny_pair(scale=0.2)
    for name, model in (("base", base), ("post", post)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    pairs = [{"prompt": p, "chosen": c, "rejected": " bad ."} for p, c in zip(PROMPTS, COMPLETIONS)]
    results, rows = audit(get_scorer(f"dpo:{tmp_path / 'post'}", ref=str(tmp_path / "base"), beta=0.1), pairs)
    expected = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS)
    assert [r["score_chosen"] for r in rows] == pytest.approx([0.1 * e["implicit_reward"] for e in expected], abs=1e-5)
    assert results["model"] == f"dpo:{tmp_path / 'post'}" and results["ref_model"] == str(tmp_path / "base")
    _, rows = audit(get_scorer(f"dpo:{tmp_path / 'post'}", ref_free="mean"), pairs)
    expected = completion_logprobs(post, tok, PROMPTS, COMPLETIONS)
    assert [r["score_chosen"] for r in rows] == pytest.approx([float(e.mean()) for e in expected], abs=1e-5)
    with pytest.raises(InputError, match="--ref"):
        get_scorer("utility", ref=str(tmp_path / "base"))


def test_pairs_file_and_template_file(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "good", "rejected": "bad"}) + "\n")
    results, _ = audit(get_scorer("utility"), read_pairs(tmp_path / "pairs.jsonl"))
    assert results["accuracy"] == 1.0 and results["per_attribute"]["all"]["num_pairs"] == 1
    (tmp_path / "t.json").write_text(json.dumps({
        "texts": [{"prompt": "review :", "completion": "the film was good ."}],
        "sentiment": [[["good"], ["bad"]]], "neutral": [["film", "movie"]], "fillers": ["it is a film ."]}))
    pairs = load_template(tmp_path / "t.json", PairConfig())
    assert {(p["attribute"], p["chosen"], p["rejected"]) for p in pairs} == {
        ("sentiment", "the film was good .", "the film was bad ."),
        ("neutral", "the film was good .", "the movie was good ."),
        ("length", "the film was good . it is a film .", "the film was good .")}
    with pytest.raises(InputError, match="unknown attribute"):
        minimal_pairs([], world_words(), PairConfig(attributes=("color",)))


def test_audit_cli(tmp_path, capsys):
    from rewardlab.cli import main

    out = tmp_path / "a"
    assert main(["audit", "--rm", "utility", "--n-sources", "40", "--attributes", "sentiment,neutral",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_attribute"]) == {"sentiment", "neutral"} and results["model"] == "utility"
    assert "neutral" in capsys.readouterr().out
