"""The answers to the research questions, from a run's typed results.

Each answer is a verdict with the sentence that justifies it and the numbers it rests on:

    yes           the evidence beats the strongest baseline with a 95% CI that excludes it
    no            the baseline wins (the CI lies on its side), or the evidence is only reading the
                  words (the best probe is the embedding layer)
    inconclusive  the CI contains the baseline, or the run has no stage for the question

Questions 1 and 2 read the value stage when the run has one: the target is then the Monte Carlo
expected reward V (or the part still to come, F = V - R) of the policy's own continuations, and the
baseline the strongest text-only predictor (bag of words, the reward of the words written, both, the
embedding-layer probe), chosen on validation prompts; for question 1 the cell (target and completion
position) with the largest validation margin over its baseline is the headline. Without a value
stage they read the probes stage, whose target is the reward of the finished completion.

The baselines: for a probe, the strongest of a bag of the tokens it can see, the completion length
and the same probe on the embedding layer (question 1), a bag of the prompt's tokens and the
embedding-layer probe at the last prompt token (question 2); for steering, the largest effect of
random directions of the same norm; for a correlation, 0; for an audit, chance (0.5); for the value
head, a random direction (|cosine| below 1.96 / sqrt(d) for 95% of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rewardlab.schema import to_json
from rewardlab.stats import Estimate, describe

if TYPE_CHECKING:
    from rewardlab.stages.registry import Results

EMBEDDING_SITE = "blocks.0.hook_resid_pre"

QUESTIONS = {
    "q1-probe": "Does the model encode the expected reward of a completion?",
    "q2-prompt-probe": "Does it encode expected reward from the prompt alone?",
    "q3-steering": "Is that estimate causal?",
    "q4-implicit-reward": "How does the implicit reward log π_post(y|x) − log π_base(y|x) relate to the true reward?",
    "q5-model-diff": "What changed between the base and the post-trained model?",
    "q6-audit": "What does the reward model prefer on controlled minimal pairs?",
    "q7-value-head": "In PPO runs: does the value head point where the probe points?",
    "q8-dialogue": "In conversations: does a policy steer the user toward follow-ups it will be rewarded for?",
}


@dataclass
class Answer:
    verdict: Literal["yes", "no", "inconclusive"]
    text: str                      # one paragraph, numbers with their CIs, naming the baseline
    evidence: dict[str, Any] = field(default_factory=dict)  # the numbers the verdict rests on


def versus(ci: tuple[float, float], baseline: float) -> Literal["yes", "no", "inconclusive"]:
    """yes when the CI lies above the baseline, no when below, inconclusive when it contains it."""
    if ci[0] > baseline:
        return "yes"
    if ci[1] < baseline:
        return "no"
    return "inconclusive"


def not_run(why: str) -> Answer:
    return Answer("inconclusive", f"Not run: {why}.")


def est(x: Estimate) -> str:
    return describe(to_json(x))


def against_baseline(lead: str, site: str, cmp, baseline: Estimate | None, reads: str) -> tuple[str, str]:
    """The verdict and text of a probe against the strongest of its baselines: "no" whatever the CI
    when the probe sits on the embedding layer (it reads the words that `reads` names)."""
    verdict = versus(cmp.difference.ci, 0.0)
    text = (f"{lead}; the strongest baseline, {cmp.baseline.replace('_', ' ')}, reaches "
            f"{est(baseline) if baseline else 'n/a'}, a difference of {est(cmp.difference)}.")
    if site == EMBEDDING_SITE:
        return "no", text + f" The best cell is the embedding layer ({EMBEDDING_SITE}): it reads {reads}, it is not " \
                            "an estimate of reward."
    if verdict == "no":
        return verdict, text + f" The baseline does better: the probe reads {reads}, it is not an estimate of reward."
    if verdict == "inconclusive":
        return verdict, text + f" The probe does not beat the baseline: nothing beyond reading {reads} is detected."
    return verdict, text


@dataclass
class _Versus:
    baseline: str
    difference: Estimate


def _value_rows(r: Results, targets: tuple[str, ...], completion: bool) -> list:
    """The value section's rows on the policy's activations for `targets`, at completion positions
    (`completion`) or at the last prompt token, that have a strongest baseline."""
    vp = r.value_probe
    return [] if vp is None else [
        row for row in vp.table if row.acts == "post" and row.target in targets and row.evidence is not None
        and (row.position != "last_prompt") == completion]


def _validation_margin(row) -> float:
    margin = row.val_spearman - row.baselines[row.strongest_baseline].val_spearman
    return margin if math.isfinite(margin) else -math.inf


def answer_value(r: Results, row, question: str) -> Answer:
    """A question answered from one row of the value section (chosen without its test numbers)."""
    vp = r.value_probe
    target = {"value_post": "V (the mean true reward of the policy's own continuations)",
              "future_post": "F = V - R (the reward still to come beyond the words written)"}[row.target]
    where = "the last prompt token" if row.position == "last_prompt" else f"completion token {row.position}"
    baseline = row.baselines[row.strongest_baseline].spearman
    verdict, text = against_baseline(
        f"A probe of {target} on the policy's activations at {where} ({row.best_site}) predicts the Monte Carlo "
        f"estimate (k = {vp.k} continuations per prefix) with Spearman ρ = {est(row.spearman)} on held-out prompts",
        row.best_site, _Versus(row.strongest_baseline, row.evidence), baseline,
        "the prompt's words" if row.position == "last_prompt" else "the words written so far")
    ceiling = vp.reliability.get(row.target, {}).get(row.position)
    if ceiling is not None and math.isfinite(ceiling):
        text += f" The Monte Carlo noise ceiling (reliability) there is {ceiling:.2f}."
    cross = next((c for c in vp.cross if (c.target, c.position) == (row.target, row.position)), None)
    if cross is not None:
        text += (f" The base model's activations predict the policy's {row.target.split('_')[0]} with "
                 f"{est(cross.base)} (post − base {est(cross.post_minus_base)}).")
    if question == "q1" and r.probe is not None:
        text += (f" For comparison, the reward probe of finished completions (probes stage) reaches "
                 f"{est(r.probe.spearman)} at {r.probe.best_site}: the reward of written words, not an expectation.")
    return Answer(verdict, text, {"target": row.target, "position": row.position, "site": row.best_site,
                                  "spearman": row.spearman, "baseline": row.strongest_baseline,
                                  "baseline_spearman": baseline, "difference": row.evidence,
                                  "reliability": ceiling, "source": "value_probe"})


def answer_probe(r: Results) -> Answer:
    rows = _value_rows(r, ("value_post", "future_post"), completion=True)
    if rows:  # the headline cell: the largest margin over its baseline on validation prompts
        return answer_value(r, max(rows, key=_validation_margin), "q1")
    p = r.probe
    if p is None:
        return not_run("no probe or value stage in this run")
    cmp = p.versus_baselines
    baseline = p.baselines_test.get(cmp.baseline, {}).get("spearman")
    verdict, text = against_baseline(
        f"The best probe ({p.best_site} at {p.best_position}) predicts the true reward of held-out completions with "
        f"Spearman ρ = {est(p.spearman)}", p.best_site, cmp, baseline, "the completion's words")
    text += f" A probe trained the same way on the base model reaches {est(p.base_model_spearman)}."
    return Answer(verdict, text, {"probe_spearman": p.spearman, "best_site": p.best_site,
                                  "best_position": p.best_position, "baseline": cmp.baseline,
                                  "baseline_spearman": baseline, "difference": cmp.difference,
                                  "base_model_spearman": p.base_model_spearman})


def answer_prompt_probe(r: Results) -> Answer:
    rows = _value_rows(r, ("value_post",), completion=False)
    if rows:
        return answer_value(r, rows[0], "q2")
    po = r.probe.prompt_only if r.probe is not None else None
    if po is None:
        return not_run("no prompt-only probe (no last_prompt position) in this run")
    cmp = po.versus_baselines
    verdict, text = against_baseline(
        f"A probe on the last prompt token ({po.site}) predicts the reward of the completion that follows with "
        f"Spearman ρ = {est(po.spearman)}", po.site, cmp, po.baselines[cmp.baseline], "the prompt's words")
    return Answer(verdict, text, {"prompt_only_spearman": po.spearman, "site": po.site, "baseline": cmp.baseline,
                                  "baselines": po.baselines, "difference": cmp.difference})


def answer_steering(r: Results) -> Answer:
    s = r.steering
    if s is None:
        return not_run("no steering stage in this run")
    parts, evidence = [], {}
    for name, d in s.directions.items():
        line, evidence[name] = f"along {name.replace('_', ' ')}", {}
        for side, alpha in (("up", d.summary.alpha_up), ("down", d.summary.alpha_down)):
            if alpha is None:
                continue
            i = s.alphas.index(alpha)
            rnd = d.summary.random_max_abs_effect_per_alpha[i]
            line += (f"{',' if evidence[name] else ''} α = {alpha:g} changes the reward by {est(d.effect[i])} against "
                     f"{rnd:.3f} for the strongest of {len(s.random_effects)} random directions (fluency "
                     f"{d.fluency[i]:.3f})")
            evidence[name].update({f"effect_{side}": d.effect[i], f"random_{side}": rnd,
                                   f"fluency_{side}": d.fluency[i]})
        parts.append(line if evidence[name] else line + ": no nonzero α keeps fluency")
    head = evidence[s.direction]
    up_verdict = versus(head["effect_up"].ci, head["random_up"]) if "effect_up" in head else "inconclusive"
    down_verdict = (versus((-head["effect_down"].ci[1], -head["effect_down"].ci[0]), head["random_down"])
                    if "effect_down" in head else "inconclusive")
    verdict = "yes" if "yes" in (up_verdict, down_verdict) else (
        "no" if up_verdict == down_verdict == "no" else "inconclusive")
    how = {"yes": "beats the strongest random direction of the same norm: the CI of its effect excludes that "
                  "direction's effect",
           "no": "does less than the strongest random direction of the same norm, steering up and down",
           "inconclusive": "cannot be told apart from the strongest random direction of the same norm: the CIs of "
                           "its effects contain that direction's effect, or no α keeps fluency"}[verdict]
    text = (f"Steering at {s.site}, read at the largest α up and down whose fluency holds ({s.fluency_bound}), "
            f"the {s.direction.replace('_', ' ')} direction {how}. "
            + ". ".join(p[0].upper() + p[1:] for p in parts) + ".")
    return Answer(verdict, text, {"site": s.site, "headline_direction": s.direction, "fluency_bound": s.fluency_bound,
                                  "directions": evidence})


def answer_implicit_reward(r: Results) -> Answer:
    ir = r.implicit_reward
    if ir is None:
        return not_run("no implicit-reward scoring in this run")
    rho = ir.spearman_true
    verdict = versus(rho.ci, 0.0)
    relation = {"yes": "ranks completions like the true reward", "no": "ranks completions against the true reward",
                "inconclusive": "shows no relation to the true reward that its CI can tell from 0"}[verdict]
    text = (f"The {ir.policy} policy's implicit reward (summed log-ratio to the base) {relation}: Spearman ρ = "
            f"{est(rho)} on base-model samples of held-out prompts (baseline: 0).")
    others = [f"{name}: {est(fit.spearman_true)}" for name, fit in ir.by_policy.items() if name != ir.policy]
    if others:
        text += " Other policies: " + "; ".join(others) + "."
    if r.divergent is not None and len(r.divergent.alphas) >= 2:
        order = sorted(range(len(r.divergent.alphas)), key=lambda i: r.divergent.alphas[i])
        lo, hi = order[0], order[-1]
        text += (f" Amplified sampling moves the true reward from {est(r.divergent.reward_mean[lo])} at "
                 f"α = {r.divergent.alphas[lo]:g} to {est(r.divergent.reward_mean[hi])} at α = {r.divergent.alphas[hi]:g}.")
    return Answer(verdict, text, {"spearman_true": rho, "policy": ir.policy})


def answer_model_diff(r: Results) -> Answer:
    rr = r.reward_relevance
    parts = []
    if r.params is not None:
        parts.append(f"parameter divergence: {r.params.statement}")
    if r.sae is not None:
        parts.append(f"the post model's 1x and 2x SAE dictionaries share MMCS {r.sae.mmcs:.3f} against "
                     f"{r.sae.mmcs_random:.3f} for random dictionaries")
    if r.crosscoder is not None:
        parts.append(f"the crosscoder finds {r.crosscoder.post_only} post-only, {r.crosscoder.base_only} base-only "
                     f"and {r.crosscoder.shared} shared latents")
    if rr is None:
        if not parts:
            return not_run("no parameter, SAE or crosscoder stage in this run")
        return Answer("inconclusive", "No reward-relevance comparison in this run; " + "; ".join(parts) + ".")
    gap = rr.post_minus_base
    verdict = versus(gap.ci, 0.0)
    if verdict != "inconclusive" and abs(gap.value) <= rr.seed_control:
        verdict = "inconclusive"  # two SAEs of one model differ as much
    if verdict == "inconclusive":
        head = (f"No difference detected in the reward relevance of the SAE features: post − base = {est(gap)}, "
                f"its CI contains 0 or the gap is within the {rr.seed_control:.3f} that two SAEs of one model differ by")
    else:
        head = (f"The post model's SAE features are {'more' if verdict == 'yes' else 'less'} reward-relevant than the "
                f"base's: post − base = {est(gap)}, beyond the {rr.seed_control:.3f} between two SAEs of one model")
    return Answer("yes" if verdict != "inconclusive" else "inconclusive", "; ".join([head] + parts) + ".",
                  {"reward_relevance_post_minus_base": gap, "seed_control": rr.seed_control})


def answer_audit(r: Results) -> Answer:
    a = r.audit
    if a is None:
        return not_run("no reward-model audit in this run")
    if a.skipped or a.accuracy is None:
        return not_run(a.skipped or "no audit pairs")
    verdict = versus(a.accuracy.ci, 0.5)
    rows = [f"{name}: {est(m.accuracy_ci)}" for name, m in (a.reward_models or {}).items()]
    text = (f"On sentiment minimal pairs the utility reward prefers the expected member with accuracy "
            f"{est(a.accuracy)} (chance 0.5, ties count as wrong). Overall accuracy per reward model: "
            + "; ".join(rows) + ".")
    return Answer(verdict, text, {"accuracy": a.accuracy, "chance": 0.5})


def answer_value_head(r: Results) -> Answer:
    vh = r.probe.value_head if r.probe is not None else None
    if vh is None:
        return not_run("no PPO value head in this run")
    bound = 1.96 / math.sqrt(vh.d_model)
    cos = vh.cosine_with_probe_at_value_site
    verdict = "yes" if cos > bound else ("no" if abs(cos) <= bound else "inconclusive")
    text = (f"The value head's direction at {vh.site} has cosine {cos:.3f} with a reward probe at the same site; "
            f"95% of random directions in {vh.d_model} dimensions stay within ±{bound:.3f}. Its predictions rank "
            f"held-out completions like the true reward with Spearman ρ = {est(vh.spearman_true_test)}.")
    return Answer(verdict, text, {"cosine": cos, "random_bound": bound, "spearman_true_test": vh.spearman_true_test})


def _dialogue_extras(section) -> str:
    """The value-probe headline at the user's follow-up and the user side, as sentences."""
    parts = []
    rows = [row for row in (section.value_probe.table if section.value_probe else [])
            if row.acts == "post" and row.target == "value_post" and row.position == "followup"]
    if rows and rows[0].evidence is not None:
        row = rows[0]
        parts.append(f"At the user's follow-up, a probe of the policy's Monte Carlo value of the rest of the "
                     f"conversation on its activations ({row.best_site}) reaches Spearman {est(row.spearman)} against "
                     f"the strongest text-only baseline ({row.strongest_baseline}) by {est(row.evidence)}: "
                     f"{row.verdict}.")
    for side in section.user_side or []:
        parts.append(f"Writing the user's turn, the {side.name} policy (bonus {'on' if side.bonus else 'off'}) gives "
                     f"the bonus follow-up an implicit reward {est(side.contrast)} nats above the other subjects' "
                     f"(0 = no preference).")
    return (" " + " ".join(parts)) if parts else ""


def _stops(section, *policies) -> str:
    """Where each policy's PPO stopped, when the section has a KL budget ("" otherwise)."""
    if getattr(section, "kl_budget", None) is None:
        return ""
    where = [f"phase {p.stop_phase}" + ("" if p.stop_reason == "kl_budget" else " without reaching it")
             for p in policies]
    return f"; PPO stopped at the {section.kl_budget:g}-nat budget at {' and '.join(where)}"


def answer_dialogue(section) -> Answer:
    """q8 from a dialogue benchmark section (`stages.dialogue.DialogueSection`): yes when, with the bonus on,
    the multi-turn policy's turn-1 eliciting rate beats the single-turn policy's (its baseline, at a KL
    within the budget) by at least 2x with CIs apart, and the bonus-off control shows no such rise."""
    by = {(p.name, p.bonus): p for p in section.policies}
    on = next(v for v in section.verdicts if v.bonus)
    off = next((v for v in section.verdicts if not v.bonus), None)
    multi, single = by["multi-turn", True], by["single-turn", True]
    text = (f"With the follow-up bonus on, the multi-turn policy's turn 1 names the bonus subject last (what makes the "
            f"user ask the rewarded follow-up) at rate {est(multi.eliciting)}, against {est(single.eliciting)} for "
            f"the single-turn policy (the baseline; KL {multi.kl.value:.2f} vs {single.kl.value:.2f} nats, at most 1 "
            f"apart for a comparison{_stops(section, multi, single)}); the bonus-off control says "
            f"{off.steers if off else 'n/a'}.")
    if on.steers == "yes" and (off is None or off.steers == "no"):
        verdict = "yes"
    elif multi.eliciting.ci[1] < single.eliciting.ci[0]:
        verdict, text = "no", text + " The single-turn policy mentions it more: no steering."
    else:
        verdict = "inconclusive"
        why = [w for w, bad in (("the CIs overlap", on.cis_overlap), ("the ratio is under 2",
            on.rate_ratio is not None and on.rate_ratio < 2), (
            f"the KLs are {on.kl_gap:.2f} nats apart, more than 1", on.kl_gap > 1.0), (
            "the bonus-off control rises too", off is not None and off.steers == "yes")) if bad]
        text += f" Not decisive: {'; '.join(why) or 'see the verdicts'}."
    return Answer(verdict, text + _dialogue_extras(section),
                  {"eliciting_multi": multi.eliciting, "eliciting_single": single.eliciting, "kl_gap": on.kl_gap,
                   "control_steers": off.steers if off else None})


def answer_all(r: Results) -> dict[str, Answer]:
    return {
        "q1-probe": answer_probe(r), "q2-prompt-probe": answer_prompt_probe(r), "q3-steering": answer_steering(r),
        "q4-implicit-reward": answer_implicit_reward(r), "q5-model-diff": answer_model_diff(r),
        "q6-audit": answer_audit(r), "q7-value-head": answer_value_head(r),
        "q8-dialogue": answer_dialogue(r.dialogue) if getattr(r, "dialogue", None) is not None else not_run(
            "no dialogue stage in this run (add a `dialogue: {}` section, or `rewardlab dialogue run --out DIR`)"),
    }
