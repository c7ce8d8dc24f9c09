"""The static HTML report of a run: `build_report(RUN) -> RUN/report.html`.

It reads `RUN/results.json` (one section per stage, each statistic an `Estimate.to_dict()`:
{"value", "ci": [lo, hi], "n"}; a plain number is accepted too) and the optional artifacts listed in
`results["artifacts"]` as {name: path relative to RUN}. The page answers the research questions first,
one sentence each with numbers and CIs, then shows the evidence. A missing stage renders as "not run";
an artifact that cannot be read renders as a visible note in its section, never a failed report.

Artifacts the report understands (tables are .jsonl, .json (a list of rows) or .csv):
- `ppo_metrics`: rows {phase, reward_mean, kl_exact, [reward_std]} (one per PPO phase).
- `frontier`: rows {kl_coef, kl_exact, reward_mean} (one per run of a KL sweep).
- `probe_sweep`: rows {site, position, score, [layer], [model]}; `site` may carry the layer
  (`blocks.3.hook_resid_post`). Drawn as one heatmap per model.
- `steering_curves`: rows {direction, alpha, reward_mean}; directions named `random...` are controls.
- `divergent_samples`: rows {alpha, tokens, logp_post, logp_base, [prompt], [reward], [grammatical]}:
  the completion's tokens as decoded strings and each token's log-probability under both models.
- `features`: rows {feature, explanation, score, [wrong_feature_score], [layer], [reward_relevance], ...}.
- `crosscoder_norms`: a list of relative decoder norms, or rows {relative_norm}.
- `audit_attributes`: rows {attribute, accuracy, n, ...} (the per-attribute audit table).
- `param_divergence`: rows {layer, divergence}.
- any other `*.png`: embedded in the evidence section its name starts with (`probe_...` -> probes),
  or under "Other figures".
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rewardlab.errors import InputError
from rewardlab.io import atomic_path, read_json, read_jsonl
from rewardlab.report import figures

QUESTIONS = {
    "q1-probe": "Does the model encode the expected reward of a completion?",
    "q2-prompt-probe": "Does it encode expected reward from the prompt alone?",
    "q3-steering": "Is that estimate causal?",
    "q4-implicit-reward": "How does the implicit reward log π_post(y|x) − log π_base(y|x) relate to the true reward "
                          "and to the probe?",
    "q5-model-diff": "What changed between the base and the post-trained model?",
    "q6-audit": "What does the reward model prefer on controlled minimal pairs?",
    "q7-value-head": "In PPO runs: does the value head point where the probe points?",
}
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


def num_g(x: Any) -> str:
    """A coordinate such as a steering strength: 4 not 4.000, 0.25 not 0.250."""
    v = value(x)
    return "n/a" if v is None else f"{v:g}"


def is_estimate(x: Any) -> bool:
    return isinstance(x, dict) and "value" in x


def fmt(x: Any) -> str:
    """Plain text for any results value; an estimate reads "v [lo, hi] (n=..)"."""
    if is_estimate(x):
        text = num(x["value"])
        ci = x.get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            text += f" [{num(ci[0])}, {num(ci[1])}]"
        if x.get("n") is not None:
            groups = f", {x['n_groups']} prompts" if x.get("n_groups") is not None else ""
            text += f" (n={x['n']}{groups})"
        return text
    if isinstance(x, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt(v) for v in x)
    if isinstance(x, (int, float)) or x is None:
        return num(x)
    return str(x)


def value(x: Any) -> float | None:
    """The point value of a number or an estimate; None when there is none."""
    if is_estimate(x):
        x = x["value"]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def interval(x: Any) -> tuple[float, float] | None:
    ci = x.get("ci") if is_estimate(x) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(value(v) is not None for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def estimate(section: dict, key: str, ci_key: str = "ci") -> Any:
    """section[key] as an estimate: taken as is, or a plain number joined with section[ci_key]."""
    x = section.get(key)
    if is_estimate(x) or value(x) is None:
        return x
    ci = section.get(ci_key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return {"value": x, "ci": list(ci), "n": section.get("n")}
    return x


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of rows (dicts); every cell escaped, estimates formatted."""
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


def key_values(section: dict, skip: tuple[str, ...] = ()) -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>" for k, v in section.items() if k not in skip)
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
    """results.json of a run and its artifacts, read on demand."""

    dir: Path
    results: dict

    def section(self, name: str) -> dict:
        s = self.results.get(name)
        return s if isinstance(s, dict) and s else {}

    @property
    def artifacts(self) -> dict[str, str]:
        a = self.results.get("artifacts")
        return {str(k): str(v) for k, v in a.items()} if isinstance(a, dict) else {}

    def path(self, name: str) -> Path | None:
        rel = self.artifacts.get(name)
        return None if rel is None else self.dir / rel

    def rows(self, name: str) -> list[dict] | None:
        """The artifact `name` as a list of rows; None if the run has no such artifact."""
        path = self.path(name)
        if path is None:
            return None
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        if path.suffix == ".csv":
            if not path.is_file():
                raise InputError("file not found", str(path), "check results.json's artifacts")
            with path.open(newline="", encoding="utf-8") as f:
                return [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            data = data["rows"]
        if not isinstance(data, list):
            raise InputError("expected a list of rows", str(path), "write a JSON list or a JSONL file")
        return [row if isinstance(row, dict) else {"value": row} for row in data]

    def png_names(self) -> list[str]:
        """Names of the PNG artifacts, sorted."""
        return sorted(name for name, rel in self.artifacts.items() if rel.lower().endswith(".png"))

    def png(self, name: str) -> str:
        """The PNG artifact `name` as a data URI."""
        path = self.path(name)
        if path is None or not path.is_file():
            raise InputError("figure not found", str(path or name), "check results.json's artifacts")
        return figures.png_file_data_uri(path.read_bytes())


def _csv_value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _required(rows: list[dict], keys: tuple[str, ...], name: str) -> None:
    for i, row in enumerate(rows, start=1):
        missing = [k for k in keys if k not in row]
        if missing:
            raise InputError(f"row {i} lacks {', '.join(missing)}", f"artifact {name}",
                             f"each row needs {', '.join(keys)}")


# --- answers to the research questions ---------------------------------------------------------


def _verdict(est: Any, yes: str, no: str, negative: str | None = None) -> str:
    """`yes` when the 95% CI lies above 0, `negative` when below, else `no`."""
    ci = interval(est)
    if ci is None:
        return "Undecided (no confidence interval)"
    if ci[0] > 0:
        return yes
    if negative is not None and ci[1] < 0:
        return negative
    return no


def answer_q1(run: Run) -> str | None:
    p = run.section("probe")
    rho = estimate(p, "spearman")
    if value(rho) is None:
        return None
    where = ", ".join(str(p[k]) for k in ("best_site", "best_position") if p.get(k) is not None)
    text = (f"{_verdict(rho, 'Yes', 'Not detectably')}: a linear probe{f' at {where}' if where else ''} predicts the "
            f"true reward of held-out completions with Spearman ρ = {fmt(rho)}")
    if p.get("selectivity") is not None:
        text += f", selectivity over a shuffled-label control {fmt(p['selectivity'])}"
    if p.get("base_model_spearman") is not None:
        text += f"; a probe trained the same way on the base model reaches {fmt(p['base_model_spearman'])}"
    return text + "."


def answer_q2(run: Run) -> str | None:
    p = run.section("probe")
    rho = p.get("prompt_only_spearman")
    if value(rho) is None:
        return None
    return (f"{_verdict(rho, 'Yes', 'Not detectably')}: a probe on the last prompt token predicts the reward of the "
            f"completion that follows with Spearman ρ = {fmt(rho)}" +
            (f", against {fmt(estimate(p, 'spearman'))} on completion tokens." if value(p.get('spearman')) is not None
             else "."))


def curve(section: dict, key: str) -> list[tuple[float, Any]]:
    """(alpha, section[key][i]) where both are numbers, sorted by alpha; [] when the lists do not align."""
    alphas, ys = section.get("alphas"), section.get(key)
    if not isinstance(alphas, list) or not isinstance(ys, list) or len(alphas) != len(ys):
        return []
    points = [(value(a), y) for a, y in zip(alphas, ys) if value(a) is not None and value(y) is not None]
    return sorted(points, key=lambda p: p[0])


def steering_effect(s: dict) -> tuple[float, float, float] | None:
    """(reward(largest α) − reward(α≈0), that α, largest mean |effect| of random directions at that α, or nan).

    The random control is read at the same α when `random_max_abs_effect` is a list aligned with the
    alphas (or `summary.random_max_abs_effect_per_alpha` exists), else it is the single number given."""
    points = [(a, value(r)) for a, r in curve(s, "reward_mean")]
    if len({a for a, _ in points}) < 2:
        return None
    a0, r0 = min(points, key=lambda p: abs(p[0]))
    alpha, r_max = max(points, key=lambda p: p[0])
    rnd = s.get("summary", {}).get("random_max_abs_effect_per_alpha", s.get("random_max_abs_effect"))
    if isinstance(rnd, list):
        by_alpha = dict(zip([a for a, _ in curve(s, "reward_mean")], rnd))
        rnd = by_alpha.get(alpha)
    rnd = value(rnd)
    return r_max - r0, alpha, math.nan if rnd is None else rnd


def answer_q3(run: Run) -> str | None:
    s = run.section("steering")
    eff = steering_effect(s)
    if eff is None:
        return None
    effect, alpha, rnd = eff
    points = curve(s, "reward_mean")
    (a0, r0), (a_hi, r_hi) = min(points, key=lambda p: abs(p[0])), max(points, key=lambda p: p[0])
    direction = s.get("direction", "probe").replace("_", " ")
    gram = dict(zip([a for a, _ in points], s.get("grammatical_rate") or []))
    moves = (f"adding the {direction} direction moves the mean true reward from {fmt(r0)} at α = {num_g(a0)} "
             f"to {fmt(r_hi)} at α = {num_g(a_hi)}, a change of {num(effect)}")
    if gram.get(a_hi) is not None:
        moves += f" (grammatical rate there {fmt(gram[a_hi])})"
    if math.isnan(rnd):
        return f"Unknown: {moves}, but no random-direction control was run."
    versus = f"the largest mean |change| from random directions of the same norm is {num(rnd)}"
    down, down_ratio = s.get("effect_at_min_alpha"), value(s.get("effect_over_random_at_min_alpha"))
    if value(down) is not None and down_ratio is not None:
        versus += (f". Steering the other way, α = {num_g(points[0][0])} changes it by {fmt(down)}"
                   f" ({num(down_ratio)} times the random control there)")
    others = "".join(
        f" Along the {name.replace('_', ' ')} direction the change there is {num(value(sec['summary'].get('effect_at_max_alpha')))}"
        f" ({num(value(sec['summary'].get('effect_over_random')))} times the random control)."
        for name, sec in (s.get("directions") or {}).items()
        if isinstance(sec, dict) and isinstance(sec.get("summary"), dict) and name != s.get("direction")
        and value(sec["summary"].get("effect_at_max_alpha")) is not None)
    if effect > 3 * rnd:
        return f"Yes: {moves}; {versus}.{others}"
    if effect > rnd:
        return f"Weakly: {moves}, more than random directions but less than 3 times as much; {versus}.{others}"
    return f"Not shown: {moves}; {versus}.{others}"


def answer_q4(run: Run) -> str | None:
    ir, d = run.section("implicit_reward"), run.section("divergent")
    rho = estimate(ir, "spearman_true")
    text = ""
    if value(rho) is not None:
        verdict = _verdict(rho, "Positively", "Not detectably", negative="Negatively")
        text = f"{verdict}: the implicit reward ranks completions like the true reward with Spearman ρ = {fmt(rho)}"
        if value(ir.get("spearman_probe")) is not None:
            text += f" and like the probe with ρ = {fmt(ir['spearman_probe'])}"
    points = curve(d, "reward_mean")
    if len(points) >= 2:
        (a_lo, r_lo), (a_hi, r_hi) = points[0], points[-1]
        amplified = (f"mplified sampling changes the true reward from {fmt(r_lo)} at α = {num_g(a_lo)} to {fmt(r_hi)} "
                     f"at α = {num_g(a_hi)}")
        text = f"{text}, and a{amplified}" if text else f"A{amplified}"
    return text + "." if text else None


def answer_q5(run: Run) -> str | None:
    parts = []
    top = run.section("params").get("top_layers")
    if top:
        parts.append(f"parameters changed most in layers {fmt(top)}")
    sae = run.section("sae")
    if sae.get("mmcs") is not None:
        shared = f"{fmt(sae['shared_features'])} shared features, " if sae.get("shared_features") is not None else ""
        rnd = (f" against {fmt(sae['mmcs_random'])} for random dictionaries"
               if sae.get("mmcs_random") is not None else "")
        parts.append(f"the base and post SAE dictionaries have {shared}MMCS {fmt(sae['mmcs'])}{rnd}")
    cc = run.section("crosscoder")
    if cc:
        parts.append(f"the crosscoder finds {fmt(cc.get('post_only'))} post-only, {fmt(cc.get('base_only'))} base-only "
                     f"and {fmt(cc.get('shared'))} shared latents")
    rr = run.section("reward_relevance")
    if rr.get("base") is not None and rr.get("post") is not None:
        ci = (f" (difference CI [{fmt(rr['ci'][0])}, {fmt(rr['ci'][1])}], resampling completions and SAEs)"
              if rr.get("ci") is not None else "")
        seeds = (f", while two SAEs of one model differ by up to {fmt(rr['seed_control'])}"
                 if rr.get("seed_control") is not None else "")
        parts.append(f"feature reward relevance goes from {fmt(rr['base'])} in the base to {fmt(rr['post'])} in the "
                     f"post model{ci}{seeds}")
    it = run.section("interp")
    if it.get("mean_score") is not None:
        wrong = f" against {fmt(it['wrong_feature_score'])} for explanations of the wrong feature" \
            if it.get("wrong_feature_score") is not None else ""
        parts.append(f"feature explanations ({fmt(it.get('explainer', 'unnamed'))} explainer) score "
                     f"{fmt(it['mean_score'])}{wrong}")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def answer_q6(run: Run) -> str | None:
    a = run.section("audit")
    if a.get("skipped"):
        return f"Not run: {a['skipped']}."
    if value(a.get("accuracy")) is None:
        return None
    n = f" over {fmt(a['n'])} minimal pairs" if a.get("n") is not None else ""
    return (f"The reward model prefers the expected member of each pair with accuracy {fmt(a['accuracy'])}{n} "
            f"(ties count as wrong; 0.5 is chance).")


def answer_q7(run: Run) -> str | None:
    cos = run.section("probe").get("value_head_cosine")
    if value(cos) is None:
        return None
    return (f"The value head's readout direction has cosine {fmt(cos)} with the probe direction "
            f"(1 = the same direction, 0 = unrelated).")


ANSWERS: dict[str, tuple[Callable[[Run], str | None], str]] = {
    "q1-probe": (answer_q1, "no probe stage in this run"),
    "q2-prompt-probe": (answer_q2, "no prompt-only probe in this run"),
    "q3-steering": (answer_q3, "no steering stage in this run"),
    "q4-implicit-reward": (answer_q4, "no implicit-reward scoring or divergent sampling in this run"),
    "q5-model-diff": (answer_q5, "no parameter, SAE, crosscoder or interpretation stage in this run"),
    "q6-audit": (answer_q6, "no reward-model audit in this run"),
    "q7-value-head": (answer_q7, "no PPO value head in this run"),
}

# --- evidence sections -------------------------------------------------------------------------


def ev_post_training(run: Run) -> str:
    parts = []
    for name, title in (("world", "Base model / world"), ("ppo", "PPO"), ("dpo", "DPO")):
        if run.section(name):
            parts.append(f"<h4>{e(title)}</h4>" + key_values(run.section(name)))
    rows = run.rows("ppo_metrics")
    if rows is not None:
        _required(rows, ("reward_mean", "kl_exact"), "ppo_metrics")
        phases = [value(r.get("phase")) if value(r.get("phase")) is not None else i for i, r in enumerate(rows)]
        std = [value(r.get("reward_std")) for r in rows] if all("reward_std" in r for r in rows) else None
        uri = figures.training_curves(phases, [value(r["reward_mean"]) for r in rows], std,
                                      [value(r["kl_exact"]) for r in rows])
        parts.append(figure(uri, "PPO: mean true reward and exact KL to the base model per phase"))
    return "".join(parts)


def ev_frontier(run: Run) -> str:
    rows = run.rows("frontier")
    if rows is None:
        return ""
    _required(rows, ("kl_exact", "reward_mean"), "frontier")
    ok = [r for r in rows if value(r["kl_exact"]) is not None and value(r["reward_mean"]) is not None]
    errs = [interval(r["reward_mean"]) for r in ok]
    uri = figures.frontier(
        [value(r["kl_exact"]) for r in ok], [value(r["reward_mean"]) for r in ok],
        errs if all(errs) else None, [f"kl_coef={num_g(r['kl_coef'])}" if "kl_coef" in r else "" for r in ok])
    return figure(uri, "Reward-KL frontier: true reward against exact KL, one point per KL coefficient") + table(rows)


def ev_probe(run: Run) -> str:
    parts = []
    p = run.section("probe")
    if p:
        parts.append(key_values(p))
    rows = run.rows("probe_sweep")
    if rows is not None:
        _required(rows, ("site", "position", "score"), "probe_sweep")
        cells = []
        for r in rows:
            layer = int(r["layer"]) if value(r.get("layer")) is not None else None
            layer, hook = figures.split_site(str(r["site"]), layer)
            cells.append((str(r.get("model", "post")), layer, f"{hook} · {r['position']}", value(r["score"])))
        metric = str(rows[0].get("metric", "score"))
        parts.append(figure(figures.probe_heatmaps(cells, metric),
                            f"Probe sweep: {metric} per layer, site and position (held-out prompts)"))
    return "".join(parts)


def _direction_curve(section: dict) -> tuple[list, list, list | None] | None:
    """(alphas, mean rewards, CIs or None) of a steering section, or None when its lists do not align."""
    points = curve(section, "reward_mean")
    if not points:
        return None
    cis = [interval(r) for _, r in points]
    return [a for a, _ in points], [value(r) for _, r in points], cis if all(cis) else None


def ev_steering(run: Run) -> str:
    s = run.section("steering")
    curves = run.rows("steering_curves")
    parts = []
    alphas, rewards = s.get("alphas"), s.get("reward_mean")
    main = _direction_curve(s)
    if main is not None:
        xs, ys, _ = main
        random_curves = []
        if curves is not None:
            _required(curves, ("direction", "alpha", "reward_mean"), "steering_curves")
            for d in dict.fromkeys(str(r["direction"]) for r in curves if str(r["direction"]).startswith("random")):
                mine = sorted((value(r["alpha"]), value(r["reward_mean"])) for r in curves if str(r["direction"]) == d)
                random_curves.append(([a for a, _ in mine], [v for _, v in mine]))
        r0 = ys[min(range(len(xs)), key=lambda j: abs(xs[j]))]
        if not random_curves and isinstance(s.get("random_effects"), list):
            for effects in s["random_effects"]:
                if isinstance(effects, list) and len(effects) == len(alphas):
                    pairs = sorted((value(a), value(v)) for a, v in zip(alphas, effects))
                    random_curves.append(([a for a, _ in pairs], [r0 + v for _, v in pairs]))
        rnd = s.get("summary", {}).get("random_max_abs_effect_per_alpha", s.get("random_max_abs_effect"))
        band = None
        if isinstance(rnd, list) and len(rnd) == len(xs) and all(value(v) is not None for v in rnd):
            band = (r0, [value(v) for _, v in sorted(zip(alphas, rnd), key=lambda p: value(p[0]))])
        elif value(rnd) is not None:
            band = (r0, [value(rnd)] * len(xs))
        name = str(s.get("direction", "probe")).replace("_", " ")
        directions = {name: main}
        for other, section in (s.get("directions") or {}).items():
            curve_ = _direction_curve({"alphas": alphas, **section}) if isinstance(section, dict) else None
            if other.replace("_", " ") != name and curve_ is not None:
                directions[other.replace("_", " ")] = curve_
        parts.append(figure(figures.dose_response(directions, band, random_curves),
                            f"Steering along the {name} direction (and the others listed); "
                            "grey: random directions of the same norm"))
        parts.append(table([{"alpha": a, "reward_mean": r} for a, r in zip(alphas, rewards)]))
    summaries = [{"direction": d, **{k: v for k, v in sec.get("summary", {}).items()
                                     if k != "random_max_abs_effect_per_alpha"}}
                 for d, sec in (s.get("directions") or {}).items() if isinstance(sec, dict)]
    if summaries:
        parts.append(table(summaries))
    if s:
        parts.append(key_values(s, skip=("alphas", "reward_mean", "directions", "random_effects")))
    return "".join(parts)


def _token_spans(tokens: list[str], diffs: list[float], post: list[float], base: list[float], scale: float) -> str:
    sep = "" if any(any(c.isspace() for c in t) for t in tokens) else " "
    spans = []
    for tok, d, lp, lb in zip(tokens, diffs, post, base):
        alpha = min(1.0, abs(d) / scale) * 0.85
        rgb = "46,160,67" if d >= 0 else "218,54,51"
        title = f"{tok!r}: Δlogp = {d:+.3f} (post {lp:.3f}, base {lb:.3f})"
        spans.append(f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" title="{e(title)}">{e(tok)}</span>')
    return sep.join(spans)


def ev_divergent(run: Run) -> str:
    parts = []
    d = run.section("divergent")
    alphas = d.get("alphas")
    if isinstance(alphas, list) and alphas:
        cols = {k: d[k] for k in ("reward_mean", "grammatical_rate", "base_perplexity")
                if isinstance(d.get(k), list) and len(d[k]) == len(alphas)}
        if "reward_mean" in cols:
            gram = [value(v) for v in cols["grammatical_rate"]] if "grammatical_rate" in cols else None
            parts.append(figure(figures.divergent_by_alpha([float(a) for a in alphas],
                                                            [value(v) for v in cols["reward_mean"]], gram),
                                "Amplified (divergent) sampling: true reward and grammatical rate against α"))
        parts.append(table([{"alpha": a, **{k: v[i] for k, v in cols.items()}} for i, a in enumerate(alphas)]))
    rows = run.rows("divergent_samples")
    if rows is not None:
        _required(rows, ("alpha", "tokens", "logp_post", "logp_base"), "divergent_samples")
        shown, per_alpha = [], {}
        for r in rows:
            key = fmt(r["alpha"])
            if per_alpha.get(key, 0) < MAX_SAMPLES_PER_ALPHA:
                per_alpha[key] = per_alpha.get(key, 0) + 1
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
            meta += [f"{k} = {fmt(r[k])}" for k in ("reward", "grammatical") if k in r]
            prompt = f'<span class="prompt">{e(r["prompt"])}</span> ' if r.get("prompt") is not None else ""
            items.append(f'<li><div class="meta">{e(" · ".join(meta))}</div><div class="sample">{prompt}'
                         f'{_token_spans([str(t) for t in r["tokens"]], ds, r["logp_post"], r["logp_base"], scale)}'
                         f'</div></li>')
        parts.append(
            f'<p class="legend">Token colour: log π_post − log π_base per token, '
            f'<span class="tok" style="background:rgba(46,160,67,0.85)">post prefers</span> '
            f'<span class="tok" style="background:rgba(218,54,51,0.85)">base prefers</span>, '
            f'full colour at |Δ| = {e(num(scale))} nats; hover a token for its numbers.</p>'
            f'<ol class="samples">{"".join(items)}</ol>')
    return "".join(parts)


def ev_sae(run: Run) -> str:
    s = run.section("sae")
    parts = [key_values(s)] if s else []
    return "".join(parts)


def ev_features(run: Run) -> str:
    parts = []
    it = run.section("interp")
    if it:
        parts.append(key_values(it))
    rows = run.rows("features")
    if rows is not None:
        _required(rows, ("feature", "explanation", "score"), "features")
        top = sorted(rows, key=lambda r: -(value(r["score"]) if value(r["score"]) is not None else -math.inf))
        first = ["feature", "explanation", "score"]
        cols = first + [c for c in dict.fromkeys(k for r in top for k in r) if c not in first]
        parts.append(f"<h4>Top {min(MAX_FEATURES, len(top))} features by explanation score</h4>"
                     + table(top[:MAX_FEATURES], cols))
    return "".join(parts)


def ev_crosscoder(run: Run) -> str:
    parts = []
    cc = run.section("crosscoder")
    if cc:
        parts.append(key_values(cc))
    rows = run.rows("crosscoder_norms")
    if rows is not None:
        norms = [value(r.get("relative_norm", r.get("value"))) for r in rows]
        norms = [v for v in norms if v is not None]
        if not norms:
            raise InputError("no relative_norm values", "artifact crosscoder_norms", "a list of numbers in [0, 1]")
        parts.append(figure(figures.crosscoder_norms(norms),
                            "Relative decoder norm per latent: < 0.1 post-only, 0.4-0.6 shared, > 0.9 base-only"))
    return "".join(parts)


def ev_audit(run: Run) -> str:
    parts = []
    a = run.section("audit")
    if a:
        parts.append(key_values({k: v for k, v in a.items() if not isinstance(v, (dict, list)) or is_estimate(v)}))
        by = a.get("by_attribute")
        if isinstance(by, dict):
            parts.append(table([
                {"attribute": k, **(v if isinstance(v, dict) and not is_estimate(v) else {"accuracy": v})}
                for k, v in by.items()]))
    rows = run.rows("audit_attributes")
    if rows is not None:
        parts.append(table(rows))
    return "".join(parts)


def ev_params(run: Run) -> str:
    parts = []
    p = run.section("params")
    if p:
        parts.append(key_values(p))
    rows = run.rows("param_divergence")
    if rows is not None:
        _required(rows, ("layer", "divergence"), "param_divergence")
        parts.append(figure(figures.param_divergence([str(r["layer"]) for r in rows],
                                                     [value(r["divergence"]) or 0.0 for r in rows]),
                            "Parameter divergence per layer (base -> post)"))
    return "".join(parts)


EVIDENCE: dict[str, tuple[str, Callable[[Run], str], tuple[str, ...], str]] = {
    # id: (title, renderer ("" when the run has nothing for it), prefixes of the PNG artifacts it embeds,
    #      what the section says when it has nothing)
    "ev-post-training": ("Post-training: reward and KL curves", ev_post_training, ("world", "ppo", "dpo"),
                         "no world, PPO or DPO stage in this run"),
    "ev-frontier": ("Reward-KL frontier", ev_frontier, ("frontier",), "no KL sweep in this run"),
    "ev-probe": ("Probes: where the reward lives", ev_probe, ("probe",), "no probe stage in this run"),
    "ev-steering": ("Steering dose-response", ev_steering, ("steering",), "no steering stage in this run"),
    "ev-divergent": ("Divergent samples and the implicit reward", ev_divergent, ("divergent",),
                     "no divergent sampling in this run"),
    "ev-sae": ("Sparse autoencoders", ev_sae, ("sae",), "no SAE stage in this run"),
    "ev-features": ("Top features and their explanations", ev_features, ("features",),
                    "no feature explanations in this run"),
    "ev-crosscoder": ("Crosscoder latent classes", ev_crosscoder, ("crosscoder",), "no crosscoder in this run"),
    "ev-audit": ("Reward-model audit", ev_audit, ("audit",), "no reward-model audit in this run"),
    "ev-params": ("Parameter divergence", ev_params, ("param",), "no parameter divergence in this run"),
}


def _figures(run: Run, prefixes: tuple[str, ...] | None) -> str:
    """The PNG artifacts named with one of `prefixes` (None: those no evidence section claims)."""
    claimed = tuple(p for _, _, ps, _ in EVIDENCE.values() for p in ps)
    names = [n for n in run.png_names() if (n.startswith(prefixes) if prefixes else not n.startswith(claimed))]
    return "".join(figure(run.png(name), name) for name in names)


# --- the page ----------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#1f2328;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h4{margin:.8em 0 .2em}
section{margin:1em 0}section.question{border-left:4px solid #1f6feb;padding:.2em 1em;background:#f6f8fa}
section.question h3{margin:.3em 0;font-size:1.02em}.answer{margin:.3em 0}.not-run{color:#6e7781;font-style:italic}
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


def _guarded(render: Callable[[Run], str], run: Run) -> str:
    """The section's HTML, or a visible note when one of its artifacts cannot be read."""
    try:
        return render(run)
    except InputError as err:
        return note(f"could not read this section's evidence: {err}")


def _evidence(run: Run, render: Callable[[Run], str], prefixes: tuple[str, ...], missing: str) -> str:
    """A section's own content plus the PNG artifacts named for it; "not run" when both are empty."""
    body = _guarded(render, run) + _guarded(lambda r: _figures(r, prefixes), run)
    return body or not_run(missing)


def render_html(run: Run) -> str:
    """The whole page as a string."""
    title = str(run.results.get("name") or run.dir.name)
    questions = []
    for i, (sid, question) in enumerate(QUESTIONS.items(), start=1):
        answer_fn, missing = ANSWERS[sid]
        answer = answer_fn(run)
        body = f'<p class="answer">{e(answer)}</p>' if answer else not_run(missing)
        questions.append(_section(sid, f"{i}. {question}", body, "question"))
    evidence = [_section(sid, title, _evidence(run, *rest), "evidence") for sid, (title, *rest) in EVIDENCE.items()]
    other = _guarded(lambda r: _figures(r, None), run)
    if other:
        evidence.append(_section("ev-figures", "Other figures", other, "evidence"))
    nav = " ".join(f'<a href="#{e(sid)}">{e(title)}</a>' for sid, (title, *_) in EVIDENCE.items())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>rewardlab report: {e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>rewardlab report: {e(title)}</h1>"
        '<p class="note">What did post-training teach the model about reward, and does the model carry its own '
        "estimate of expected reward? Every statistic reads value [95% bootstrap CI] (n).</p>"
        f"<nav>Evidence: {nav}</nav>"
        '<h2 id="questions">The research questions</h2>' + "".join(questions) + "".join(evidence) +
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from RUN/results.json and the artifacts it lists; return its path."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    if not isinstance(results, dict):
        raise InputError("results.json must hold a JSON object", str(run_dir / "results.json"),
                         "re-run the pipeline to rewrite it")
    out = run_dir / "report.html"
    page = render_html(Run(run_dir, results))
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
