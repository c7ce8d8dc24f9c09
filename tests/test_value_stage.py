"""The `value` stage in the fast demo: the value_probe section, its artifacts, and questions 1 and 2
answered from it (headline cell chosen on validation prompts, never on the test numbers)."""

import dataclasses

import numpy as np
import pytest

from rewardlab import answers
from rewardlab.io import read_json, read_jsonl
from rewardlab.models import load_model
from rewardlab.report.html import load_results
from rewardlab.schema import to_json
from rewardlab.stats import Estimate
from rewardlab.value.probes import ValueProbeConfig, position_rows, reliability, target_names
from rewardlab.value.targets import check_rows


@pytest.fixture(scope="module")
def run(fast_demo):
    return load_results(fast_demo)


def test_section_has_every_cell(run, fast_demo):
    vp = run.value_probe
    assert vp is not None and vp.models == ["post", "base"]
    assert vp.targets == ["value_post", "future_post", "value_base", "future_base"]
    assert vp.positions == ["last_prompt", "0", "4"]
    cells = {(r.acts, r.target, r.position) for r in vp.table}
    assert cells == {(a, t, p) for a in vp.models for t in vp.targets for p in vp.positions}
    records = read_jsonl(fast_demo / "value" / "records.jsonl")
    assert vp.n_records == len(records) == 30 * 2
    for r in vp.table:
        if r.strongest_baseline is not None:  # chosen by validation Spearman among the usable baselines
            usable = {k: b.val_spearman for k, b in r.baselines.items() if np.isfinite(b.val_spearman)}
            assert r.strongest_baseline == max(usable, key=usable.get)
            lo, hi = r.evidence.ci
            assert r.verdict == ("beats the baseline" if lo > 0 else "below the baseline" if hi < 0
                                 else "no difference detected")


def test_targets_are_the_records_prefixes_and_reliability_is_recomputed(run, fast_demo):
    folder = fast_demo / "value"
    records, rows = read_jsonl(folder / "records.jsonl"), read_jsonl(folder / "targets.jsonl")
    _, tokenizer = load_model(fast_demo / "ppo" / "policy")
    assert [str(p) for p in check_rows(tokenizer, records, rows)] == run.value_probe.positions
    assert {r["k"] for r in rows} == {4}
    for r in rows:
        assert r["future_post"] == pytest.approx(r["value_post"] - r["realized"])
    prs = {pr.position: pr for pr in position_rows(rows, ValueProbeConfig(seed=0))}
    ys = {t: {p: np.asarray([rows[i][t] for i in pr.index]) for p, pr in prs.items()} for t in target_names(rows)}
    expected = reliability(rows, ys, prs)
    for target, by_position in run.value_probe.reliability.items():
        for position, value in by_position.items():
            assert value == pytest.approx(expected[target][position], nan_ok=True)


def test_traces_are_test_prefixes_with_their_monte_carlo_value(fast_demo):
    folder = fast_demo / "value"
    rows, traces = read_jsonl(folder / "targets.jsonl"), read_jsonl(folder / "traces.jsonl")
    study = read_json(folder / "value_probe.json")
    assert traces
    by_key = {(r["record"], str(r["position"])): r for r in rows}
    for t in traces:
        row = by_key[(t["record"], t["position"])]
        assert (t["value"], t["value_se"], t["realized"]) == (row["value_post"], row["value_se_post"], row["realized"])
        assert t["head"] is not None  # the PPO policy's value head, at every position
    n_test = {p: s["test"] for p, s in study["split"].items()}
    for position, n in n_test.items():
        assert sum(t["position"] == position for t in traces) == n


def test_questions_one_and_two_read_the_value_section(run):
    vp = run.value_probe
    q1, q2 = run.answers["q1-probe"], run.answers["q2-prompt-probe"]
    assert q1.evidence["source"] == q2.evidence["source"] == "value_probe"
    completion = [r for r in vp.table if r.acts == "post" and r.target in ("value_post", "future_post")
                  and r.position != "last_prompt" and r.evidence is not None]
    margin = {(r.target, r.position): r.val_spearman - r.baselines[r.strongest_baseline].val_spearman
              for r in completion}
    assert (q1.evidence["target"], q1.evidence["position"]) == max(margin, key=margin.get)
    prompt_row = next(r for r in vp.table if (r.acts, r.target, r.position) == ("post", "value_post", "last_prompt"))
    assert q2.evidence["difference"] == to_json(prompt_row.evidence)
    assert q2.evidence["baseline"] == prompt_row.strongest_baseline
    assert prompt_row.strongest_baseline.replace("_", " ") in q2.text


def _with(row, val_spearman: float, evidence: Estimate):
    """`row` at a probe site (not the embeddings) with this validation Spearman, its baseline's at 0.1."""
    baselines = dict(row.baselines)
    baselines[row.strongest_baseline] = dataclasses.replace(baselines[row.strongest_baseline], val_spearman=0.1)
    return dataclasses.replace(row, val_spearman=val_spearman, best_site="blocks.1.hook_resid_post",
                               evidence=evidence, baselines=baselines)


def test_headline_is_chosen_on_validation_not_test(run):
    """Make the validation-best cell lose on test and another cell win on test with a CI above 0:
    q1 still reports the validation-best cell (inconclusive), not the test winner."""
    vp = run.value_probe
    rows = [i for i, r in enumerate(vp.table) if r.acts == "post" and r.position != "last_prompt"
            and r.evidence is not None and r.target in ("value_post", "future_post")]
    assert len(rows) >= 2
    chosen, other = rows[0], rows[1]
    strong, weak = Estimate(0.5, (0.3, 0.7), 20, 5), Estimate(0.0, (-0.2, 0.2), 20, 5)

    def answer(evidence_of_chosen: Estimate):
        table = [_with(r, 0.9, evidence_of_chosen) if i == chosen else _with(r, 0.2, strong) if i == other
                 else dataclasses.replace(r, val_spearman=-1.0) if i in rows else r for i, r in enumerate(vp.table)]
        return answers.answer_probe(dataclasses.replace(run, value_probe=dataclasses.replace(vp, table=table)))

    a = answer(weak)
    assert (a.evidence["target"], a.evidence["position"]) == (vp.table[chosen].target, vp.table[chosen].position)
    assert a.verdict == "inconclusive"
    assert answer(strong).verdict == "yes"


def test_without_value_stage_questions_fall_back_to_the_probe(run):
    a = answers.answer_probe(dataclasses.replace(run, value_probe=None))
    assert "source" not in a.evidence and a.evidence["probe_spearman"] == run.probe.spearman


def test_report_has_the_value_section(fast_demo):
    html = (fast_demo / "report.html").read_text()
    start = html.index('data-section="ev-value"')
    section = html[start:html.index("</section>", start)]
    assert "could not read" not in section and "no value stage" not in section
    assert section.count("<img") == 3  # the probe panels, the F steering dose-response and the traces


def test_best_of_n_section_is_recomputed_from_its_samples(run, fast_demo):
    from rewardlab.probes.best_of_n import best_of_n_table

    rows = run.value_probe.best_of_n
    assert {(b.selector, b.n) for b in rows} == {(s, n) for s in ("true_reward", "implicit_reward", "reward_probe")
                                                 for n in (1, 4)}
    samples = read_jsonl(fast_demo / "value" / "best_of_n.jsonl")
    n_prompts = len(samples) // 4  # the first 16 held-out prompts, or all of them when fewer
    assert len(samples) == 4 * n_prompts and {b.n_prompts for b in rows} == {n_prompts}
    assert all(s["prompt"] == samples[4 * (i // 4)]["prompt"] for i, s in enumerate(samples))
    shape = (n_prompts, 4)
    reward = np.reshape([s["true_reward"] for s in samples], shape)
    table = best_of_n_table(reward, {k: np.reshape([s[k] for s in samples], shape)
                                     for k in ("true_reward", "implicit_reward", "reward_probe")}, [1, 4], 200, 0)
    assert [to_json(b) for b in rows] == table
    for b in rows:
        if b.n == 1:  # best-of-1 is the mean reward whatever the selector
            assert b.reward.value == pytest.approx(reward.mean(), abs=1e-12)


def test_steering_along_the_f_direction(run, fast_demo):
    sf = run.value_probe.steering_future
    last = read_json(fast_demo / "ppo" / "policy" / "config.json")["n_layer"] - 1
    assert sf is not None and sf.alphas == [-0.5, 0.0, 0.5] and sf.site == f"blocks.{last}.hook_resid_post"
    assert sf.n == 8 * 2 and sf.n_prompts == 8 and sf.n_train_prefixes > 0
    curve = sf.curve
    assert len(curve.reward_mean) == len(curve.effect) == len(curve.fluent) == 3
    assert curve.effect[1].value == 0.0  # alpha 0 is the unsteered reference
    assert len(sf.random_effects) == 2 and all(len(r) == 3 for r in sf.random_effects)
    steered = read_jsonl(fast_demo / "value" / "steered.jsonl")
    assert {s["direction"] for s in steered} >= {"future_probe"}
