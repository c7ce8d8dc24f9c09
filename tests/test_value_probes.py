"""Value probes on synthetic activations whose answer is known: a latent per prompt sets the expected
reward, the text does not show it, and only the post model's activations carry it."""

from __future__ import annotations

import numpy as np
import pytest

from rewardlab.errors import InputError
from rewardlab.stats import spearman_r
from rewardlab.text import prompt_id
from rewardlab.value.probes import ValueProbeConfig, position_rows, text_features, value_probe_study

WORDS = ["film", "plot", "music", "cast", "story", "show"]
SITES = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post")


def synthetic(n_prompts: int = 90, d: int = 6, seed: int = 0):
    """Records (one per prompt), value-target rows at last_prompt and offset 0, and activations:
    V_post = R + z with z a latent of the prompt that no word shows; post's blocks.1 holds z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n_prompts)
    records, rows = [], []
    for i in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS, size=3)) + f" p{i}"
        first = "good" if rng.random() < 0.5 else "bad"
        records.append({"prompt": prompt, "completion": f"{first} ."})
        realized = 0.38 if first == "good" else -0.5
        for position, written, r in (("last_prompt", "", 0.0), (0, first, realized)):
            rows.append({"record": i, "prompt_id": prompt_id(prompt), "position": position, "written": written,
                         "n_written": 0 if position == "last_prompt" else 1,
                         "realized": r, "value_post": r + z[i], "future_post": z[i],
                         "value_base": r + 0.5 * z[i], "future_base": 0.5 * z[i]})
    acts = {}
    for name in ("post", "base"):
        a = {}
        for site in SITES:
            for position in ("last_prompt", "0"):
                x = rng.normal(size=(n_prompts, d))
                if name == "post" and site == SITES[1]:
                    x[:, 0] += 3 * z
                a[f"{site}|{position}"] = x
        acts[name] = a
    return records, rows, acts


@pytest.fixture(scope="module")
def study():
    """The study with 60 bootstrap draws per CI (the signs tested here are far from 0), and a value head
    that ranks V_post - R exactly backwards at the last prompt token and is constant at offset 0."""
    records, rows, acts = synthetic()
    z = np.asarray([r["future_post"] for r in rows if r["position"] == "last_prompt"])
    head = {"last_prompt": -z, "0": np.zeros(len(z))}
    return value_probe_study(acts, rows, records, ValueProbeConfig(n_boot=60), value_head=head)


def _row(study, acts, target, position):
    return next(r for r in study["table"] if (r["acts"], r["target"], r["position"]) == (acts, target, position))


def test_a_probe_that_holds_the_latent_beats_every_text_baseline(study):
    for target in ("value_post", "future_post"):
        row = _row(study, "post", target, "last_prompt")
        assert row["best_site"] == SITES[1]
        assert row["verdict"] == "beats the baseline" and row["evidence"]["ci"][0] > 0
        assert row["spearman"]["value"] > 0.8
        assert set(row["baselines"]) == {"bag_of_words", "realized", "bag_and_realized", "embedding"}
        # nothing is written at the last prompt token: R is constant, so it predicts nothing
        assert np.isnan(row["baselines"]["realized"]["spearman"]["value"])
        assert row["strongest_baseline"] != "realized"


def test_without_the_latent_there_is_no_evidence(study):
    for target in ("value_post", "future_post"):
        row = _row(study, "base", target, "last_prompt")
        assert row["verdict"] != "beats the baseline"
    # at offset 0 V = R + z: the realized reward explains part of V, and base activations carry no z
    row = _row(study, "base", "value_post", "0")
    assert row["verdict"] != "beats the baseline"
    assert row["baselines"]["realized"]["spearman"]["value"] > 0.2


def test_selection_is_on_validation_and_estimates_contain_their_values(study):
    for row in study["table"]:
        cells = [c for c in study["cells"] if (c["acts"], c["target"], c["position"]) ==
                 (row["acts"], row["target"], row["position"])]
        best = max(cells, key=lambda c: c["val_spearman"])
        assert row["best_site"] == best["site"] and row["spearman"]["value"] == pytest.approx(best["test_spearman"])
        for est in (row["spearman"], row["r2"], row["evidence"]):
            assert est["ci"][0] <= est["value"] <= est["ci"][1]
        assert row["n_test_prompts"] == row["n_test"]  # one prefix per prompt and position here


def test_cross_matrix_post_activations_against_base(study):
    cross = {(c["target"], c["position"]): c for c in study["cross"]}
    assert set(cross) == {(t, p) for t in ("value_post", "future_post", "value_base", "future_base")
                          for p in ("last_prompt", "0")}
    for target in ("future_post", "future_base"):
        c = cross[(target, "last_prompt")]
        assert c["post_minus_base"]["ci"][0] > 0
        assert c["post_minus_base"]["value"] == pytest.approx(c["post"]["value"] - c["base"]["value"])


def test_split_is_by_prompt_and_shared_across_positions():
    records, rows, _ = synthetic()
    prs = position_rows(rows, ValueProbeConfig())
    parts = [{p: set(pr.groups[getattr(pr.split, p)]) for p in ("train", "val", "test")} for pr in prs]
    assert parts[0] == parts[1]  # the same prompts in each part at every position
    assert not parts[0]["train"] & parts[0]["test"] and not parts[0]["val"] & parts[0]["test"]
    feats = text_features(rows, records, prs[1])
    assert feats["bag_and_realized"].shape[1] == feats["bag_of_words"].shape[1] + 1


def test_value_head_comparison(study):
    vh = {r["position"]: r for r in study["value_head"]}
    assert vh["last_prompt"]["head_spearman"]["value"] == pytest.approx(-1.0)
    assert vh["last_prompt"]["probe_site"] == SITES[1]
    assert vh["last_prompt"]["spearman_probe_minus_head"]["ci"][0] > 1
    assert np.isnan(vh["0"]["head_spearman"]["value"])  # a constant head ranks nothing


def test_targets_without_values_stop_with_one_error():
    records, rows, acts = synthetic(n_prompts=12)
    with pytest.raises(InputError, match="no value_NAME"):
        value_probe_study(acts, [{k: v for k, v in r.items() if not k.startswith(("value", "future"))} for r in rows],
                          records)


def test_value_probe_command(tmp_path, capsys):
    import json

    from tiny_lm import save_pair, write_records

    from rewardlab.cli import main
    from rewardlab.rl.value_head import ValueHead

    base, post = save_pair(tmp_path)
    rng = np.random.default_rng(0)
    words = ["the", "film", "movie", "was", "great", "good", "bad", "awful", "plot", "acting", "very", "and"]
    prompts = [" ".join(rng.choice(words, size=3)) for _ in range(16)]
    completions = [" ".join(rng.choice(words, size=4)) for _ in range(16)]
    records = write_records(tmp_path / "records.jsonl", prompts, completions)
    targets = str(tmp_path / "targets.jsonl")
    assert main(["value", "targets", "--model", post, "--base", base, "--in", records, "--k", "2",
                 "--positions", "last_prompt,1", "--max-new-tokens", "6", "--out", targets]) == 0
    ValueHead(32, "linear").save(tmp_path)
    args = ["value", "probe", "--model", post, "--base", base, "--targets", targets, "--n-boot", "20",
            "--sites", "blocks.0.hook_resid_pre,blocks.1.hook_resid_post"]
    assert main([*args, "--in", records, "--value-head", str(tmp_path), "--out", str(tmp_path / "vp")]) == 0
    result = json.loads((tmp_path / "vp" / "value_probe.json").read_text())
    assert result["sites"] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_out"]
    assert len(result["table"]) == 2 * 4 * 2 and len(result["cross"]) == 4 * 2 and len(result["value_head"]) == 2
    assert (tmp_path / "vp" / "value_probe.png").read_bytes()[:4] == b"\x89PNG"
    assert "value_probe.json" in capsys.readouterr().out
    run = ["value", "run", "--model", post, "--base", base, "--in", records, "--k", "2", "--positions", "last_prompt,1",
           "--max-new-tokens", "6", "--n-boot", "20", "--sites", "blocks.0.hook_resid_pre,blocks.1.hook_resid_post",
           "--value-head", str(tmp_path)]
    assert main([*run, "--out", str(tmp_path / "run")]) == 0  # targets then probe: the same numbers as the two steps
    assert json.loads((tmp_path / "run" / "value_probe.json").read_text()) == result
    assert main([*run, "--fractions", "0.5,0.5,0.5", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    other = write_records(tmp_path / "other.jsonl", prompts[::-1], completions)
    assert main([*args, "--in", other, "--out", str(tmp_path / "vq")]) == 2
    assert "do not match the prefixes" in capsys.readouterr().err


def test_reliability_is_the_share_of_variance_that_is_not_monte_carlo_noise():
    from rewardlab.value.probes import reliability

    rows = [{"position": "last_prompt", "value_post": v, "value_se_post": 0.5} for v in (0.0, 1.0, 2.0, 3.0)]
    ys = {"value_post": {"last_prompt": np.array([0.0, 1.0, 2.0, 3.0])}}
    pr = type("PR", (), {"index": np.arange(4)})()
    assert reliability(rows, ys, {"last_prompt": pr}) == {"value_post": {"last_prompt": pytest.approx(1 - 0.25 / (5 / 3))}}


def test_traces_are_the_best_v_probe_on_test_prefixes(study):
    """Each trace point: a test prefix, its Monte Carlo V_post and the best V_post probe's prediction."""
    traces = study["traces"]
    assert len(traces) == sum(s["test"] for s in study["split"].values())
    for t in traces:
        assert t["n_written"] == (0 if t["position"] == "last_prompt" else 1)
        z = t["value"] - t["realized"]  # the fixture's head: -z at the last prompt token, 0 at offset 0
        assert t["head"] == pytest.approx(-z if t["position"] == "last_prompt" else 0.0)
    # the best V_post probe holds z: its predictions rank the test prefixes' V like the table says
    for position in ("last_prompt", "0"):
        pts = [t for t in traces if t["position"] == position]
        row = _row(study, "post", "value_post", position)
        assert spearman_r([t["value"] for t in pts], [t["probe"] for t in pts]) == pytest.approx(
            row["spearman"]["value"])


def test_future_direction_finds_the_latent():
    """The post model's SITES[1] activations carry z (= F_post) in dimension 0: the F probe's direction
    points there, positive; another site's direction does not."""
    from rewardlab.value.probes import future_direction

    records, rows, acts = synthetic()
    direction, val, n_train = future_direction(acts["post"], rows, SITES[1], ValueProbeConfig())
    assert int(np.argmax(np.abs(direction))) == 0 and direction[0] > 0.9 and val > 0.8
    assert n_train == round(0.6 * len(records))  # one completion prefix per record, 60% of the prompts
    other, _, _ = future_direction(acts["post"], rows, SITES[0], ValueProbeConfig())
    assert abs(other[0]) < 0.9
    with pytest.raises(InputError):
        future_direction(acts["post"], rows, "blocks.9.hook_resid_post", ValueProbeConfig())


def test_the_prompt_count_check_agrees_with_the_split_it_guards():
    """`check_enough_prompts` refuses exactly the prompt counts whose grouped split leaves a part with fewer
    than MIN_PER_SPLIT prompts, and `position_rows` accepts one prefix per prompt at every count it passes."""
    from rewardlab.errors import InputError
    from rewardlab.value.probes import MIN_PER_SPLIT, check_enough_prompts, position_rows

    cfg = ValueProbeConfig()
    for n in range(1, 30):
        rows = [{"prompt_id": i, "position": "last_prompt", "record": i} for i in range(n)]
        try:
            check_enough_prompts(n, cfg, "here")
        except InputError as e:
            assert n < 9 and "use at least 9 prompts" in str(e) and e.where == "here"
            with pytest.raises(InputError):
                position_rows(rows, cfg)
        else:
            assert n >= 9
            assert min(position_rows(rows, cfg)[0].split.sizes().values()) >= MIN_PER_SPLIT
