"""`rewardlab organisms run --value`: the value stage's study on each organism (micro preset, on a copy of
the session's organisms folder, whose organisms are reused): its section per organism seed in
results.json, the organism's own reward and prompts, its PPO value head, resuming, and the report."""

import math
import re
import shutil

import pytest

from rewardlab.cli import main
from rewardlab.io import read_json, read_jsonl
from rewardlab.rewards import get_reward
from rewardlab.schema import from_json
from rewardlab.stages import organisms as stage
from rewardlab.stages.value import ValueProbeSection

ORGANISMS = ("agreement", "planted")


@pytest.fixture(scope="module")
def valued(organisms_micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("organisms-value") / "bench"
    shutil.copytree(organisms_micro, out)
    args = ["organisms", "run", "--out", str(out), "--preset", "micro", "--seeds", "1", "--organisms",
            ",".join(ORGANISMS), "--value"]
    assert main(args) == 0
    return out, args


def test_each_organism_has_its_value_section(valued):
    out, _ = valued
    s = from_json(stage.OrganismsSection, read_json(out / "results.json")["organisms"], "organisms")
    assert list(s.cells) == list(ORGANISMS) and list(s.value_probe) == [f"{o}-seed0" for o in ORGANISMS]
    for name, vp in s.value_probe.items():
        assert isinstance(vp, ValueProbeSection) and vp.k == stage.VALUE_SIZES["micro"]["k"] == 4
        assert vp.models == ["post", "base"] and vp.positions == ["last_prompt", "0", "4"]
        assert {(r.acts, r.target, r.position) for r in vp.table} >= {("post", "value_post", "last_prompt"),
                                                                      ("post", "future_post", "4")}
        for row in vp.table:  # NaN only where a target is constant on the test prefixes
            assert math.isnan(row.spearman.value) or row.spearman.ci[0] <= row.spearman.value <= row.spearman.ci[1]
        assert {(c.target, c.position) for c in vp.cross}
        assert vp.value_head and all(h.n_test > 0 for h in vp.value_head)  # the organism's PPO value head
        assert {b.selector for b in vp.best_of_n} == {"true_reward", "implicit_reward"} and \
            sorted({b.n for b in vp.best_of_n}) == [1, 4]
        assert vp.steering_future is not None and vp.steering_future.alphas == [-0.5, 0.0, 0.5]


@pytest.mark.parametrize("organism", ORGANISMS)
def test_targets_use_the_organisms_own_reward_and_prompts(valued, organism):
    out, _ = valued
    folder, study = out / f"{organism}-seed0", out / f"{organism}-seed0-value"
    spec = read_json(folder / "truth.json")["reward_spec"]
    assert read_json(study / "manifest.json")["config"]["reward"] == spec
    records, rows = read_jsonl(study / "records.jsonl"), read_jsonl(study / "targets.jsonl")
    reward = get_reward(spec)
    written = [r["written"] for r in rows]
    assert [r["realized"] for r in rows] == pytest.approx(reward(written, [records[r["record"]]["prompt"] for r in rows]))
    assert [r["realized"] for r in rows] != pytest.approx(get_reward("utility")(written))  # not the world's reward
    trained = {r["prompt"] for r in read_jsonl(folder / "prompts.jsonl")} if organism == "agreement" else None
    if trained is not None:  # agreement: its toned training prompts, not the world's
        assert {r["prompt"] for r in records} <= trained


def test_a_rerun_reuses_the_studies(valued, capsys):
    out, args = valued
    before = (out / "results.json").read_text()
    manifests = {o: (out / f"{o}-seed0-value" / "manifest.json").stat().st_mtime_ns for o in ORGANISMS}
    assert main(args) == 0
    assert "value probes against" not in capsys.readouterr().out
    assert (out / "results.json").read_text() == before
    assert manifests == {o: (out / f"{o}-seed0-value" / "manifest.json").stat().st_mtime_ns for o in ORGANISMS}


def test_the_report_shows_each_organisms_value_study(valued):
    out, _ = valued
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="([^"]+)"[^>]*>(.*?)</section>', page, flags=re.S))
    assert list(sections)[-1] == "org-value" and "could not read" not in page and "Not run" not in page
    for organism in ORGANISMS:
        assert f"{organism}-seed0" in sections["org-value"]
    assert sections["org-value"].count("Whose expectation") == 2
    assert sections["org-value"].count("The PPO value head against the best V probe") == 2
    assert sections["org-value"].count("Best-of-n on held-out prompts") == 2
