"""The HTML report, rendered from a real `demo --fast` run: every section, the answers, escaping,
token highlighting, missing stages, unreadable artifacts and the artifacts both ways."""

import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from rewardlab.answers import QUESTIONS
from rewardlab.cli import main
from rewardlab.errors import InputError
from rewardlab.io import read_json, read_jsonl, write_json, write_jsonl
from rewardlab.report import build_report
from rewardlab.report.html import ARTIFACTS_READ, EVIDENCE, fmt
from rewardlab.stages.registry import REGISTRY
from rewardlab.stats import Estimate

EVIL = '<script>alert("x")</script>&'


class Sections(HTMLParser):
    """Text per section id, the coloured token spans and the images."""

    def __init__(self):
        super().__init__()
        self.text, self.spans, self.imgs, self._open = {}, [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._open.append(a["data-section"])
            self.text[a["data-section"]] = ""
        elif tag == "span" and "tok" in (a.get("class") or "") and "title" in a:  # not the legend
            self.spans.append(a)
        elif tag == "img":
            self.imgs.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "section":
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self.text[self._open[-1]] += data


def parse(path):
    p = Sections()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture
def demo_copy(fast_demo, tmp_path):
    """A copy of the fast demo's results, report and the artifacts the report reads."""
    run = tmp_path / "run"
    results = read_json(fast_demo / "results.json")
    for rel in results["artifacts"].values():
        src = fast_demo / rel
        if src.is_file() and src.stat().st_size < 5_000_000:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, run / rel)
    shutil.copy(fast_demo / "results.json", run / "results.json")
    return run


def test_the_demo_report_renders_every_section_and_answer(fast_demo):
    page = parse(fast_demo / "report.html")
    assert list(page.text) == list(QUESTIONS) + list(EVIDENCE)
    for sid, text in page.text.items():
        assert text.strip() and "could not read" not in text, (sid, text)
        if sid in EVIDENCE:
            assert "Not run" not in text, sid  # the demo runs every stage the report has a section for
    results = read_json(fast_demo / "results.json")
    for qid in QUESTIONS:
        assert results["answers"][qid]["verdict"] in page.text[qid].lower()
    assert "Not run" not in page.text["q8-dialogue"]  # the fast demo has a dialogue stage
    # figures: PPO curves, frontier, 2 probe heatmaps, steering, divergent, params, the organisms' heatmap
    assert len(page.imgs) == 11 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", (fast_demo / "report.html").read_text())


def test_artifacts_are_declared_and_written_both_ways(fast_demo):
    declared = {name for module in REGISTRY.values() for name in module.ARTIFACTS}
    assert len(declared) == sum(len(module.ARTIFACTS) for module in REGISTRY.values())  # one owner per name
    assert set(ARTIFACTS_READ) <= declared  # the report reads only what a stage declares
    results = read_json(fast_demo / "results.json")
    for name, module in REGISTRY.items():
        if (fast_demo / name).is_dir():  # every stage the demo ran wrote every artifact it declares
            for artifact, rel in module.ARTIFACTS.items():
                assert (fast_demo / name / rel).exists(), (name, artifact)
                if (fast_demo / name / rel).is_file():
                    assert results["artifacts"][artifact] == f"{name}/{rel}"


def test_text_is_escaped(demo_copy):
    results = read_json(demo_copy / "results.json")
    results["name"] = EVIL
    write_json(demo_copy / "results.json", results)
    rows = read_jsonl(demo_copy / results["artifacts"]["divergent_samples"])
    rows[0]["tokens"][0] = EVIL
    write_jsonl(demo_copy / results["artifacts"]["divergent_samples"], rows)
    html_text = build_report(demo_copy).read_text()
    assert "<script>alert" not in html_text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html_text
    assert html_text.count("<script>") == 1  # only the page's own render check


def test_token_highlighting_follows_the_implicit_reward(demo_copy):
    results = read_json(demo_copy / "results.json")
    path = demo_copy / results["artifacts"]["divergent_samples"]
    write_jsonl(path, [
        {"alpha": 0.0, "prompt": "the film was", "tokens": ["good", "and", "bad"], "logp_post": [-1.0, -2.0, -3.0],
         "logp_base": [-3.0, -2.0, -2.0]},
        {"alpha": 2.0, "tokens": ["great", "great"], "logp_post": [-0.5, -0.25], "logp_base": [-4.0, -4.5]}])
    page = parse(build_report(demo_copy))
    diffs = [2.0, 0.0, -1.0, 3.5, 4.25]  # logp_post - logp_base per token of the two samples
    assert len(page.spans) == len(diffs)
    for span, d in zip(page.spans, diffs):
        rgb = "46,160,67" if d >= 0 else "218,54,51"
        assert span["style"] == f"background:rgba({rgb},{abs(d) / 4.25 * 0.85:.2f})"
        assert f"Δlogp = {d:+.3f}" in span["title"]
    text = page.text["ev-divergent"]
    assert "implicit reward Σ Δlogp = 1.000" in text and "implicit reward Σ Δlogp = 7.750" in text


def test_unreadable_artifacts_are_reported_in_their_section(demo_copy):
    results = read_json(demo_copy / "results.json")
    (demo_copy / results["artifacts"]["divergent_samples"]).write_text('{"alpha": 0}\n{oops\n')
    (demo_copy / results["artifacts"]["probe_heatmap_base_png"]).unlink()
    page = parse(build_report(demo_copy))
    assert "could not read" in page.text["ev-divergent"] and "divergent.jsonl:2" in page.text["ev-divergent"]
    assert "could not read" in page.text["ev-probe"] and "figure not found" in page.text["ev-probe"]
    others = [sid for sid, text in page.text.items() if "could not read" in text]
    assert others == ["ev-probe", "ev-divergent"]  # the rest of the report is unaffected


def test_missing_stages_say_not_run(demo_copy):
    results = read_json(demo_copy / "results.json")
    kept = {k: results[k] for k in ("schema_version", "name", "seed", "world")}
    write_json(demo_copy / "results.json", {**kept, "artifacts": {}})
    page = parse(build_report(demo_copy))
    for sid, text in page.text.items():
        if sid != "ev-post-training":
            assert "Not run" in text, sid
    assert fmt(results["world"]["grammatical_rate"]) in page.text["ev-post-training"]


def test_results_of_another_schema_or_shape_are_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="file not found"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    write_json(tmp_path / "results.json", {"audit": {"accuracy": 0.9, "n": 10}})  # written by an older rewardlab
    with pytest.raises(InputError, match="schema version None, this rewardlab reads 1"):
        build_report(tmp_path)
    write_json(tmp_path / "results.json", {"schema_version": 1, "name": "x", "seed": 0,
                                           "probe": {"spearman": "high"}})
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json.probe: missing key 'best_site'" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_formatting():
    assert fmt(Estimate(0.5, (0.4, 0.6), 10).to_dict()) == "0.500 [0.400, 0.600] (n=10)"
    assert fmt(Estimate(0.5, (0.4, 0.6), 10, n_groups=3).to_dict()) == "0.500 [0.400, 0.600] (n=10, 3 prompts)"
    assert fmt(1234.56) == "1234.6" and fmt(3) == "3" and fmt(None) == "n/a" and fmt(0.00012) == "1.20e-04"
    assert json.loads(json.dumps(fmt({"a": [1, 2]}))) == "a: 1, 2"
