"""The report of an organisms benchmark folder (`rewardlab report DIR` after `rewardlab organisms run`),
rendered from the session's real micro run: every section without an error, the heatmap embedded and
drawn from the right score per organism, every number with its CI, and each method's top tokens."""

import base64
import html
import math
import re
import shutil

import pytest
from matplotlib.axes import Axes

from rewardlab.cli import main
from rewardlab.io import read_json, write_json
from rewardlab.organisms.hypotheses import METHODS
from rewardlab.report import figures
from rewardlab.report.html import ORGANISM_SECTIONS
from rewardlab.schema import from_json
from rewardlab.stages import organisms as stage

SHOWN = {"planted": ("auroc", 0.5), "agreement": ("pair_accuracy", 0.5), "sentiment": ("spearman_truth", 0.0),
         "length": ("spearman_truth", 0.0), "flipped": ("spearman_truth", 0.0)}
NUMBER = r"(-?\d+\.\d+(?:e[-+]\d+)?)"  # as report.html.num writes it: 3 decimals, or 3 digits below 0.001
ESTIMATE = re.compile(rf"^{NUMBER} \[{NUMBER}, {NUMBER}\] \(n=(\d+)\)$")


@pytest.fixture(scope="module")
def report(organisms_micro, tmp_path_factory):
    """(the benchmark folder's copy, its results.json, report.html's text)."""
    out = tmp_path_factory.mktemp("organisms-report") / "bench"
    out.mkdir()
    shutil.copy2(organisms_micro / "results.json", out / "results.json")  # the page reads nothing else
    assert main(["report", str(out)]) == 0
    return out, read_json(out / "results.json"), (out / "report.html").read_text(encoding="utf-8")


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)"[^>]*>(.*?)</section>', page, flags=re.S))


def cells(section_html: str) -> list[dict[str, str]]:
    """The first table of a section as rows of header -> cell text."""
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", section_html.split("</thead>")[0])]
    body = section_html.split("<tbody>")[1].split("</tbody>")[0]
    return [dict(zip(head, (html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row))))
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_every_section_renders_and_the_heatmap_is_embedded(report):
    _, _, page = report
    found = sections(page)
    assert list(found) == list(ORGANISM_SECTIONS)
    assert "could not read" not in page and "Not run" not in page and "empty table" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 1 and images[0] in found["org-heatmap"]
    png = base64.b64decode(images[0].removeprefix(figures.PNG_URI_PREFIX))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    caption = html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", found["org-heatmap"], re.S).group(1))
    assert "AUROC for planted (chance 0.5)" in caption and "pair accuracy for agreement (chance 0.5)" in caption
    assert "Spearman for sentiment, length, flipped (chance 0)" in caption


def test_every_number_shown_carries_its_ci(report):
    _, results, page = report
    found = sections(page)
    s = results["organisms"]
    rows = cells(found["org-table"])
    assert len(rows) == sum(len(m) for m in s["cells"].values()) == 5 * len(METHODS)
    for row in rows:
        cell = s["cells"][row["organism"]][row["method"]]
        assert row["n_seeds"] == str(cell["n_seeds"]) == "1"
        for score in ("auroc", "precision_at_k", "spearman_truth", "pair_accuracy"):
            if score not in cell:
                assert row[score] == "", (row, score)
                continue
            value, lo, hi, n = ESTIMATE.match(row[score]).groups()
            assert float(lo) <= float(value) <= float(hi) and n == "1"
            assert float(value) == pytest.approx(cell[score]["value"], rel=5e-3, abs=5e-4)
            assert float(lo) == pytest.approx(cell[score]["ci"][0], rel=5e-3, abs=5e-4)
            assert float(hi) == pytest.approx(cell[score]["ci"][1], rel=5e-3, abs=5e-4)
    runs = cells(found["org-runs"])
    assert [(r["organism"], r["seed"]) for r in runs] == [(r["organism"], "0") for r in s["runs"]]
    for row, run in zip(runs, s["runs"]):
        for key in ("reward_base", "reward_policy", "kl_exact", "grammatical_rate"):
            value, lo, hi, n = ESTIMATE.match(row[key]).groups()
            assert float(lo) <= float(value) <= float(hi) and int(n) == run[key]["n"] == 32
    # numbers without a CI (the gain in base std, the planted rates) are not shown
    assert "reward_gain_base_std" not in page and "planted_rate" not in page


def test_each_methods_top_tokens_per_organism(report):
    _, results, page = report
    top = sections(page)["org-top-tokens"]
    tables = re.findall(r"<h4>(\w+) .*?</h4><table>(.*?)</table>", top, re.S)
    s = results["organisms"]
    assert [o for o, _ in tables] == list(s["cells"])
    for organism, table in tables:
        run = next(r for r in s["runs"] if r["organism"] == organism)
        rows = re.findall(r"<tr><th>(\w+)</th><td>(.*?)</td></tr>", table, re.S)
        assert [m for m, _ in rows] == list(s["cells"][organism])
        for method, tokens in rows:
            shown = [html.unescape(t) for t in re.findall(r"<code>(.*?)</code>", tokens)]
            assert shown == run["top_tokens"][method] and len(shown) == 10
            # the planted words (and only they) are highlighted where a method ranked them top
            marked = [html.unescape(t) for t in re.findall(r"<mark><code>(.*?)</code></mark>", tokens)]
            assert marked == [t for t in shown if t in (run.get("planted_words") or ())]
        if organism == "planted":
            assert len(run["planted_words"]) == 3 and all(
                f"<code>{html.escape(w)}</code>" in table.split("</thead>")[0] for w in run["planted_words"])
        else:
            assert run.get("planted_words") is None and "<mark>" not in table
    planted = next(r for r in s["runs"] if r["organism"] == "planted")
    assert any(t in planted["planted_words"] for tokens in planted["top_tokens"].values() for t in tokens)  # something to mark


def test_heatmap_shows_the_score_that_applies_with_value_and_ci(report, monkeypatch):
    _, results, _ = report
    section = from_json(stage.OrganismsSection, results["organisms"])
    drawn = {"text": [], "grid": None, "xticks": None}
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, **kw: drawn["text"].append((y, x, s)))
    real_imshow, real_xticks = Axes.imshow, Axes.set_xticks
    monkeypatch.setattr(Axes, "imshow", lambda self, grid, **kw: (drawn.update(grid=grid), real_imshow(self, grid, **kw))[1])
    monkeypatch.setattr(Axes, "set_xticks", lambda self, ticks, labels=None, **kw: (
        drawn.update(xticks=labels) if labels is not None and drawn["xticks"] is None else None,
        real_xticks(self, ticks, labels, **kw))[1])
    assert stage.heatmap_figure(section).startswith(figures.PNG_URI_PREFIX)
    organisms, methods = list(section.cells), list(section.cells["planted"])
    assert drawn["xticks"] == ["sentiment\nSpearman\n(chance 0)", "planted\nAUROC\n(chance 0.5)",
                               "length\nSpearman\n(chance 0)", "agreement\npair accuracy\n(chance 0.5)",
                               "flipped\nSpearman\n(chance 0)"]
    labels = {(i, j): s for i, j, s in drawn["text"]}
    assert len(labels) == len(methods) * len(organisms) == 5 * len(METHODS)
    for i, method in enumerate(methods):
        for j, organism in enumerate(organisms):
            score, chance = SHOWN[organism]
            est = results["organisms"]["cells"][organism][method][score]
            lo, hi = est["ci"]
            assert labels[(i, j)] == f"{est['value']:.2f}\n[{lo:.2f}, {hi:.2f}]"
            assert drawn["grid"][i][j] == pytest.approx((est["value"] - chance) / (1 - chance))


def test_estimate_label_and_undefined_cells():
    assert figures.estimate_label(0.7346, (0.7271, 0.7483)) == "0.73\n[0.73, 0.75]"
    assert figures.estimate_label(-0.059, (-0.12, 0.056)) == "-0.06\n[-0.12, 0.06]"
    assert figures.estimate_label(math.nan, (math.nan, math.nan)) == "n/a"
    assert figures.estimate_label(None, None) == "n/a"
    uri = figures.score_heatmap(["a", "b"], [("x\nAUROC", 0.5), ("y\nSpearman", 0.0)],
                                [[(0.9, (0.8, 1.0)), None], [(math.nan, (math.nan, math.nan)), (-0.5, (-0.6, -0.4))]],
                                "t")
    assert uri.startswith(figures.PNG_URI_PREFIX)


def test_a_bad_organisms_results_json_is_one_clear_error(report, tmp_path, capsys):
    _, results, _ = report
    bad = tmp_path / "bench"
    bad.mkdir()
    broken = {"organisms": {**results["organisms"], "cells": {"planted": {"adl": {"n_seeds": 1, "auc": 0.7}}}}}
    write_json(bad / "results.json", broken)
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'auc'" in err and "organisms.cells.planted.adl.auc" in err
    assert not (bad / "report.html").exists()


def test_earlier_measurements_per_organism_carry_their_cis(report):
    _, results, page = report
    found = sections(page)["org-measures"]
    s = results["organisms"]
    tables = re.findall(r"<table>.*?</table>", found, re.S)
    per_organism, per_seed = cells(tables[0]), cells(tables[1])
    assert [r["organism"] for r in per_organism] == list(s["measures"])
    for row in per_organism:
        cell = s["measures"][row["organism"]]
        for key in ("relevance_post_minus_base", "crosscoder_post_only", "steer_effect"):
            value, lo, hi, n = ESTIMATE.match(row[key]).groups()
            assert float(lo) <= float(value) <= float(hi) and n == "1"
            assert float(value) == pytest.approx(cell[key]["value"], rel=5e-3, abs=5e-4)
    assert [(r["organism"], r["seed"]) for r in per_seed] == [(r["organism"], "0") for r in s["runs"]]
    grouped = re.compile(rf"^{NUMBER} \[{NUMBER}, {NUMBER}\] \(n=(\d+), (\d+) prompts\)$")  # CIs by prompt
    for row, run in zip(per_seed, s["runs"]):
        est = run["measures"]["relevance_post_minus_base"]
        value, lo, hi, n, groups = grouped.match(row["relevance_post_minus_base"]).groups()
        assert float(lo) <= float(value) <= float(hi) and (int(n), int(groups)) == (est["n"], est["n_groups"])
        assert float(value) == pytest.approx(est["value"], rel=5e-3, abs=5e-4)
    assert found.count("<li>") == len(s["runs"])
