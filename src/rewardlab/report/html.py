"""The static HTML report of a run: `build_report(RUN) -> RUN/report.html`.

It reads `RUN/results.json` as the typed `Results` (`rewardlab.stages.registry`; a file of another
schema version, or one that does not match the schema, is an error naming the key) and renders the
answers to the research questions first, then one evidence section per results section, each drawn
by its own renderer from its dataclass. Besides the sections it reads only the artifacts the stages
declare: the PPO metrics, the divergent samples' tokens, and the probe heatmaps (PNG). An artifact
that cannot be read renders as a visible note in its section, never as a missing section.

The organisms benchmark (`rewardlab organisms run --out DIR`) writes a results.json of its own: no
header, one section `organisms` (`stages.organisms.Results`, typed and checked the same way), so
`build_report(DIR)` recognises that file by its keys and renders its own page: the methods x organisms
heatmap, the table of every score with its CI, each organism's post-training, and what each method
ranked top.
The dialogue benchmark (`rewardlab dialogue run --out DIR`) is recognised the same way (`dialogue`
and no header) and renders research question 8's answer, the policies, the value probes at the
user's follow-up and the user side; a pipeline run with a dialogue stage renders the same three in
its evidence section `ev-dialogue`, one with an organisms stage the organisms page's sections in
`ev-organisms`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rewardlab.answers import QUESTIONS
from rewardlab.errors import InputError
from rewardlab.io import atomic_path, read_json, read_jsonl
from rewardlab.report import figures
from rewardlab.schema import from_json, to_json
from rewardlab.stages import dialogue as dialogue_stage
from rewardlab.stages import organisms as organisms_stage
from rewardlab.stages.diffing import params_figure
from rewardlab.stages.registry import SCHEMA_VERSION, Results
from rewardlab.stages.sweep import frontier_figure

ARTIFACTS_READ = ("ppo_metrics", "divergent_samples", "probe_heatmap_policy_png", "probe_heatmap_base_png",
                  "value_traces")
MAX_SAMPLES_PER_ALPHA = 4
MAX_FEATURES = 20
MAX_TABLE_ROWS = 50

# --- formatting --------------------------------------------------------------------------------


def num(x: Any) -> str:
    """A number for humans: ints as ints, 3 decimals, 1 decimal from 100, scientific below 0.001."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1e-3 or a == 0:
        return f"{x:.3f}"
    return f"{x:.2e}"


def is_estimate(x: Any) -> bool:
    return isinstance(x, dict) and "value" in x and "ci" in x


def fmt(x: Any) -> str:
    """Plain text for any JSON value of the results; an estimate reads "v [lo, hi] (n=..)"."""
    if is_estimate(x):
        text = f"{num(x['value'])} [{num(x['ci'][0])}, {num(x['ci'][1])}]"
        groups = f", {x['n_groups']} prompts" if x.get("n_groups") is not None else ""
        return text + f" (n={x['n']}{groups})"
    if isinstance(x, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt(v) for v in x)
    if isinstance(x, (int, float)) or x is None:
        return num(x)
    return str(x)


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of rows (dicts of JSON values); every cell escaped, estimates formatted."""
    if not rows:
        return '<p class="note">empty table</p>'
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(fmt(row.get(c)) if c in row else '')}</td>" for c in columns) + "</tr>"
        for row in rows[:MAX_TABLE_ROWS]
    )
    more = f'<p class="note">first {MAX_TABLE_ROWS} of {len(rows)} rows</p>' if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def key_values(section: Any, skip: tuple[str, ...] = ()) -> str:
    """A section dataclass as a two-column table of its fields."""
    data = to_json(section)
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>" for k, v in data.items() if k not in skip)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def figure(uri: str, alt: str) -> str:
    return f'<figure><img src="{e(uri)}" alt="{e(alt)}"><figcaption>{e(alt)}</figcaption></figure>'


def not_run(what: str) -> str:
    return f'<p class="not-run">Not run: {e(what)}.</p>'


def note(text: str) -> str:
    return f'<p class="note warn">{e(text)}</p>'


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """A run's typed results and its folder (for the artifacts they list)."""

    dir: Path
    results: Results

    def artifact(self, name: str) -> Path | None:
        assert name in ARTIFACTS_READ, name  # the artifacts test checks that a stage declares each
        rel = (self.results.artifacts or {}).get(name)
        return None if rel is None else self.dir / rel

    def rows(self, name: str) -> list[dict] | None:
        """A JSONL artifact as rows; None when the run has no such artifact."""
        path = self.artifact(name)
        return None if path is None else read_jsonl(path)

    def png(self, name: str) -> str | None:
        """A PNG artifact as a data URI; None when the run has no such artifact."""
        path = self.artifact(name)
        if path is None:
            return None
        if not path.is_file():
            raise InputError("figure not found", str(path), "re-run the stage that writes it")
        return figures.png_file_data_uri(path.read_bytes())


def _required(rows: list[dict], keys: tuple[str, ...], name: str) -> None:
    for i, row in enumerate(rows, start=1):
        missing = [k for k in keys if k not in row]
        if missing:
            raise InputError(f"row {i} lacks {', '.join(missing)}", f"artifact {name}",
                             f"each row needs {', '.join(keys)}")


# --- evidence sections: one renderer per section type ------------------------------------------


def ev_post_training(run: Run) -> str:
    r = run.results
    parts = [f"<h4>{e(title)}</h4>" + key_values(section)
             for title, section in (("Prompts", r.prompts), ("Base model / world", r.world), ("PPO", r.ppo),
                                    ("Preference pairs", r.pairs), ("DPO", r.dpo)) if section is not None]
    rows = run.rows("ppo_metrics")
    if rows is not None:
        _required(rows, ("phase", "reward_mean", "kl_exact"), "ppo_metrics")
        std = [r_["reward_std"] for r_ in rows] if all("reward_std" in r_ for r_ in rows) else None
        uri = figures.training_curves([r_["phase"] for r_ in rows], [r_["reward_mean"] for r_ in rows], std,
                                      [r_["kl_exact"] for r_ in rows])
        parts.append(figure(uri, "PPO: mean true reward and exact KL to the base model per phase"))
    return "".join(parts)


def ev_frontier(run: Run) -> str:
    s = run.results.sweep
    if s is None:
        return ""
    optimum = ("; line: the reward's KL-optimal policies (the base tilted by exp(reward / beta), from base samples; "
               "table below)" if s.optimum else "")
    return (figure(frontier_figure(s), "Reward-KL frontier: true reward against exact KL, one point per KL "
                                       "coefficient; dashed: the base model's reward" + optimum)
            + table([to_json(p) for p in s.points])
            + (table([to_json(o) for o in s.optimum]) if s.optimum else ""))


def ev_probe(run: Run) -> str:
    p = run.results.probe
    if p is None:
        return ""
    parts = [key_values(p, skip=("metrics_test", "baselines_test", "correlations_test", "cosines"))]
    rows = [{"predictor": "probe", **to_json(p.metrics_test)}] + [
        {"predictor": name, **to_json(m)} for name, m in p.baselines_test.items()]
    parts.append("<h4>The probe against its baselines (test prompts)</h4>" + table(rows))
    parts.append("<h4>Spearman between signals (test prompts)</h4>"
                 + table([{"signals": k, "spearman": to_json(v)} for k, v in p.correlations_test.items()]))
    for name in ("probe_heatmap_policy_png", "probe_heatmap_base_png"):
        uri = run.png(name)
        if uri is not None:
            model = "policy" if "policy" in name else "base"
            parts.append(figure(uri, f"Probe sweep ({model}): validation Spearman per layer, site and position"))
    return "".join(parts)


def ev_probe_kinds(run: Run) -> str:
    k = run.results.probe_kinds
    if k is None:
        return ""
    parts = [key_values(k, skip=("scores", "cosines", "versus_text", "site_val_scores", "split_half"))]
    parts.append("<h4>Cosines of the three probes' directions</h4>"
                 + table([{"probes": name, "cosine": to_json(v)} for name, v in k.cosines.items()]))
    parts.append("<h4>Cosines of fits on disjoint halves of the training prompts (mean and spread over halvings)</h4>"
                 + table([{"probes": name, **{part: to_json(v[name]) for part, v in k.split_half.items() if name in v}}
                          for name in dict.fromkeys(n for v in k.split_half.values() for n in v)]))
    parts.append("<h4>Each probe (rows) on each task (columns), test prompts</h4>"
                 '<p class="note">rating: Spearman with the true reward; winner_loser: AUC of chosen vs rejected '
                 "completions; pair: share of pairs whose chosen completion scores higher</p>"
                 + table([{"probe": name, **to_json(row)} for name, row in k.scores.items()]))
    parts.append("<h4>Each probe on its own task minus the bag-of-words probe of its kind (paired, test prompts)</h4>"
                 + table([{"task": t, "difference": to_json(v)} for t, v in k.versus_text.items()]))
    return "".join(parts)


def ev_value(run: Run) -> str:
    vp = run.results.value_probe
    if vp is None:
        return ""
    traces = run.rows("value_traces")
    if traces:
        _required(traces, ("record", "n_written", "value", "probe"), "value_traces")
    return value_html(vp, traces)


def value_html(vp: Any, traces: list[dict] | None) -> str:
    """A value section (`stages.value.ValueProbeSection`): the probe table and figure, the cross matrix, the
    noise ceiling, the value head, F steering, best-of-n, and V along completions when `traces` are given."""
    rows = [{"acts": r.acts, "target": r.target, "position": r.position, "best site": r.best_site,
             "spearman": to_json(r.spearman), "strongest baseline": r.strongest_baseline,
             "its spearman": to_json(r.baselines[r.strongest_baseline].spearman) if r.strongest_baseline else None,
             "probe − baseline": to_json(r.evidence) if r.evidence else None, "verdict": r.verdict}
            for r in vp.table]
    parts = [key_values(vp, skip=("table", "cross", "value_head", "reliability")),
             figure(figures.value_probes([to_json(r) for r in vp.table]),
                    "Value probes: test Spearman with the Monte Carlo target per position, the best probe on each "
                    "model's activations and the strongest text-only baseline"),
             "<h4>Each cell against its strongest text-only baseline (chosen on validation prompts)</h4>" + table(rows),
             "<h4>Whose expectation: the policy's activations against the base model's</h4>"
             + table([to_json(c) for c in vp.cross]),
             "<h4>Monte Carlo noise ceiling (reliability) per target and position</h4>"
             + table([{"target": t, **by_position} for t, by_position in vp.reliability.items()])]
    if vp.value_head:
        parts.append("<h4>The PPO value head against the best V probe</h4>"
                     + table([to_json(v) for v in vp.value_head]))
    sf = vp.steering_future
    if sf is not None:
        curve = sf.curve
        parts.append(figure(figures.dose_response(sf.alphas, {"F probe": ([m.value for m in curve.reward_mean],
                                                                          [m.ci for m in curve.reward_mean])},
                                                  sf.random_effects, sf.site),
                            f"Steering along the F direction (expected reward still to come) at {sf.site}; grey: "
                            "random directions of the same norm")
                     + key_values(sf, skip=("curve", "random_effects")) + key_values(curve.summary))
    if vp.best_of_n:
        parts.append("<h4>Best-of-n on held-out prompts: the true reward of the pick by each selector</h4>"
                     + table([to_json(b) for b in vp.best_of_n]))
    if traces:
        parts.append(figure(figures.value_traces(traces), "V along held-out completions: the Monte Carlo value "
                                                          "(95% CI), the V probe and the value head, token by token"))
    return "".join(parts)


def ev_steering(run: Run) -> str:
    s = run.results.steering
    if s is None:
        return ""
    curves = {name.replace("_", " "): ([m.value for m in d.reward_mean], [m.ci for m in d.reward_mean])
              for name, d in s.directions.items()}
    parts = [figure(figures.dose_response(s.alphas, curves, s.random_effects, s.site),
                    f"Steering at {s.site} along each direction; grey: random directions of the same norm")]
    parts.append(table([{"direction": name, **to_json(d.summary)} for name, d in s.directions.items()]))
    parts.append(key_values(s, skip=("directions", "random_effects")))
    return "".join(parts)


def ev_implicit(run: Run) -> str:
    ir = run.results.implicit_reward
    if ir is None:
        return ""
    rows = [{"policy": name, **to_json(fit)} for name, fit in ir.by_policy.items()]
    base = run.results.base_samples
    return table(rows) + (key_values(base) if base is not None else "")


def _token_spans(tokens: list[str], diffs: list[float], post: list[float], base: list[float], scale: float) -> str:
    sep = "" if any(any(c.isspace() for c in t) for t in tokens) else " "
    spans = []
    for tok, d, lp, lb in zip(tokens, diffs, post, base):
        alpha = min(1.0, abs(d) / scale) * 0.85
        rgb = "46,160,67" if d >= 0 else "218,54,51"
        title = f"{tok!r}: Δlogp = {d:+.3f} (post {lp:.3f}, base {lb:.3f})"
        spans.append(f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" title="{e(title)}">{e(tok)}</span>')
    return sep.join(spans)


def divergent_samples(rows: list[dict]) -> str:
    """The first samples of each alpha, each token coloured by log pi_post - log pi_base."""
    _required(rows, ("alpha", "tokens", "logp_post", "logp_base"), "divergent_samples")
    shown, per_alpha = [], {}
    for r in rows:
        if per_alpha.get(r["alpha"], 0) < MAX_SAMPLES_PER_ALPHA:
            per_alpha[r["alpha"]] = per_alpha.get(r["alpha"], 0) + 1
            shown.append(r)
    for i, r in enumerate(shown, start=1):
        if not (len(r["tokens"]) == len(r["logp_post"]) == len(r["logp_base"])):
            raise InputError(f"sample {i}: tokens, logp_post and logp_base differ in length",
                             "artifact divergent_samples", "one log-probability per token")
    diffs = [[float(p) - float(b) for p, b in zip(r["logp_post"], r["logp_base"])] for r in shown]
    scale = max([abs(x) for ds in diffs for x in ds] + [1e-9])
    items = []
    for r, ds in zip(shown, diffs):
        meta = [f"α = {fmt(r['alpha'])}", f"implicit reward Σ Δlogp = {num(sum(ds))}"]
        prompt = f'<span class="prompt">{e(r["prompt"])}</span> ' if r.get("prompt") is not None else ""
        items.append(f'<li><div class="meta">{e(" · ".join(meta))}</div><div class="sample">{prompt}'
                     f'{_token_spans([str(t) for t in r["tokens"]], ds, r["logp_post"], r["logp_base"], scale)}'
                     f'</div></li>')
    return (f'<p class="legend">Token colour: log π_post − log π_base per token, '
            f'<span class="tok" style="background:rgba(46,160,67,0.85)">post prefers</span> '
            f'<span class="tok" style="background:rgba(218,54,51,0.85)">base prefers</span>, '
            f'full colour at |Δ| = {e(num(scale))} nats; hover a token for its numbers.</p>'
            f'<ol class="samples">{"".join(items)}</ol>')


def ev_divergent(run: Run) -> str:
    d = run.results.divergent
    if d is None:
        return ""
    if d.grammatical_rate is not None:
        fluency, label = d.grammatical_rate, "grammatical rate"
    elif d.base_perplexity is not None:
        fluency, label = [None if m is None else m.value for m in d.base_perplexity], "perplexity under the base model"
    else:
        fluency, label = None, ""
    caption = f"true reward and {label}" if fluency is not None else "true reward"
    parts = [figure(figures.divergent_by_alpha(d.alphas, [m.value for m in d.reward_mean], fluency, label),
                    f"Amplified (divergent) sampling: {caption} against α")]
    columns = {"reward_mean": d.reward_mean, "implicit_reward_mean": d.implicit_reward_mean,
               "grammatical_rate": d.grammatical_rate, "base_perplexity": d.base_perplexity}
    parts.append(table([{"alpha": a, **{k: to_json(v[i]) for k, v in columns.items() if v is not None}}
                        for i, a in enumerate(d.alphas)]))
    rows = run.rows("divergent_samples")
    if rows is not None:
        parts.append(divergent_samples(rows))
    return "".join(parts)


def ev_sae(run: Run) -> str:
    s = run.results.sae
    return "" if s is None else key_values(s)


def ev_features(run: Run) -> str:
    it = run.results.interp
    if it is None:
        return ""
    rows = sorted((to_json(f) for f in it.top_features), key=lambda f: -(f.get("score") or -math.inf))
    return (key_values(it, skip=("top_features",))
            + f"<h4>Top {min(MAX_FEATURES, len(rows))} features by explanation score</h4>"
            + table(rows[:MAX_FEATURES], ["model", "feature", "explanation", "score", "mcs"]))


def ev_relevance(run: Run) -> str:
    rr = run.results.reward_relevance
    return "" if rr is None else key_values(rr)


def ev_crosscoder(run: Run) -> str:
    cc = run.results.crosscoder
    return "" if cc is None else key_values(cc)


def ev_diffdict(run: Run) -> str:
    d = run.results.diffdict
    if d is None:
        return ""
    reads = {"identity": "base", "affine": "base", "diffdict": "base", "diff_sae": "base and post",
             "crosscoder": "base and post"}
    rows = [{"prediction": m, "reads": reads.get(m, ""), "fvu": to_json(est),
             "diffdict_minus_this": to_json(d.diffdict_minus[m]) if m in d.diffdict_minus else None}
            for m, est in d.fvu.items()]
    latents = [{"dictionary": m, "latent_rank": i + 1, "promoted_tokens": tokens,
                "explanation": d.latent_explanations.get(m, [None] * len(per))[i],
                "dictionary_mean_explanation_score": to_json(d.explanation_score[m])
                if i == 0 and d.explanation_score.get(m) else None}
               for m, per in d.top_latents.items() for i, tokens in enumerate(per)]
    return (f'<p class="note">FVU of the post model\'s activations at {e(d.site)} on held-out tokens (CI over held-out '
            f"prompts; differences paired); dictionaries of {d.d_sae} latents, k = {d.k}, trained on "
            f"{d.n_train_tokens} tokens. Only identity, affine and the difference dictionary predict post from base "
            "alone.</p>" + table(rows) + "<h4>Most important latents: tokens their difference vector promotes, and what their top-activating "
            "held-out tokens are explained as (simulation score: mean over the dictionary's top latents)</h4>"
            + table(latents))


def ev_audit(run: Run) -> str:
    a = run.results.audit
    if a is None:
        return ""
    if a.skipped:
        return f'<p class="note">{e(a.skipped)}</p>'
    parts = [key_values(a, skip=("by_attribute", "reward_models"))]
    for name, m in (a.reward_models or {}).items():
        parts.append(f"<h4>{e(name)}</h4>" + table([{"attribute": k, **to_json(v)}
                                                     for k, v in (m.per_attribute or {}).items()]))
    return "".join(parts)


def ev_params(run: Run) -> str:
    p = run.results.params
    if p is None:
        return ""
    uri = params_figure(p.layers, f"{p.policy} vs base")
    return (figure(uri, f"Parameter divergence per block, base -> {p.policy}: the change (the sum of the "
                        "per-tensor L2 norms of the change) and the change relative to the base weights")
            + key_values(p, skip=("layers",)) + table([to_json(r) for r in p.layers]))


def ev_organisms(run: Run) -> str:
    """A pipeline run's organisms section: the benchmark page's sections, one after another."""
    s = run.results.organisms
    if s is None:
        return ""
    return "".join(f"<h4>{e(title_)}</h4>{render(s)}" for title_, render in organism_sections(s).values())


def ev_dialogue(run: Run) -> str:
    """A pipeline run's dialogue section: the benchmark page's sections, one after another."""
    s = run.results.dialogue
    if s is None:
        return ""
    return "".join(f"<h4>{e(title_)}</h4>{render(s)}" for title_, render in DIALOGUE_SECTIONS.values())


EVIDENCE: dict[str, tuple[str, Callable[[Run], str], str]] = {
    # id: (title, renderer ("" when the run has nothing for it), what the section says when it has nothing)
    "ev-post-training": ("Post-training: reward and KL", ev_post_training, "no world, PPO or DPO stage in this run"),
    "ev-frontier": ("Reward-KL frontier", ev_frontier, "no KL sweep in this run"),
    "ev-probe": ("Probes: where the reward lives", ev_probe, "no probe stage in this run"),
    "ev-probe-kinds": ("Rating vs winner/loser vs Bradley-Terry probes", ev_probe_kinds,
                       "no comparison of probe kinds in this run (the probes stage's kinds_pairs)"),
    "ev-value": ("Value probes: expected reward against a Monte Carlo truth", ev_value, "no value stage in this run"),
    "ev-steering": ("Steering dose-response", ev_steering, "no steering stage in this run"),
    "ev-implicit": ("Implicit reward against the true reward", ev_implicit, "no implicit-reward scoring in this run"),
    "ev-divergent": ("Divergent samples and the implicit reward", ev_divergent, "no divergent sampling in this run"),
    "ev-sae": ("Sparse autoencoders", ev_sae, "no SAE stage in this run"),
    "ev-features": ("Top features and their explanations", ev_features, "no feature explanations in this run"),
    "ev-relevance": ("Reward relevance of SAE features", ev_relevance, "no SAE stage in this run"),
    "ev-crosscoder": ("Crosscoder latent classes", ev_crosscoder, "no crosscoder in this run"),
    "ev-diffdict": ("Difference dictionary: predicting post activations from base", ev_diffdict,
                    "no difference dictionary in this run (the sae stage's diffdict option)"),
    "ev-audit": ("Reward-model audit", ev_audit, "no reward-model audit in this run"),
    "ev-params": ("Parameter divergence", ev_params, "no parameter divergence in this run"),
    "ev-organisms": ("Model organisms: every diffing method scored against a planted reward", ev_organisms,
                     "no organisms stage in this run"),
    "ev-dialogue": ("Conversations: steering the user toward rewarded follow-ups", ev_dialogue,
                    "no dialogue stage in this run"),
}


def answers_html(run: Run) -> list[str]:
    out = []
    answers = run.results.answers or {}
    for i, (qid, question) in enumerate(QUESTIONS.items(), start=1):
        a = answers.get(qid)
        body = (f'<p class="answer"><span class="verdict {e(a.verdict)}">{e(a.verdict)}</span> {e(a.text)}</p>'
                if a is not None else not_run("no answer in results.json"))
        out.append(_section(qid, f"{i}. {question}", body, "question"))
    return out


# --- the page ----------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#1f2328;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h4{margin:.8em 0 .2em}
section{margin:1em 0}section.question{border-left:4px solid #1f6feb;padding:.2em 1em;background:#f6f8fa}
section.question h3{margin:.3em 0;font-size:1.02em}
.verdict{font-weight:700;text-transform:uppercase;font-size:.8em;padding:0 .4em;border-radius:3px;color:#fff;
background:#6e7781}.verdict.yes{background:#1a7f37}.verdict.no{background:#cf222e}.answer{margin:.3em 0}.not-run{color:#6e7781;font-style:italic}
.note{color:#6e7781;font-size:.9em}.warn{color:#9a6700}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #d0d7de;padding:.25em .6em;
text-align:left;vertical-align:top}thead th{background:#f6f8fa}table.kv th{background:#f6f8fa;font-weight:600}
figure{margin:.8em 0}figure img{max-width:100%;height:auto}figcaption{color:#6e7781;font-size:.85em}
.samples li{margin:.5em 0}.meta{color:#6e7781;font-size:.82em}.sample{font-family:ui-monospace,Menlo,Consolas,monospace;
white-space:pre-wrap;font-size:.9em}.prompt{color:#6e7781}.tok{border-radius:2px;padding:0 1px}
nav{font-size:.9em;color:#6e7781}nav a{margin-right:.8em}
"""

# Marks the page rendered once every image has decoded: the browser test reads body[data-rendered].
SCRIPT = """
window.addEventListener("load", function () {
  var broken = Array.prototype.filter.call(document.images, function (im) {
    return !(im.complete && im.naturalWidth > 0);
  });
  document.body.dataset.images = String(document.images.length);
  document.body.dataset.rendered = broken.length ? "broken-images:" + broken.length : "ok";
});
"""


def _section(sid: str, title: str, body: str, cls: str) -> str:
    level = "h3" if cls == "question" else "h2"
    return (f'<section id="{e(sid)}" data-section="{e(sid)}" class="{e(cls)}">'
            f"<{level}>{e(title)}</{level}>{body}</section>")


def _guarded(render: Callable[[Any], str], run: Any) -> str:
    """The section's HTML, or a visible note when one of its artifacts cannot be read."""
    try:
        return render(run)
    except InputError as err:
        return note(f"could not read this section's evidence: {err}")


def _page(title: str, intro: str, nav: dict[str, str], body: str) -> str:
    """The HTML document: `nav` = section id -> title, `body` the sections."""
    links = " ".join(f'<a href="#{e(sid)}">{e(t)}</a>' for sid, t in nav.items())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>rewardlab report: {e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>rewardlab report: {e(title)}</h1>"
        f'<p class="note">{e(intro)}</p><nav>Evidence: {links}</nav>{body}'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def render_html(run: Run) -> str:
    """The whole page as a string."""
    evidence = [_section(sid, title_, _guarded(render, run) or not_run(missing), "evidence")
                for sid, (title_, render, missing) in EVIDENCE.items()]
    intro = ("What did post-training teach the model about reward, and does the model carry its own estimate of "
             "expected reward? Every statistic reads value [95% bootstrap CI] (n). A verdict is yes only when the "
             "evidence beats the strongest baseline with a CI that excludes it.")
    return _page(str(run.results.name or run.dir.name), intro, {sid: t for sid, (t, *_) in EVIDENCE.items()},
                 '<h2 id="questions">The research questions</h2>' + "".join(answers_html(run)) + "".join(evidence))


# --- the organisms benchmark -------------------------------------------------------------------

SCORE_COLUMNS = ("auroc", "precision_at_k", "spearman_truth", "pair_accuracy")


def org_heatmap(s: organisms_stage.OrganismsSection) -> str:
    shown = "; ".join(f"{label} for {', '.join(o for o in s.cells if organisms_stage.KIND[o] == kind)} (chance "
                      f"{chance:g})" for kind, (_, label, chance) in organisms_stage.SHOWN.items()
                      if any(organisms_stage.KIND[o] == kind for o in s.cells))
    return figure(organisms_stage.heatmap_figure(s),
                  f"Each method (row) on each organism (column), by the score that applies to its truth: {shown}. "
                  "Colour: (score - chance) / (1 - chance), white at chance; each cell: value and 95% bootstrap CI "
                  f"over {s.seeds} organism seed(s) and the samples the method read.")


def org_table(s: organisms_stage.OrganismsSection) -> str:
    rows = [{"organism": o, "method": m, **to_json(cell)} for o, cells in s.cells.items() for m, cell in cells.items()]
    return (f'<p class="note">preset {e(s.preset)}, post-training {e(s.post_training)}, {s.seeds} organism seed(s); '
            "n = organism seeds. auroc and precision_at_k (k = the planted set's size) of the planted set; "
            "spearman_truth with the true per-token score; pair_accuracy on minimal pairs that differ only in "
            "the prompt's tone.</p>" + table(rows, ["organism", "method", "n_seeds", *SCORE_COLUMNS]))


def org_runs(s: organisms_stage.OrganismsSection) -> str:
    columns = ["organism", "seed", "reward_spec", "reward_base", "reward_policy", "kl_exact", "grammatical_rate"]
    return ('<p class="note">On fresh evaluation samples of each organism (n = samples); kl_exact: KL(policy || '
            "base) per completion, nats.</p>" + table([to_json(r) for r in s.runs], columns))


def _tokens(tokens: list[str], marked: Sequence[str] = ()) -> str:
    """Tokens as code, those in `marked` (the planted words) highlighted."""
    return " ".join(f"<mark><code>{e(t)}</code></mark>" if t in marked else f"<code>{e(t)}</code>" for t in tokens)


def org_top_tokens(s: organisms_stage.OrganismsSection) -> str:
    """Per organism, each method's top-ranked tokens, one column per seed; the planted words highlighted."""
    parts = []
    for organism in s.cells:
        runs = sorted((r for r in s.runs if r.organism == organism), key=lambda r: r.seed)
        head = "".join(f"<th>seed {r.seed}" + (f" (planted: {_tokens(r.planted_words)})" if r.planted_words else "")
                       + "</th>" for r in runs)
        body = "".join(f"<tr><th>{e(m)}</th>" + "".join(f"<td>{_tokens(r.top_tokens.get(m, []), r.planted_words or ())}"
                                                          "</td>" for r in runs)
                       + "</tr>" for m in s.cells[organism])
        spec = ", ".join(dict.fromkeys(r.reward_spec for r in runs))
        parts.append(f"<h4>{e(organism)} <span class=\"note\">({e(spec)})</span></h4>"
                     f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(parts)


MEASURE_COLUMNS = ("relevance_post_minus_base", "crosscoder_post_only", "steer_effect", "steer_over_random")


def org_measures(s: organisms_stage.OrganismsSection) -> str:
    """Per organism (over seeds) and per seed: the sentiment world's three earlier measurements, each against
    the organism's own reward, with the post-only crosscoder latents' top tokens (planted words highlighted)."""
    if not s.measures:
        return not_run("the earlier measurements (this results.json predates them)")
    cells = [{"organism": o, **to_json(c)} for o, c in s.measures.items()]
    seeds = [{"organism": r.organism, "seed": r.seed, **to_json(r.measures)} for r in s.runs if r.measures]
    tokens = "".join(f"<li>{e(r.organism)} seed {r.seed}: " + ("; ".join(
        _tokens(t, r.planted_words or ()) for t in r.measures.post_only_top_tokens) or "no post-only latent") + "</li>"
        for r in s.runs if r.measures)
    return ('<p class="note">The measurements that were nulls in the sentiment world, each against the organism\'s own '
            "reward: SAE reward relevance post minus base (top-k features by |Pearson| with the reward, chosen on "
            "train prompts, summed sign-aligned on test prompts, mean over the model's SAEs); post-only crosscoder "
            "latents after Latent Scaling (held-out tokens); steering along the mean-difference direction at the "
            "largest alpha that keeps the grammatical rate: the effect on the reward and that effect over the "
            "largest random direction's. Over seeds: mean, CI resampling seeds then each seed's bootstrap draws "
            "(the post-only count: seeds only); n = seeds.</p>"
            + table(cells, ["organism", "n_seeds", *MEASURE_COLUMNS])
            + "<h4>Per seed</h4>" + table(seeds, ["organism", "seed", "relevance_base", "relevance_post",
                                                  "relevance_post_minus_base", "relevance_seed_control",
                                                  "crosscoder_post_only", "steer_alpha_up", "steer_effect",
                                                  "steer_random_max_abs_effect", "steer_over_random"])
            + f"<h4>Post-only latents' top tokens</h4><ul>{tokens}</ul>")


ORGANISM_SECTIONS: dict[str, tuple[str, Callable[[organisms_stage.OrganismsSection], str]]] = {
    "org-heatmap": ("Methods x organisms", org_heatmap),
    "org-table": ("Every score with its CI", org_table),
    "org-runs": ("Post-training of each organism", org_runs),
    "org-top-tokens": ("What each method put at its top", org_top_tokens),
    "org-measures": ("The sentiment world's earlier measurements, per organism", org_measures),
}


def org_value(s: organisms_stage.OrganismsSection) -> str:
    """Each organism seed's value study (`organisms run --value`), as a pipeline run's value section."""
    specs = {f"{r.organism}-seed{r.seed}": r.reward_spec for r in s.runs}
    return "".join(f'<h3>{e(name)} <span class="note">(reward {e(specs.get(name, "?"))})</span></h3>'
                   + value_html(vp, None) for name, vp in (s.value_probe or {}).items())


def organism_sections(s: organisms_stage.OrganismsSection) -> dict[str, tuple[str, Callable[[
        organisms_stage.OrganismsSection], str]]]:
    """The sections of an organisms section's page: `ORGANISM_SECTIONS`, and the value studies' when it has them."""
    return {**ORGANISM_SECTIONS, **({"org-value": ("Value probes on each organism: expected reward against a "
                                                   "Monte Carlo truth", org_value)} if s.value_probe else {})}


def render_organisms_html(results: organisms_stage.Results, title: str) -> str:
    """The organisms benchmark's page as a string (with the value studies' section when it has them)."""
    s = results.organisms
    sections = organism_sections(s)
    body = "".join(_section(sid, t, _guarded(render, s), "evidence") for sid, (t, render) in sections.items())
    intro = ("Model organisms: the same base model post-trained on rewards with a known truth, and every diffing "
             "method scored against it. Every statistic reads value [95% bootstrap CI] (n).")
    return _page(title, intro, {sid: t for sid, (t, _) in sections.items()}, body)


# --- the dialogue benchmark --------------------------------------------------------------------


def dlg_policies(s: dialogue_stage.DialogueSection) -> str:
    rows = [{"policy": p.name, "bonus": p.bonus, **to_json(p)} for p in s.policies]
    verdicts = [to_json(v) for v in s.verdicts]
    budget = (f"PPO stopped at the first phase whose rollouts reached {s.kl_budget:g} nats (stop_reason kl_budget; "
              "that phase's policy is kept) or at its last phase (phases); stop_kl: that phase's rollouts' KL"
              if s.kl_budget is not None else "no KL budget: PPO ran all its phases")
    return (f'<p class="note">bonus {e(s.followup_bonus.get("followup"))} +{e(s.followup_bonus.get("value"))}; '
            "eliciting: turn 1 names the bonus subject last; kl: KL(policy || base) over the assistant's tokens, "
            f"nats per conversation, on the evaluation conversations; {e(budget)}; n = conversations, CIs resample "
            "openers.</p>"
            + table(rows, ["policy", "bonus", "eliciting", "bonus_probability", "reward_turn1", "reward_turn2", "kl",
                           "grammatical_turn1", "grammatical_turn2", "stop_phase", "stop_reason", "stop_kl"])
            + "<h4>Multi-turn against single-turn</h4>" + table(verdicts))


def dlg_value(s: dialogue_stage.DialogueSection) -> str:
    v = s.value_probe
    if v is None:
        return not_run("no measures in this folder (re-run `rewardlab dialogue run` to add them)")
    rows = [{"acts": r.acts, "target": r.target, "position": r.position, "best_site": r.best_site,
             "spearman": to_json(r.spearman), "strongest_baseline": r.strongest_baseline,
             "evidence": to_json(r.evidence) if r.evidence else None, "verdict": r.verdict} for r in v.table]
    return (f'<p class="note">Monte Carlo value of the rest of the conversation (k = {v.k} answers per follow-up '
            f"and model; {v.n_conversations} conversations, {v.n_prefixes} prefixes) at the user's follow-up and at "
            "the end of turn 1 (exact over the user's follow-ups). V_post at the bonus follow-up minus at the "
            f"others: {e(fmt(to_json(v.bonus_value_gap)))}. Probes against text-only baselines; evidence = "
            "Spearman(probe) - Spearman(strongest baseline), test prompts.</p>" + table(rows))


def dlg_user(s: dialogue_stage.DialogueSection) -> str:
    if not s.user_side:
        return not_run("no measures in this folder (re-run `rewardlab dialogue run` to add them)")
    return ('<p class="note">The policy writing the user\'s turn after the same contexts as the base: implicit '
            "reward log pi_post - log pi_base of each follow-up (nats); contrast = the bonus follow-up's minus the "
            "mean of the other subjects'; CIs over conversations.</p>"
            + table([to_json(u) for u in s.user_side], ["name", "bonus", "n", "implicit_bonus",
                                                          "implicit_other_subjects", "contrast", "p_bonus_post",
                                                          "p_bonus_base", "asks_bonus_post", "asks_bonus_base"]))


DIALOGUE_SECTIONS: dict[str, tuple[str, Callable[[dialogue_stage.DialogueSection], str]]] = {
    "dlg-policies": ("Policies: steering the user in turn 1", dlg_policies),
    "dlg-value": ("The value at the user's follow-up, probed", dlg_value),
    "dlg-user": ("The user side: what the policy expects the user to say", dlg_user),
}


def render_dialogue_html(results: dialogue_stage.BenchmarkResults, title: str) -> str:
    """The dialogue benchmark's page as a string: question 8's answer, then the evidence."""
    a = (results.answers or {}).get("q8-dialogue")
    answer = (f'<p class="answer"><span class="verdict {e(a.verdict)}">{e(a.verdict)}</span> {e(a.text)}</p>'
              if a is not None else not_run("no answer in results.json"))
    body = _section("q8-dialogue", f"8. {QUESTIONS['q8-dialogue']}", answer, "question") + "".join(
        _section(sid, t, _guarded(render, results.dialogue), "evidence") for sid, (t, render) in DIALOGUE_SECTIONS.items())
    intro = ("Two-turn conversations with a known simulated user: does a policy steer the user toward follow-ups it "
             "will be rewarded for? Every statistic reads value [95% bootstrap CI] (n).")
    return _page(title, intro, {sid: t for sid, (t, _) in DIALOGUE_SECTIONS.items()}, body)


def _read(run_dir: str | Path) -> tuple[Path, dict]:
    path = Path(run_dir) / "results.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError("results.json must hold a JSON object", str(path), "re-run the pipeline to rewrite it")
    return path, data


def is_organisms(data: dict) -> bool:
    """Whether results.json data is the organisms benchmark's (`organisms` and no pipeline header)."""
    return "organisms" in data and "schema_version" not in data


def is_dialogue(data: dict) -> bool:
    """Whether results.json data is the dialogue benchmark's (`dialogue` and no pipeline header)."""
    return "dialogue" in data and "schema_version" not in data


def load_results(run_dir: str | Path) -> Results:
    """RUN/results.json as the typed Results; InputError for another schema version or a bad key."""
    return _pipeline_results(*_read(run_dir))


def _pipeline_results(path: Path, data: dict) -> Results:
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"results.json has schema version {data.get('schema_version')}, this rewardlab reads "
                         f"{SCHEMA_VERSION}", str(path), "re-run the pipeline (finished stages are reused)")
    return from_json(Results, data, str(path))


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from RUN/results.json and the artifacts it lists (or, for an organisms
    benchmark folder, from its results.json alone); return its path."""
    run_dir = Path(run_dir)
    path, data = _read(run_dir)
    if is_organisms(data):
        page = render_organisms_html(from_json(organisms_stage.Results, data, str(path)), run_dir.name)
    elif is_dialogue(data):
        page = render_dialogue_html(from_json(dialogue_stage.BenchmarkResults, data, str(path)), run_dir.name)
    else:
        page = render_html(Run(run_dir, _pipeline_results(path, data)))
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
