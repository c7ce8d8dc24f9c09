"""`rewardlab organisms run` on the micro preset (the CI run) and `rewardlab diff adl`."""

import shutil

import pytest

from rewardlab.cli import main
from rewardlab.io import read_json, write_jsonl
from rewardlab.organisms.build import ORGANISMS
from rewardlab.organisms.hypotheses import METHODS


def test_organisms_micro_run_scores_every_method_and_resumes_identically(organisms_micro, tmp_path, capsys):
    out = tmp_path / "bench"
    shutil.copytree(organisms_micro, out)  # the session's run (conftest), which other tests read unchanged
    first = read_json(out / "results.json")
    section = first["organisms"]
    assert list(section["cells"]) == list(ORGANISMS) and section["preset"] == "micro"
    applies = {"planted": {"auroc", "precision_at_k"}, "agreement": {"pair_accuracy"}}
    for organism, cells in section["cells"].items():
        assert list(cells) == list(METHODS)
        for method, cell in cells.items():
            assert cell["n_seeds"] == 1
            assert set(cell) - {"n_seeds"} == applies.get(organism, {"spearman_truth"}), (organism, method)
            for est in (v for k, v in cell.items() if k != "n_seeds"):
                assert est["ci"][0] <= est["value"] <= est["ci"][1]
    # methods that read no prompt cannot tell the minimal pairs apart
    assert all(section["cells"]["agreement"][m]["pair_accuracy"]["value"] == 0.5 for m in METHODS if m != "implicit")
    assert {r["organism"] for r in section["runs"]} == set(ORGANISMS)
    planted = next(r for r in section["runs"] if r["organism"] == "planted")
    assert planted["reward_spec"] == "planted:k=3,seed=0" and planted["planted_rate_base"] is not None
    # the sentiment world's earlier measurements, per organism and per seed, each estimate containing its value
    assert list(section["measures"]) == list(ORGANISMS)
    for organism, cell in section["measures"].items():
        assert cell["n_seeds"] == 1
        for key in ("relevance_post_minus_base", "crosscoder_post_only", "steer_effect"):
            assert cell[key]["n"] == 1 and cell[key]["ci"][0] <= cell[key]["value"] <= cell[key]["ci"][1], key
        run = next(r for r in section["runs"] if r["organism"] == organism)
        m = run["measures"]
        assert cell["crosscoder_post_only"]["value"] == m["crosscoder_post_only"] >= 0
        assert cell["relevance_post_minus_base"]["value"] == pytest.approx(m["relevance_post_minus_base"]["value"])
        assert m["site"] == "blocks.0.hook_resid_post" and m["steer_alpha_up"] == 0.1
        for key in ("relevance_base", "relevance_post", "relevance_post_minus_base", "steer_effect"):
            assert m[key]["ci"][0] <= m[key]["value"] <= m[key]["ci"][1], (organism, key)
        assert m["relevance_post_minus_base"]["value"] == pytest.approx(
            m["relevance_post"]["value"] - m["relevance_base"]["value"])
        # steered: 2 samples of each held-out test prompt, at most 8 prompts (the micro preset's settings)
        assert m["steer_effect"]["n"] in (2, 4, 6, 8, 10, 12, 14, 16)
    for organism in ORGANISMS:
        folder = out / f"{organism}-seed0"
        assert (folder / "policy" / "config.json").is_file() and read_json(folder / "truth.json")["organism"] == organism
        assert not (out / f"measures-{organism}-seed0" / "scratch").exists()  # the activation caches are removed

    # re-run: everything is reused; a lost organism (killed before it finished) is rebuilt identically
    assert main(["organisms", "run", "--out", str(out), "--preset", "micro", "--seeds", "1"]) == 0
    assert "post-training" not in capsys.readouterr().out.split("length-seed0] done already")[-1]
    assert read_json(out / "results.json") == first
    shutil.rmtree(out / "length-seed0")
    assert main(["organisms", "run", "--out", str(out), "--preset", "micro", "--seeds", "1"]) == 0
    assert read_json(out / "results.json") == first
    # a given world must match the preset's size
    assert main(["organisms", "run", "--out", str(tmp_path / "other"), "--world", str(out / "world")]) == 2
    assert "the tiny preset needs a tiny one" in capsys.readouterr().err


def test_organisms_run_checks_its_options_before_any_work(tmp_path, capsys):
    assert main(["organisms", "run", "--out", str(tmp_path / "o"), "--organisms", "planted,sycophancy"]) == 2
    assert "unknown organism" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a choice argparse checks
        main(["organisms", "run", "--out", str(tmp_path / "o"), "--preset", "huge"])
    assert exit_.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["organisms", "run", "--out", str(tmp_path / "o"), "--kl-coef", "0"]) == 2
    assert "kl_coef, kl_target and kl_horizon must be above 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_diff_adl_command(tmp_path, tiny_model, word_tokenizer, one_thread):
    from rewardlab.models import ModelPair
    from rewardlab.organisms.hypotheses import adl_summary

    tok = word_tokenizer()
    tok.pad_token = "<eos>"
    for name, seed in (("base", 0), ("post", 1)):
        model = tiny_model("gpt2", seed=seed, vocab_size=len(tok), bos_token_id=1, eos_token_id=1)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    texts = ["the movie was good and the plot was great .", "the acting was bad but the plot was good ."]
    write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the movie"}, {"prompt": "the plot was"}])
    args = ["diff", "adl", "--base", str(tmp_path / "base"), "--post", str(tmp_path / "post"),
            "--in", str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "adl"),
            "--prompts", str(tmp_path / "prompts.jsonl"), "--steer-alpha", "20", "--n-first", "4"]
    assert main(args) == 0
    written = read_json(tmp_path / "adl" / "adl.json")
    pair = ModelPair.load(tmp_path / "base", tmp_path / "post", device="cpu", dtype="float32")
    expected, _ = adl_summary(pair.base, pair.post, pair.tokenizer, texts, n_first=4)
    assert [t["token"] for t in written["promoted"]] == [t["token"] for t in expected["promoted"]]
    assert [t["logit"] for t in written["promoted"]] == pytest.approx([t["logit"] for t in expected["promoted"]])
    assert written["n_texts"] == 2
    assert written["site"] == "blocks.1.hook_resid_post"
    steered = written["steered"]
    assert [r["prompt"] for r in steered] == ["the movie", "the plot was"]
    assert any(r["steered"] != r["unsteered"] for r in steered)  # same sampling seed: only the steering differs
    assert main(args[:-1] + ["40"]) == 2


def test_relevance_is_measured_against_the_organisms_own_reward(organisms_micro, tmp_path):
    """The length organism's measures.json holds the relevance against the period count: recomputed on the same
    samples with its own reward it is reproduced exactly; with the sentiment reward the same activations rank
    other features; the flipped reward (-sentiment) ranks sentiment's features with sentiment's relevance (the
    relevance is sign-aligned: a known answer)."""
    from rewardlab.models import load_model
    from rewardlab.organisms.evaluate import organism_samples
    from rewardlab.organisms.measures import dictionary_measures, organism_records
    from rewardlab.rewards import get_reward
    from rewardlab.stages.organisms import PRESETS
    from rewardlab.world import load_world

    world, preset = load_world(organisms_micro / "world"), PRESETS["micro"]
    base, tok = load_model(world.base_path, device="cpu", dtype="float32")
    post, _ = load_model(organisms_micro / "length-seed0" / "policy", device="cpu", dtype="float32")
    prompts, policy, base_samples = organism_samples(base.eval(), post.eval(), tok, list(world.heldout_prompts), 0,
                                                     preset.evaluation)
    saved = read_json(organisms_micro / "measures-length-seed0" / "measures.json")["reward_relevance"]

    def relevance(spec):
        records = organism_records(prompts, [x.completion for x in policy], [x.completion for x in base_samples],
                                   get_reward(spec))
        return dictionary_measures(base, post, tok, records, 0, preset.measures, tmp_path / spec)[0]["reward_relevance"]
    own, sentiment, flipped = relevance("length"), relevance("sentiment"), relevance("flipped")
    assert own["features"] == saved["features"]
    assert own["post_minus_base"]["value"] == pytest.approx(saved["post_minus_base"]["value"], abs=1e-9)
    assert sentiment["features"] != own["features"]
    assert sentiment["post_minus_base"]["value"] != pytest.approx(own["post_minus_base"]["value"])
    assert flipped["features"] == sentiment["features"]
    for key in ("base", "post", "post_minus_base"):
        assert flipped[key]["value"] == pytest.approx(sentiment[key]["value"], abs=1e-12)
