"""The dialogue world: the simulated user's exact follow-up distribution, the chat format, the training
conversations' grammar, the follow-up bonus and its truth, a micro build, and played conversations."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
import torch

from rewardlab.cli import main
from rewardlab.dialogue import build_dialogue, load_dialogue
from rewardlab.dialogue.build import encode_conversations
from rewardlab.dialogue.chat import MAX_TURN_SENTENCES, sample_conversations
from rewardlab.dialogue.play import play
from rewardlab.dialogue.user import (UserPolicy, followup_distribution, followup_subject,
                                     last_subject, review_tone, sample_followup)
from rewardlab.errors import InputError
from rewardlab.models import load_model
from rewardlab.world import build_world
from rewardlab.world.grammar import is_grammatical

USER = UserPolicy()


def test_followup_distribution_is_exact():
    positive = "i loved the plot . the soundtrack was great ."
    assert review_tone(positive) == "positive" and last_subject(positive) == "soundtrack"
    assert followup_distribution(positive, USER) == {"what about the soundtrack ?": 0.6, "tell me more .": 0.4}
    negative = "the soundtrack was dull . the plot was awful ."
    assert review_tone(negative) == "negative" and last_subject(negative) == "plot"
    assert followup_distribution(negative, USER) == pytest.approx(
        {"what about the plot ?": 0.3, "what should i watch instead ?": 0.6, "tell me more .": 0.1})
    # no subject named: the probability of `about` goes to the fallback
    assert followup_distribution("i loved it . it was a joy .", USER) == pytest.approx({"tell me more .": 1.0})


def test_sampled_followups_match_the_distribution():
    rng, review = random.Random(0), "the soundtrack was dull . the plot was awful ."
    counts = Counter(sample_followup(review, USER, rng) for _ in range(4000))
    for text, p in followup_distribution(review, USER).items():
        assert counts[text] / 4000 == pytest.approx(p, abs=0.03)


def test_bad_user_probabilities_are_one_error():
    with pytest.raises(InputError, match="sum to 1"):
        UserPolicy(probabilities={"negative": {"about": 0.5, "recommend": 0.6, "more": 0.1},
                                  "positive": {"about": 0.6, "recommend": 0.0, "more": 0.4}})
    assert UserPolicy.from_dict(USER.to_dict()) == USER


def test_training_conversations_are_grammatical_and_follow_the_user():
    for conv in sample_conversations(300, 0, USER):
        opener, review, followup, answer = (m["content"] for m in conv)
        assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
        assert is_grammatical(f"{review} <eos>", prompt=opener)
        assert is_grammatical(f"{answer} <eos>") and answer.count(".") <= MAX_TURN_SENTENCES
        assert followup_distribution(f"{opener} {review}", USER)[followup] > 0
        subject = followup_subject(followup)
        if subject is not None:  # an answer about S names no other subject
            assert {last_subject(w) for w in answer.split()} <= {subject, None}


@pytest.fixture(scope="module")
def micro_dialogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialogue")
    torch.set_num_threads(1)
    build_world(root / "world", preset="micro", progress=False)
    info = build_dialogue(root / "world", root / "dialogue", preset="micro", progress=False)
    return root, info


def test_micro_build_folder_and_template(micro_dialogue):
    root, info = micro_dialogue
    d = load_dialogue(root / "dialogue")
    assert d.user == USER and d.prompts and info["n_samples"] == 32
    for key in ("grammatical_turn1", "grammatical_turn2"):
        est = info[key]
        assert est["n"] == 32 and est["ci"][0] <= est["value"] <= est["ci"][1]
    _, tokenizer = load_model(d.base_path, chat_template="on")
    conv = sample_conversations(1, 5, USER)[0]
    ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    assert ids == next(encode_conversations(tokenizer, [conv]))
    assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == " ".join(m["content"] for m in conv).split()
    with pytest.raises(InputError, match="already there"):
        build_dialogue(root / "world", root / "dialogue", preset="micro", progress=False)


def test_same_seed_builds_the_same_dialogue_world(micro_dialogue, tmp_path):
    root, info = micro_dialogue
    again = build_dialogue(root / "world", tmp_path / "again", preset="micro", progress=False)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in info.items() if k != "seconds"}
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "again" / "base" / name).read_bytes() == (root / "dialogue" / "base" / name).read_bytes()


def test_played_conversations_are_the_chat_template(micro_dialogue):
    root, _ = micro_dialogue
    d = load_dialogue(root / "dialogue")
    model, tokenizer = load_model(d.base_path, chat_template="on")
    played = play(model, tokenizer, d.prompts[:6], d.user, max_new_tokens=12,
                  generator=torch.Generator().manual_seed(0), user_rng=random.Random(0))
    ro = played.rollout
    assert not (played.turn1.bool() & played.turn2.bool()).any()
    for i in range(6):
        real = torch.cat([ro.prompt_ids[i][ro.prompt_mask[i].bool()], ro.completion_ids[i][ro.mask[i].bool()]])
        finished1, finished2 = played.finished[i]
        conv = [{"role": "user", "content": played.openers[i]}]
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        rest = tokenizer.decode(real.tolist()[len(tokenizer(text, add_special_tokens=False)["input_ids"]):])
        # the user's turn sits between the two assistant turns, exactly as the template renders it
        assert f"<eos> <user> {played.followups[i]} <eos> <assistant>" in rest
        assert int(played.turn1[i].sum()) >= 1 and int(played.turn2[i].sum()) >= 1
        user_ids = ro.completion_ids[i][(ro.mask[i] - played.turn1[i] - played.turn2[i]).bool()].tolist()
        assert tokenizer.decode(user_ids) == ("" if finished1 else "<eos> ") + \
            f"<user> {played.followups[i]} <eos> <assistant>"


def test_cli_dialogue_build_refuses_a_folder_without_a_world(tmp_path, capsys):
    assert main(["dialogue", "build", "--world", str(tmp_path / "none"), "--out", str(tmp_path / "d")]) == 2
    assert "not a built review world" in capsys.readouterr().err


def test_ppo_learns_only_from_the_assistants_tokens(micro_dialogue):
    """One `learn` pass over played conversations gives the same weights whatever the scored rollout holds
    at the user's tokens (advantages, returns, old log-probs, values set to garbage there), and moves them."""
    import copy

    from accelerate import Accelerator

    from rewardlab.dialogue.ppo import episodes, turn_scores
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import learn, policy_and_reference, policy_with_value, score_rollout

    d = load_dialogue(micro_dialogue[0] / "dialogue")
    cfg = PPOConfig(base=str(d.base_path), chat_template="on", batch_size=4, minibatch_size=2, ppo_epochs=1)
    policy, ref, tokenizer, _ = policy_and_reference(cfg, "cpu")
    played = play(policy, tokenizer, d.prompts[:4], d.user, max_new_tokens=8,
                  generator=torch.Generator().manual_seed(0), user_rng=random.Random(0))
    scores = turn_scores(played, [1.0, 0.0, -1.0, 0.5], [0.2, 2.0, 0.0, -0.3])
    user = (played.rollout.mask - played.turn1 - played.turn2).bool()
    assert user.any() and float(scores[user].abs().sum()) == 0
    weights = []
    for garbage in (False, True):
        model, optimizer = policy_with_value(copy.deepcopy(policy), cfg, "cpu")
        sc = score_rollout(model, ref, played.rollout, scores, cfg, 0.1, episodes=episodes(played, "conversation"))
        assert (sc.advantages[user] == 0).all() and (sc.kl[user] == 0).all() and (sc.returns[user] == 0).all()
        if garbage:
            for t in (sc.advantages, sc.returns, sc.old_logp, sc.values):
                t[user] = 1e3
        learn(model, ref, played.rollout, sc, cfg, 0.1, optimizer, Accelerator(cpu=True),
              torch.Generator().manual_seed(0), 0, loss_mask=played.turn1 + played.turn2)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][f"policy.{k}"], v) for k, v in policy.state_dict().items())


def test_train_dialogue_ppo_is_deterministic(micro_dialogue):
    from rewardlab.dialogue.ppo import train_dialogue_ppo
    from rewardlab.dialogue.rewards import TurnRewards, parse_bonus
    from rewardlab.rl.config import PPOConfig

    d = load_dialogue(micro_dialogue[0] / "dialogue")
    cfg = PPOConfig(phases=2, batch_size=4, minibatch_size=2, max_new_tokens=8)
    reward = TurnRewards("utility", parse_bonus("about:plot"))
    runs = [train_dialogue_ppo(d, cfg, reward, credit=c) for c in ("conversation", "conversation", "turn")]
    assert runs[0].metrics == runs[1].metrics and len(runs[0].metrics) == 2
    assert runs[0].metrics != runs[2].metrics  # the credit changes the update


def test_budget_reached_is_the_first_phase_at_or_over_the_budget():
    from rewardlab.dialogue.ppo import budget_reached

    stream = [0.0, 0.9, 2.5, 3.99, 4.0, 6.0, 3.0]  # nats per conversation, one per phase
    assert [i for i, kl in enumerate(stream) if budget_reached(kl, 4.0)][0] == 4  # equal counts, 3.99 does not
    assert not any(budget_reached(kl, None) for kl in stream) and not any(budget_reached(kl, 6.01) for kl in stream)
    assert [budget_reached(kl, 2.5) for kl in stream[:3]] == [False, False, True]


def test_ppo_stops_at_the_first_phase_reaching_the_kl_budget(micro_dialogue):
    """With the budget at phase 1's rollout KL of an unbudgeted run, training plays phases 0 and 1 exactly
    as that run did, stops at 1 without learning from it, and keeps the policy that played phase 1 (the
    same weights as a 1-phase run); a budget above every phase's KL changes nothing."""
    from rewardlab.dialogue.ppo import train_dialogue_ppo
    from rewardlab.dialogue.rewards import TurnRewards, parse_bonus
    from rewardlab.rl.config import PPOConfig

    d = load_dialogue(micro_dialogue[0] / "dialogue")
    cfg = PPOConfig(phases=3, batch_size=4, minibatch_size=2, max_new_tokens=8)
    reward = TurnRewards("utility", parse_bonus("about:plot"))
    free = train_dialogue_ppo(d, cfg, reward)
    kls = [m["kl_exact"] for m in free.metrics]
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and kls[1] > kls[0]  # phase 0 plays the base itself
    assert free.stop == {"phase": 2, "reason": "phases", "kl_exact": kls[2]} and all(m["learned"] for m in free.metrics)
    stopped = train_dialogue_ppo(d, cfg, reward, kl_budget=kls[1])
    assert stopped.stop == {"phase": 1, "reason": "kl_budget", "kl_exact": kls[1]}
    assert stopped.metrics[0] == free.metrics[0] and len(stopped.metrics) == 2
    assert stopped.metrics[1] == {**{k: v for k, v in free.metrics[1].items() if k in stopped.metrics[1]},
                                  "learned": False} and "pg_loss" not in stopped.metrics[1]
    one = train_dialogue_ppo(d, dataclasses.replace(cfg, phases=1), reward)
    kept, expected = stopped.policy.state_dict(), one.policy.state_dict()
    assert all(torch.equal(kept[k], expected[k]) for k in expected)
    above = train_dialogue_ppo(d, cfg, reward, kl_budget=max(kls) + 1.0)
    assert above.metrics == free.metrics and above.stop == free.stop


def _conversations(model, tokenizer, d, n=8):
    played = play(model, tokenizer, d.prompts[:n], d.user, max_new_tokens=16,
                  generator=torch.Generator().manual_seed(1), user_rng=random.Random(1))
    return [{"opener": o, "review": r} for o, r in zip(played.openers, played.reviews)]


def test_value_at_the_followup_is_exact_for_a_bonus_only_reward(micro_dialogue):
    """With a turn reward that is always 0 (`char:~`), the value of the rest of the conversation is the
    bonus alone: V = 10 at the bonus follow-up and 0 at the others with no Monte Carlo error, and at the
    end of turn 1 it is 10 x the user's probability of asking it (exact from user.json). The follow-up
    prefixes are the chat template's rendering of the conversation with the assistant's turn opened."""
    from rewardlab.dialogue.measure import followup_value_rows
    from rewardlab.dialogue.rewards import TurnRewards, bonus_probability, parse_bonus
    from rewardlab.dialogue.chat import messages
    from rewardlab.value.targets import TargetsConfig

    d = load_dialogue(micro_dialogue[0] / "dialogue")
    model, tokenizer = load_model(d.base_path, chat_template="on")
    convs = _conversations(model, tokenizer, d)
    convs[0] = {"opener": convs[0]["opener"], "review": "the plot was great . the soundtrack was great ."}
    bonus = parse_bonus("about:soundtrack,value=10")
    rows, records = followup_value_rows({"post": model}, tokenizer, convs, d.user, TurnRewards("char:~", bonus),
                                        TargetsConfig(k=2, max_new_tokens=4, positions=["last_prompt"]))
    end, follow = rows[:len(convs)], rows[len(convs):]
    assert [r["position"] for r in end] == ["end_turn1"] * len(convs) and len(records) == len(convs) + len(follow)
    for r in follow:
        assert r["value_post"] == (10.0 if r["followup"] == bonus.followup else 0.0) and r["value_se_post"] == 0
        c = convs[r["conversation"]]
        want = tokenizer.apply_chat_template(messages(c["opener"], c["review"], r["followup"]), tokenize=True,
                                             add_generation_prompt=True, return_dict=True)["input_ids"]
        assert r["prefix_ids"] == list(want) and records[r["record"]]["completion"] == ""
    for i, (r, c) in enumerate(zip(end, convs)):
        assert sum(f["p_user"] for f in follow if f["conversation"] == i) == pytest.approx(1.0)
        assert r["value_post"] == pytest.approx(10 * bonus_probability(c["opener"], c["review"], d.user, bonus))
    assert end[0]["value_post"] == pytest.approx(6.0)  # a positive review ending on the soundtrack: p = 0.6


def test_user_side_is_zero_against_itself_and_matches_a_forward_pass(micro_dialogue):
    """The model as the user: log-probs of each follow-up equal a plain forward pass over the context +
    `<user>` + the follow-up + `<eos>`; a policy equal to the base has implicit reward 0 everywhere."""
    from rewardlab.dialogue.measure import _user_contexts, candidate_followups, followup_logprobs, user_side
    from rewardlab.dialogue.rewards import parse_bonus

    d = load_dialogue(micro_dialogue[0] / "dialogue")
    model, tokenizer = load_model(d.base_path, chat_template="on")
    convs = _conversations(model, tokenizer, d, n=4)
    contexts, followups = _user_contexts(tokenizer, convs), candidate_followups()
    lp = followup_logprobs(model, tokenizer, contexts, followups)
    tail = tokenizer(f" {followups[2]} {tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([contexts[1] + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    want = sum(float(logp[len(contexts[1]) - 1 + t, tok]) for t, tok in enumerate(tail))
    assert lp.shape == (4, len(followups)) and lp[1, 2] == pytest.approx(want, abs=1e-4)
    assert tokenizer.decode(contexts[1][-1:]) == "<user>"
    summary, rows = user_side(model, model, tokenizer, convs, parse_bonus("about:plot"), seed=0, n_boot=50)
    assert len(rows) == 4 and all(r["contrast"] == 0 and r["implicit_bonus"] == 0 for r in rows)
    assert summary["contrast"]["value"] == 0 and summary["p_bonus_post_minus_base"]["value"] == 0
    assert summary["contrast"]["n"] == 4 and summary["p_bonus_post"] == summary["p_bonus_base"]


def test_bonus_value_gap():
    from rewardlab.stages.dialogue import bonus_value_gap

    f, g = "what about the soundtrack ?", "tell me more ."
    rows = [{"position": "followup", "conversation": 0, "prompt_id": "a", "followup": f, "value_post": 10.0},
            {"position": "followup", "conversation": 0, "prompt_id": "a", "followup": g, "value_post": 1.0},
            {"position": "followup", "conversation": 1, "prompt_id": "b", "followup": f, "value_post": 8.0},
            {"position": "followup", "conversation": 1, "prompt_id": "b", "followup": "x", "value_post": 2.0},
            {"position": "followup", "conversation": 1, "prompt_id": "b", "followup": g, "value_post": 4.0},
            {"position": "followup", "conversation": 2, "prompt_id": "c", "followup": g, "value_post": 5.0}]
    gap = bonus_value_gap(rows, f, seed=0)
    assert gap["value"] == pytest.approx((9.0 + 5.0) / 2) and gap["n"] == 2
    assert gap["ci"][0] <= gap["value"] <= gap["ci"][1]
    assert bonus_value_gap(rows[-1:], f, seed=0)["n"] == 0


def test_dialogue_run_micro_is_resumable(micro_dialogue, tmp_path, capsys):
    """`rewardlab dialogue run --preset micro` on the fixture's world: every policy measured with CIs that
    contain their values, two verdicts; a second run reuses every folder and writes the same results."""
    import json

    root, _ = micro_dialogue
    args = ["dialogue", "run", "--out", str(tmp_path / "run"), "--preset", "micro", "--world", str(root / "world")]
    assert main(args) == 0
    first = json.loads((tmp_path / "run" / "results.json").read_text())["dialogue"]
    names = [(p["name"], p["bonus"]) for p in first["policies"]]
    assert names == [("base", True), ("base", False), ("single-turn", True), ("multi-turn", True),
                     ("single-turn", False), ("multi-turn", False)]
    for p in first["policies"]:
        for key in ("eliciting", "bonus_probability", "reward_turn2", "kl", "grammatical_turn1"):
            est = p[key]
            assert est["n"] == 32 and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert [v["bonus"] for v in first["verdicts"]] == [True, False]
    vp = first["value_probe"]
    assert vp["positions"] == ["end_turn1", "followup"] and vp["n_conversations"] == 32 and vp["k"] == 2
    assert {(r["acts"], r["position"]) for r in vp["table"]} == {(a, p) for a in ("post", "base")
                                                                  for p in ("end_turn1", "followup")}
    assert [(u["name"], u["bonus"]) for u in first["user_side"]] == [("multi-turn", True), ("multi-turn", False)]
    for u in first["user_side"]:
        est = u["contrast"]
        assert est["n"] == 32 and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert first["followup_bonus"]["followup"] == "what about the soundtrack ?"
    answers = json.loads((tmp_path / "run" / "results.json").read_text())["answers"]
    assert answers["q8-dialogue"]["verdict"] in ("yes", "no", "inconclusive")
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    for sid in ("q8-dialogue", "dlg-policies", "dlg-value", "dlg-user"):
        assert f'data-section="{sid}"' in page
    assert "could not read" not in page and "Not run" not in page
    capsys.readouterr()
    assert main(args) == 0
    rerun = capsys.readouterr().out
    assert "PPO (" not in rerun and "fine-tuning" not in rerun and "measuring" not in rerun  # every folder reused
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dialogue"] == first
    assert first["kl_budget"] == 0.2  # the micro preset's
    for p, arm in zip(first["policies"][2:], ("on-turn", "on-conversation", "off-turn", "off-conversation")):
        kls = [m["kl_exact"] for m in map(json.loads, (tmp_path / "run" / arm / "metrics.jsonl").open())]
        # stopped at the first phase reaching the budget, or ran all 3 phases without reaching it
        reached = [i for i, kl in enumerate(kls) if kl >= 0.2]
        assert (p["stop_phase"], p["stop_reason"], p["stop_kl"]) == (
            (reached[0], "kl_budget", kls[reached[0]]) if reached else (2, "phases", kls[-1]))
        assert len(kls) == p["stop_phase"] + 1
    assert all("stop_phase" not in p for p in first["policies"][:2])  # the base is not trained
    assert main(args[:-2] + ["--world", str(tmp_path)]) == 2  # not a world


def test_verdict_needs_twice_the_rate_apart_and_within_the_kl_budget():
    from rewardlab.stages.dialogue import Policy, verdict
    from rewardlab.stats import Estimate

    def policy(rate, lo, hi, kl):
        e = Estimate(0.5, (0.4, 0.6), 10)
        return Policy("x", True, Estimate(rate, (lo, hi), 100), e, e, e, e, Estimate(kl, (kl, kl), 100), e, e)

    assert verdict(policy(0.1, 0.05, 0.15, 3.0), policy(0.3, 0.2, 0.4, 3.5)).steers == "yes"
    assert verdict(policy(0.1, 0.05, 0.15, 3.0), policy(0.3, 0.2, 0.4, 4.5)).steers == "no"  # KL gap 1.5
    assert verdict(policy(0.1, 0.05, 0.25, 3.0), policy(0.3, 0.2, 0.4, 3.0)).steers == "no"  # CIs overlap
    assert verdict(policy(0.2, 0.15, 0.25, 3.0), policy(0.3, 0.27, 0.4, 3.0)).steers == "no"  # only 1.5x
    # the evaluation KLs decide, not where training stopped
    stopped_apart = dataclasses.replace(policy(0.3, 0.2, 0.4, 3.5), stop_phase=30, stop_reason="phases", stop_kl=6.0)
    assert verdict(dataclasses.replace(policy(0.1, 0.05, 0.15, 3.0), stop_kl=4.0), stopped_apart).steers == "yes"
    same_stop = [dataclasses.replace(p, stop_phase=5, stop_reason="kl_budget", stop_kl=4.0)
                 for p in (policy(0.1, 0.05, 0.15, 3.0), policy(0.3, 0.2, 0.4, 4.5))]
    assert verdict(*same_stop).steers == "no" and verdict(*same_stop).kl_gap == pytest.approx(1.5)


def test_q8_says_yes_only_when_the_bonus_on_comparison_steers_and_the_control_does_not():
    from dataclasses import replace

    from rewardlab.answers import answer_dialogue
    from rewardlab.stages.dialogue import DialogueSection, Policy, verdict
    from rewardlab.stats import Estimate

    def policy(name, bonus, rate, lo, hi, kl=3.0):
        e = Estimate(0.5, (0.4, 0.6), 10)
        return Policy(name, bonus, Estimate(rate, (lo, hi), 100), e, e, e, e, Estimate(kl, (kl, kl), 100), e, e)

    def section(on_single, on_multi, off_single, off_multi):
        return DialogueSection("micro", "utility", {}, {}, [on_single, on_multi, off_single, off_multi],
                               [verdict(on_single, on_multi), verdict(off_single, off_multi)])

    low, high = (0.1, 0.05, 0.15), (0.3, 0.2, 0.4)
    s = section(policy("single-turn", True, *low), policy("multi-turn", True, *high),
                policy("single-turn", False, *low), policy("multi-turn", False, *low))
    a = answer_dialogue(s)
    assert a.verdict == "yes" and "0.300 [0.200, 0.400]" in a.text and a.evidence["control_steers"] == "no"
    s.verdicts[1] = verdict(s.policies[2], policy("multi-turn", False, *high))  # the control rises too
    assert answer_dialogue(s).verdict == "inconclusive" and "control rises too" in answer_dialogue(s).text
    s = section(policy("single-turn", True, *high), policy("multi-turn", True, *low), s.policies[2], s.policies[3])
    assert answer_dialogue(s).verdict == "no"  # the single-turn policy mentions it more, CIs apart
    s = section(policy("single-turn", True, *low), replace(policy("multi-turn", True, *high), kl=Estimate(5.0, (5, 5), 9)),
                policy("single-turn", False, *low), policy("multi-turn", False, *low))
    a = answer_dialogue(s)
    assert a.verdict == "inconclusive" and "the KLs are 2.00 nats apart" in a.text  # not a comparison


def test_kl_options_override_the_preset():
    from rewardlab.stages.dialogue import Config, _kl_budget, _ppo_config

    assert _ppo_config(Config(preset="tiny")).kl_target == 4.0
    ppo = _ppo_config(Config(preset="tiny", kl_target=3.0, kl_coef=0.1))
    assert (ppo.kl_target, ppo.kl_coef, ppo.phases) == (3.0, 0.1, 60)
    assert (_kl_budget(Config(preset="tiny")), _kl_budget(Config(preset="tiny", kl_budget=2.5))) == (4.0, 2.5)
    with pytest.raises(InputError, match="kl_budget must be above 0"):
        Config(kl_budget=0.0).validate()
