"""The HTML report: every section renders from a synthetic run, text is escaped, missing stages say so."""

import io
import re
from html.parser import HTMLParser

import pytest
from matplotlib.figure import Figure

from rewardlab.cli import main
from rewardlab.errors import InputError
from rewardlab.io import read_json, write_json, write_jsonl
from rewardlab.report import build_report
from rewardlab.report.html import EVIDENCE, QUESTIONS, fmt, steering_effect
from rewardlab.stats import Estimate

EVIL = '<script>alert("x")</script>&'


def est(v, lo, hi, n):
    return Estimate(v, (lo, hi), n).to_dict()


def _png() -> bytes:
    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def make_run(run, name="synthetic run " + EVIL):
    """A run folder with every results section and every artifact the report reads."""
    (run / "ppo").mkdir(parents=True)
    (run / "probe").mkdir()
    write_jsonl(run / "ppo/metrics.jsonl", [
        {"phase": i, "reward_mean": 0.2 + 0.4 * i, "reward_std": 0.9, "kl_exact": 0.5 * i * i} for i in range(8)])
    write_jsonl(run / "ppo/frontier.jsonl", [
        {"kl_coef": c, "kl_exact": 10 / (1 + 10 * c), "reward_mean": est(4 / (1 + 5 * c), 4 / (1 + 5 * c) - 0.2,
                                                                        4 / (1 + 5 * c) + 0.2, 64)}
        for c in (0.0, 0.05, 0.2, 0.5)])
    write_jsonl(run / "probe/sweep.jsonl", [
        {"model": m, "site": f"blocks.{layer}.{hook}", "position": pos, "score": 0.2 * layer + (0.1 if m == "post" else 0)}
        for m in ("post", "base") for layer in range(4) for hook in ("hook_resid_pre", "hook_mlp_out")
        for pos in ("last_completion", "last_prompt")])
    (run / "probe/heatmap_extra.png").write_bytes(_png())
    (run / "other.png").write_bytes(_png())
    write_jsonl(run / "steering_curves.jsonl", [
        {"direction": f"random{k}", "alpha": a, "reward_mean": 0.3 + 0.02 * k * a} for k in range(3) for a in (-4, 0, 4)])
    write_jsonl(run / "divergent.jsonl", [
        {"alpha": 0, "prompt": "the film was", "tokens": ["good", "and", EVIL], "logp_post": [-1.0, -2.0, -3.0],
         "logp_base": [-3.0, -2.0, -2.0], "reward": 1.4, "grammatical": True},
        {"alpha": 4, "tokens": ["great", "great"], "logp_post": [-0.5, -0.25], "logp_base": [-4.0, -4.5]},
    ])
    write_jsonl(run / "features.jsonl", [
        {"feature": i, "explanation": f"words like w{i}", "score": 0.1 * i, "wrong_feature_score": 0.01 * i}
        for i in range(25)] + [{"feature": 99, "explanation": EVIL, "score": 5.0}])
    write_json(run / "crosscoder_norms.json", [0.05, 0.5, 0.95, 0.45, 0.3])
    write_jsonl(run / "audit.jsonl", [{"attribute": "sentiment", "accuracy": est(0.97, 0.93, 1.0, 60), "n": 60},
                                      {"attribute": "neutral swap", "accuracy": est(0.5, 0.38, 0.62, 60), "n": 60}])
    write_jsonl(run / "params.jsonl", [{"layer": i, "divergence": 0.1 * (i + 1)} for i in range(4)])
    results = {
        "name": name,
        "world": {"grammatical_rate": est(0.98, 0.96, 0.99, 256), "base_reward_mean": est(0.23, 0.1, 0.35, 256),
                  "base_reward_std": 0.89, "heldout_loss": 1.73},
        "ppo": {"reward_base": est(0.23, 0.1, 0.35, 256), "reward_policy": est(3.1, 2.9, 3.3, 256),
                "kl_exact": est(6.2, 5.8, 6.6, 256), "grammatical_rate": est(0.91, 0.87, 0.94, 256)},
        "dpo": {"reward_policy": est(2.0, 1.8, 2.2, 256), "pair_accuracy": est(0.81, 0.77, 0.85, 400)},
        "implicit_reward": {"spearman_true": 0.64, "ci": [0.58, 0.7], "n": 512},
        "divergent": {"alphas": [0, 2, 4], "reward_mean": [est(3.1, 2.9, 3.3, 64), est(3.6, 3.3, 3.9, 64),
                                                           est(4.2, 3.9, 4.5, 64)],
                      "grammatical_rate": [0.9, 0.8, 0.6]},
        "probe": {"best_site": "blocks.3.hook_resid_post", "best_position": "last_completion",
                  "spearman": 0.912, "ci": [0.88, 0.94], "selectivity": 0.61,
                  "prompt_only_spearman": est(0.42, 0.3, 0.53, 400), "base_model_spearman": est(0.85, 0.8, 0.89, 400),
                  "value_head_cosine": 0.37},
        "steering": {"alphas": [-4, 0, 4], "reward_mean": [est(-1.0, -1.3, -0.7, 64), est(0.3, 0.1, 0.5, 64),
                                                           est(2.5, 2.2, 2.8, 64)],
                     "random_max_abs_effect": 0.4, "direction": "mean_diff",
                     "effect_at_min_alpha": est(-1.3, -1.6, -1.0, 64), "effect_over_random_at_min_alpha": 3.25,
                     "directions": {"mean_diff": {"reward_mean": [est(-1.0, -1.3, -0.7, 64), est(0.3, 0.1, 0.5, 64),
                                                                  est(2.5, 2.2, 2.8, 64)],
                                                  "summary": {"effect_at_max_alpha": 2.2, "effect_over_random": 5.5}},
                                    "reward_gradient": {"reward_mean": [-2.0, 0.3, 3.1],
                                                        "summary": {"effect_at_max_alpha": 2.8,
                                                                    "effect_over_random": 7.0}}},
                     "random_effects": [[0.1, 0.0, -0.4], [-0.2, 0.0, 0.3]]},
        "sae": {"layer": 3, "fvu": 0.12, "l0": 8.5, "mmcs": 0.71, "mmcs_random": 0.14, "shared_features": 37},
        "crosscoder": {"post_only": 4, "base_only": 2, "shared": 90},
        "interp": {"explainer": "lexical", "mean_score": est(0.55, 0.5, 0.6, 40), "wrong_feature_score": 0.05},
        "reward_relevance": {"base": 0.21, "post": 0.48, "ci": [0.15, 0.39], "seed_control": 0.09},
        "audit": {"accuracy": est(0.74, 0.66, 0.81, 120), "n": 120},
        "params": {"top_layers": [3, 2]},
        "artifacts": {
            "ppo_metrics": "ppo/metrics.jsonl", "frontier": "ppo/frontier.jsonl", "probe_sweep": "probe/sweep.jsonl",
            "probe_heatmap_extra": "probe/heatmap_extra.png", "steering_curves": "steering_curves.jsonl",
            "divergent_samples": "divergent.jsonl", "features": "features.jsonl",
            "crosscoder_norms": "crosscoder_norms.json", "audit_attributes": "audit.jsonl",
            "param_divergence": "params.jsonl", "loss_curve": "other.png",
        },
    }
    write_json(run / "results.json", results)
    return results


class Sections(HTMLParser):
    """Text of each <section id=...> (data-section must equal id), and every img src."""

    def __init__(self):
        super().__init__()
        self.text, self.imgs, self.spans, self._open = {}, [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            assert a.get("data-section") == a.get("id")
            self._open.append(a["id"])
            self.text[a["id"]] = ""
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "span" and a.get("class") == "tok" and "title" in a:
            self.spans.append(a)

    def handle_endtag(self, tag):
        if tag == "section":
            self._open.pop()

    def handle_data(self, data):
        for sid in self._open:
            self.text[sid] += data


def parse(path):
    p = Sections()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """report.html of the synthetic run with every stage (built once: figures take seconds)."""
    run = tmp_path_factory.mktemp("run")
    make_run(run)
    out = build_report(run)
    assert out == run / "report.html"
    return out


def test_full_report_renders_every_section_with_numbers(full_report):
    out = full_report
    page = parse(out)
    assert list(page.text) == list(QUESTIONS) + list(EVIDENCE) + ["ev-figures"]
    for sid, text in page.text.items():
        assert text.strip() and "Not run" not in text and "could not read" not in text, (sid, text)
    q = page.text
    assert "Yes: a linear probe at blocks.3.hook_resid_post, last_completion" in q["q1-probe"]
    assert "Spearman ρ = 0.912 [0.880, 0.940]" in q["q1-probe"]
    assert "0.420 [0.300, 0.530] (n=400)" in q["q2-prompt-probe"]
    # largest change along the probe: |2.5 - 0.3| = 2.2 at alpha 4 > random 0.4
    assert q["q3-steering"].startswith("3. Is that estimate causal?Yes:")
    assert "a change of 2.200" in q["q3-steering"] and "random directions of the same norm is 0.400" in q["q3-steering"]
    assert "Steering the other way, α = -4 changes it by -1.300 [-1.600, -1.000] (n=64) (3.250 times the random " \
        "control there)" in q["q3-steering"]
    assert "Along the reward gradient direction the change there is 2.800 (7.000 times the random control)" \
        in q["q3-steering"]
    assert "reward_gradient" in page.text["ev-steering"] and "effect_over_random" in page.text["ev-steering"]
    assert "Positively" in q["q4-implicit-reward"] and "0.640 [0.580, 0.700] (n=512)" in q["q4-implicit-reward"]
    assert "from 3.100 [2.900, 3.300] (n=64) at α = 0 to 4.200" in q["q4-implicit-reward"]
    assert "layers 3, 2" in q["q5-model-diff"] and "4 post-only, 2 base-only and 90 shared" in q["q5-model-diff"]
    assert ("from 0.210 in the base to 0.480 in the post model (difference CI [0.150, 0.390], resampling completions "
            "and SAEs), while two SAEs of one model differ by up to 0.090") in q["q5-model-diff"]
    assert "0.740 [0.660, 0.810] (n=120) over 120 minimal pairs" in q["q6-audit"]
    assert "cosine 0.370" in q["q7-value-head"]
    # figures: curves, frontier, probe heatmap + probe PNG, steering, divergent, crosscoder, params, other
    assert len(page.imgs) == 9 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    html_text = out.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html_text)  # offline: nothing fetched
    assert "Top 20 features" in q["ev-features"] and "words like w24" in q["ev-features"]
    assert "words like w4" not in q["ev-features"]  # only the 20 best of 26 are listed


def test_text_is_escaped(full_report):
    html_text = full_report.read_text()
    assert "<script>alert" not in html_text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html_text
    assert html_text.count("<script>") == 1  # only the page's own render check


def test_token_highlighting_follows_the_implicit_reward(full_report):
    page = parse(full_report)
    spans = page.spans
    diffs = [2.0, 0.0, -1.0, 3.5, 4.25]  # logp_post - logp_base per token of the two samples
    assert len(spans) == len(diffs)
    for span, d in zip(spans, diffs):
        rgb = "46,160,67" if d >= 0 else "218,54,51"
        assert span["style"] == f"background:rgba({rgb},{abs(d) / 4.25 * 0.85:.2f})"
        assert f"Δlogp = {d:+.3f}" in span["title"]
    text = page.text["ev-divergent"]
    assert "implicit reward Σ Δlogp = 1.000" in text and "implicit reward Σ Δlogp = 7.750" in text


def test_missing_stages_say_not_run(tmp_path):
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo/loss.png").write_bytes(_png())
    write_json(tmp_path / "results.json", {"world": {"grammatical_rate": est(0.98, 0.96, 0.99, 256)},
                                           "sae": {}, "artifacts": {"dpo_loss": "dpo/loss.png"}})
    page = parse(build_report(tmp_path))
    assert list(page.text) == list(QUESTIONS) + list(EVIDENCE)
    for sid, text in page.text.items():
        if sid != "ev-post-training":
            assert "Not run:" in text, sid
    assert "0.980 [0.960, 0.990] (n=256)" in page.text["ev-post-training"]
    assert "dpo_loss" in page.text["ev-post-training"] and len(page.imgs) == 1  # a PNG lands in its section


def test_unreadable_artifacts_are_reported_in_their_section(tmp_path):
    make_run(tmp_path)
    (tmp_path / "features.jsonl").write_text('{"feature": 1, "explanation": "a", "score": 1}\n{oops\n')
    (tmp_path / "params.jsonl").unlink()
    results = read_json(tmp_path / "results.json")
    results["artifacts"]["steering_plot"] = "nowhere.png"
    write_json(tmp_path / "results.json", results)
    page = parse(build_report(tmp_path))
    assert "figure not found" in page.text["ev-steering"] and "Steering along the mean diff" in page.text["ev-steering"]
    assert "could not read" not in page.text["ev-figures"]
    assert "could not read" in page.text["ev-features"] and "features.jsonl:2" in page.text["ev-features"]
    assert "could not read" in page.text["ev-params"] and "file not found" in page.text["ev-params"]
    assert "Yes:" in page.text["q1-probe"]  # the rest of the report is unaffected


def test_formatting_and_steering_effect():
    assert fmt(est(0.5, 0.4, 0.6, 10)) == "0.500 [0.400, 0.600] (n=10)"
    assert fmt(Estimate(0.5, (0.4, 0.6), 10, n_groups=3).to_dict()) == "0.500 [0.400, 0.600] (n=10, 3 prompts)"
    assert fmt(1234.56) == "1234.6" and fmt(3) == "3" and fmt(None) == "n/a" and fmt(0.00012) == "1.20e-04"
    s = {"alphas": [-2, 0, 2, 8], "reward_mean": [0.1, 0.5, 0.2, est(0.0, -0.1, 0.1, 8)],
         "random_max_abs_effect": [0.1, 0.0, 0.3, 0.6]}
    assert steering_effect(s) == pytest.approx((-0.5, 8.0, 0.6))
    assert steering_effect({"alphas": [0], "reward_mean": [1.0]}) is None


def test_missing_results_is_an_input_error_and_cli(tmp_path, capsys):
    with pytest.raises(InputError, match="file not found"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err
    write_json(tmp_path / "results.json", {"audit": {"accuracy": 0.9, "n": 10}})
    assert main(["report", str(tmp_path)]) == 0
    assert "with accuracy 0.900 over 10 minimal pairs" in parse(tmp_path / "report.html").text["q6-audit"]
    assert (tmp_path / "report.html").is_file()
