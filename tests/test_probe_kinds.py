"""Rating vs winner/loser vs Bradley-Terry probes (`probes.kinds`) on synthetic data with a planted
direction, their task scores against brute-force counts, and the validation-only selection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rewardlab.errors import InputError
from rewardlab.probes.cross import cosine
from rewardlab.probes.kinds import (KINDS, TASKS, KindData, bag_of_words_data, compare_kinds, direction_cosines,
                                    fit_kind, kind_split, pair_accuracy, select_l2, select_site, split_half_cosines,
                                    task_value)
from rewardlab.stats import spearman_r

W = np.array([2.0, -1.0, 0.5, 0.0, 1.5, 0.0, -0.5, 1.0])


def planted(n_prompts: int = 150, per_prompt: int = 4, noise: float = 0.3, seed: int = 0, w=W) -> KindData:
    """Gaussian activations with scale differences, reward = x . w + prompt offset + noise; the pairs are
    each prompt's best and worst rated row."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 0.7])
    x = rng.normal(size=(n_prompts * per_prompt, len(w))) * scale
    groups = np.repeat([f"p{i:03d}" for i in range(n_prompts)], per_prompt)
    y = x @ w + np.repeat(rng.normal(size=n_prompts), per_prompt) + rng.normal(scale=noise, size=len(x))
    best = [i * per_prompt + int(np.argmax(y[i * per_prompt:(i + 1) * per_prompt])) for i in range(n_prompts)]
    worst = [i * per_prompt + int(np.argmin(y[i * per_prompt:(i + 1) * per_prompt])) for i in range(n_prompts)]
    return KindData(x, y, groups, x[best], x[worst], groups[best])


def test_every_kind_recovers_the_planted_direction():
    data = planted()
    rows, pairs = np.arange(len(data.y)), np.arange(len(data.chosen))
    for kind in KINDS:
        direction = fit_kind(kind, data, rows, pairs, l2=1.0).direction()
        assert cosine(direction, W) > 0.95, kind


def test_pair_accuracy_and_auc_are_brute_force_counts():
    data = planted(n_prompts=40)
    probe = fit_kind("bradley_terry", data, np.arange(160), np.arange(40), l2=1.0)
    sc, sr = probe.predict(data.chosen), probe.predict(data.rejected)
    sr[:3] = sc[:3]  # ties lose
    assert pair_accuracy(sc, sr) == sum(c > r for c, r in zip(sc, sr)) / 40
    assert pair_accuracy(sc, sr) <= 37 / 40
    pairs = np.arange(40)
    auc = task_value("winner_loser", probe, data, np.arange(160), pairs)
    sc, sr = probe.predict(data.chosen), probe.predict(data.rejected)
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c in sc for r in sr)
    assert auc == pytest.approx(wins / (40 * 40))
    brute_pair = sum(c > r for c, r in zip(sc, sr)) / 40
    assert task_value("pair", probe, data, np.arange(160), pairs) == brute_pair
    assert task_value("rating", probe, data, np.arange(160), pairs) == pytest.approx(
        spearman_r(data.y, probe.predict(data.x)))


def test_split_keeps_each_prompt_in_one_part_for_rows_and_pairs():
    data = planted(n_prompts=50)
    split = kind_split(data.groups, data.pair_groups, seed=3)
    part_of = {}
    for split_of, groups in ((split.rows, data.groups), (split.pairs, data.pair_groups)):
        for name, idx in zip(("train", "val", "test"), (split_of.train, split_of.val, split_of.test)):
            for g in groups[idx]:
                assert part_of.setdefault(g, name) == name
    assert sum(len(p) for p in (split.rows.train, split.rows.val, split.rows.test)) == len(data.y)
    assert sum(len(p) for p in (split.pairs.train, split.pairs.val, split.pairs.test)) == len(data.chosen)
    with pytest.raises(InputError):  # pairs only from prompts that all land in one part
        kind_split(data.groups, data.pair_groups[:1], seed=0)


def test_penalty_and_site_are_chosen_on_validation_prompts():
    data = planted(n_prompts=60)
    split = kind_split(data.groups, data.pair_groups, seed=0)
    grid = (0.01, 10.0, 1e4)
    for kind, task in (("rating", "rating"), ("winner_loser", "winner_loser"), ("bradley_terry", "pair")):
        vals = [task_value(task, fit_kind(kind, data, split.rows.train, split.pairs.train, l2), data,
                           split.rows.val, split.pairs.val) for l2 in grid]
        l2, val = select_l2(kind, data, split, grid)
        assert val == max(vals) and l2 == grid[vals.index(max(vals))]
    rng = np.random.default_rng(1)
    noise = KindData(rng.normal(size=data.x.shape), data.y, data.groups, rng.normal(size=data.chosen.shape),
                     rng.normal(size=data.rejected.shape), data.pair_groups)
    site, means, _ = select_site({"noise": noise, "signal": data}, split, grid)
    assert site == "signal" and means["signal"] > 0.8 and abs(means["noise"]) < 0.3


def test_comparison_on_planted_data():
    data = planted(n_prompts=120, seed=2)
    split = kind_split(data.groups, data.pair_groups, seed=0)
    rng = np.random.default_rng(5)
    noise = KindData(rng.normal(size=data.x.shape), data.y, data.groups, rng.normal(size=data.chosen.shape),
                     rng.normal(size=data.rejected.shape), data.pair_groups)
    out = compare_kinds({"signal": data, "noise": noise}, noise, split, (0.1, 10.0), n_boot=100, n_refit=30)
    assert out["site"] == "signal"
    assert set(out["cosines"]) == {f"{a}~{b}" for a, b in itertools.combinations(KINDS, 2)}
    for est in out["cosines"].values():
        assert est.value > 0.9 and est.ci[0] <= est.value <= est.ci[1]
        assert est.n == len(split.rows.train) + len(split.pairs.train)
    assert set(out["scores"]) == {*KINDS, *(f"bag_of_words:{k}" for k in KINDS)}
    for name, row in out["scores"].items():
        assert set(row) == set(TASKS)
        for task, est in row.items():
            assert est.ci[0] <= est.value <= est.ci[1], (name, task)
    assert out["scores"]["rating"]["rating"].n == len(split.rows.test)
    assert out["scores"]["rating"]["pair"].n == len(split.pairs.test)
    assert out["scores"]["rating"]["winner_loser"].n == 2 * len(split.pairs.test)
    for kind in KINDS:  # each probe does every task; the noise features do none
        assert out["scores"][kind]["pair"].value > 0.9
        assert out["scores"][f"bag_of_words:{kind}"]["pair"].ci[0] < 0.75


def test_cosine_ci_refits_on_resampled_prompts():
    data = planted(n_prompts=80, noise=3.0)
    split = kind_split(data.groups, data.pair_groups, seed=0)
    l2 = dict.fromkeys(KINDS, 1.0)
    a = direction_cosines(data, split, l2, n_refit=20, seed=0)
    b = direction_cosines(data, split, l2, n_refit=20, seed=0)
    assert a == b  # deterministic per seed
    for est in a.values():
        assert est.ci[0] < est.ci[1]  # the refits vary
        assert est.ci[0] <= est.value <= est.ci[1]


def test_split_half_cosines_are_fits_on_disjoint_halves():
    data = planted(n_prompts=80, noise=3.0)
    split = kind_split(data.groups, data.pair_groups, seed=0)
    l2 = dict.fromkeys(KINDS, 1.0)
    one = split_half_cosines(data, split, l2, n_splits=1, seed=7)
    prompts = sorted(set(data.groups[split.rows.train]) | set(data.pair_groups[split.pairs.train]))
    order = np.random.default_rng(7).permutation(len(prompts))  # brute force: the same halving
    directions = []
    for half in (order[:len(order) // 2], order[len(order) // 2:]):
        keep = {prompts[j] for j in half}
        rows = np.asarray([i for i in split.rows.train if data.groups[i] in keep])
        pairs = np.asarray([i for i in split.pairs.train if data.pair_groups[i] in keep])
        directions.append({k: fit_kind(k, data, np.sort(rows), np.sort(pairs), 1.0).direction() for k in KINDS})
    own = {k: cosine(directions[0][k], directions[1][k]) for k in KINDS}
    assert one["self"]["rating~rating"].value == pytest.approx(own["rating"])
    across = (cosine(directions[0]["rating"], directions[1]["bradley_terry"])
              + cosine(directions[1]["rating"], directions[0]["bradley_terry"])) / 2
    assert one["across"]["rating~bradley_terry"].value == pytest.approx(across)
    assert one["disattenuated"]["rating~bradley_terry"].value == pytest.approx(
        across / np.sqrt(own["rating"] * own["bradley_terry"]))
    clean = planted(n_prompts=150)
    many = split_half_cosines(clean, kind_split(clean.groups, clean.pair_groups), l2, n_splits=10)
    for part in many.values():  # a planted direction: every fit agrees, at half the data too
        for est in part.values():
            assert est.value > 0.9 and est.ci[0] <= est.value <= est.ci[1]


def test_bag_of_words_features_cap_the_vocabulary():
    texts = ["good good film", "bad film", "good", "bad bad bad", "fine film", "odd"]
    groups = np.asarray(["a", "a", "b", "b", "c", "c"])
    data = KindData(np.zeros((6, 1)), np.arange(6.0), groups, np.zeros((3, 1)), np.zeros((3, 1)),
                    np.asarray(["a", "b", "c"]))
    split = kind_split(groups, data.pair_groups, seed=0)
    words = bag_of_words_data(texts, ["good", "good film", "fine"], ["bad", "bad", "odd"], data, split, max_vocab=2)
    assert words.x.shape == (6, 2) and words.chosen.shape == (3, 2) and words.rejected.shape == (3, 2)
    np.testing.assert_array_equal(words.y, data.y)
    all_texts = texts + ["good", "good film", "fine"] + ["bad", "bad", "odd"]  # brute force: the two words
    train = [*split.rows.train, *(6 + split.pairs.train), *(9 + split.pairs.train)]  # most often in training
    seen = sorted({w for i in train for w in all_texts[i].split()})
    total = {w: sum(all_texts[i].split().count(w) for i in train) for w in seen}
    top = sorted(sorted(seen, key=lambda w: -total[w])[:2])
    expect = np.asarray([[t.split().count(w) for w in top] for t in all_texts], dtype=float)
    np.testing.assert_array_equal(np.vstack([words.x, words.chosen, words.rejected]), expect)


def test_the_probes_stage_plans_the_pairs_stages_pairs_as_an_input():
    from rewardlab.pipeline import plan_run

    micro = {"name": "t", "seed": 0, "world": {"preset": "micro"}}
    plan = plan_run({**micro, "pairs": {}, "dpo": {}, "probes": {}}, "/x/run")
    stage = next(s for s in plan.stages if s.name == "probes")
    assert stage.config.pairs == "/x/run/pairs/pairs.jsonl" and str(stage.inputs["pairs"]) == "/x/run/pairs"
    alone = next(s for s in plan_run({**micro, "probes": {}}, "/x/run").stages if s.name == "probes")
    assert alone.config.pairs is None and "pairs" not in alone.inputs  # pairs from the records
    with pytest.raises(InputError, match="kinds_position"):
        plan_run({**micro, "probes": {"kinds_position": "last_prompt"}}, "/x/run")
    with pytest.raises(InputError, match="set by the pipeline"):
        plan_run({**micro, "pairs": {}, "dpo": {}, "probes": {"pairs": "p.jsonl"}}, "/x/run")


def test_kinds_section_on_a_tiny_model(tiny_model, word_tokenizer, tmp_path):
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.io import write_jsonl
    from rewardlab.schema import from_json, to_json
    from rewardlab.stages import probes

    vocab = ("the", "movie", "plot", "was", "good", "bad", "great", "awful", "and", ".")
    tok, model = word_tokenizer(vocab), tiny_model("gpt2", seed=0, n_layers=2)
    rng = np.random.default_rng(0)
    prompts = [f"the {a} {b}" for a in ("movie", "plot", "good", "bad", "and") for b in ("was", "and", ".", "the")]
    records = []
    for p in prompts:
        for _ in range(4):
            words = list(rng.choice(vocab, size=int(rng.integers(2, 6))))
            records.append({"prompt": p, "completion": " ".join(words),
                            "reward": words.count("good") + words.count("great") - words.count("bad")})
    sites = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    store = cache_activations(model, tok, records, tmp_path / "acts",
                              CacheConfig(sites=sites, positions=["mean_completion"]), "m", progress=False)
    pairs = [{"prompt": p, "chosen": "good great", "rejected": "bad the"} for p in prompts[::2]]
    pairs += [{"prompt": p, "chosen": "great", "rejected": "awful bad"} for p in prompts[1::2]]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    for pairs_file, n_pairs in ((None, len(probes.best_and_worst(records))), (str(tmp_path / "pairs.jsonl"), 20)):
        cfg = probes.Config(n_boot=50, kinds_n_refit=10, kinds_pairs=512, pairs=pairs_file)
        section = probes.kinds_section(model, tok, records, store, cfg)
        assert section.site in sites and set(section.site_val_scores) == set(sites)
        assert sum(section.n_rows.values()) == len(records) and sum(section.n_pairs.values()) == n_pairs
        assert set(section.scores) == {*KINDS, *(f"bag_of_words:{k}" for k in KINDS)}
        for row in section.scores.values():
            for est in row.values():
                assert est.ci[0] <= est.value <= est.ci[1]
        assert set(section.versus_text) == set(TASKS)
        diff = section.versus_text["pair"]
        assert diff.value == pytest.approx(section.scores["bradley_terry"]["pair"].value
                                           - section.scores["bag_of_words:bradley_terry"]["pair"].value)
        assert from_json(probes.ProbeKindsSection, to_json(section)) == section
    assert section.scores["bag_of_words:bradley_terry"]["pair"].value == 1.0  # the words decide these pairs
    write_jsonl(tmp_path / "one.jsonl", pairs[:1])  # pairs of one prompt cannot fill three parts
    with pytest.raises(InputError, match="(?s)probes.kinds_pairs: .*kinds_pairs to 0"):
        probes.kinds_section(model, tok, records, store, probes.Config(pairs=str(tmp_path / "one.jsonl")))

    from rewardlab.report.html import Run, ev_probe_kinds, fmt
    from rewardlab.stages.registry import SCHEMA_VERSION, Results

    page = ev_probe_kinds(Run(tmp_path, Results(schema_version=SCHEMA_VERSION, name="t", seed=0,
                                                probe_kinds=section)))
    assert "bradley_terry~winner_loser" not in page and "rating~bradley_terry" in page
    assert fmt(to_json(section.scores["bag_of_words:rating"]["pair"])) in page


def test_cosine_ci_is_centred_on_the_estimate_when_refits_sit_low():
    # noisy fits: the refits' cosines (noise added twice) lie below the full-data cosine, so their raw
    # 2.5-97.5 percentiles exclude it for all three pairs here; the interval keeps their spread, centred
    data = planted(n_prompts=80, noise=6.0)
    est = direction_cosines(data, kind_split(data.groups, data.pair_groups, seed=0), dict.fromkeys(KINDS, 1.0),
                            n_refit=20, seed=0)
    for name, e in est.items():
        assert e.ci[0] <= e.value <= e.ci[1] <= 1.0, name
        assert e.ci[1] - e.ci[0] > 0.05, name
    assert est["rating~winner_loser"].ci == pytest.approx((0.8241, 1.0), abs=1e-4)
