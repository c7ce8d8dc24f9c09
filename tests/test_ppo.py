"""PPO: masked statistics, the ratio check, a short training run, checkpoint/resume, value head IO."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.errors import InputError
from rewardlab.io import load_tensors, read_json, read_jsonl, write_jsonl
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.ppo import masked_mean, masked_var, masked_whiten, train_ppo
from rewardlab.rl.value_head import ValueHead, load_value_head

WORDS = ["the", "movie", "film", "was", "is", "good", "great", "bad", "awful", "plot", "and", "boring",
         "fun", "acting", "a", "very", "."]


def make_tiny_lm(folder, seed: int = 0, n_embd: int = 32) -> str:
    """A random 2-layer GPT-2 with the world's word-level tokenizer, saved as a Hugging Face folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rewardlab.world.tokenizer import build_tokenizer

    tok = build_tokenizer(WORDS)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=n_embd, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_prompts(path) -> str:
    write_jsonl(path, [{"prompt": p} for p in ["the movie was", "the plot is", "a film", "the acting was very"]])
    return str(path)


def tiny_config(tmp_path, **kw) -> PPOConfig:
    base = make_tiny_lm(tmp_path / "base")
    defaults = dict(base=base, prompts=make_prompts(tmp_path / "prompts.jsonl"), phases=2, batch_size=8,
                    minibatch_size=4, ppo_epochs=2, max_new_tokens=6, eval_samples=16, lr=1e-3, threads=None)
    defaults.update(kw)
    return PPOConfig(**defaults)


def test_masked_mean_var_whiten_ignore_pads():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    real = x[mask.bool()]
    assert math.isclose(float(masked_mean(x, mask)), float(real.mean()), rel_tol=1e-6)
    assert math.isclose(float(masked_var(x, mask)), float(real.var(unbiased=True)), rel_tol=1e-5)
    assert math.isclose(float(masked_var(x, mask, unbiased=False)), float(real.var(unbiased=False)), rel_tol=1e-5)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.stack([x[i, mask[i].bool()].mean() for i in range(3)]))
    # pads hold garbage: changing them changes nothing
    y = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    w = masked_whiten(y, mask)
    torch.testing.assert_close(w, masked_whiten(x, mask))
    assert (w[~mask.bool()] == 0).all()
    ref = (real - real.mean()) / real.std()
    torch.testing.assert_close(w[mask.bool()], ref, atol=1e-5, rtol=1e-5)


def test_value_head_roundtrip(tmp_path):
    for kind in ("linear", "mlp"):
        head = ValueHead(8, kind, "blocks.1.hook_resid_post")
        head.save(tmp_path / kind)
        loaded = load_value_head(tmp_path / kind)
        _, meta = load_tensors(tmp_path / kind / "value_head.safetensors")
        assert meta == {"site": "blocks.1.hook_resid_post", "kind": kind, "d_model": 8}
        h = torch.randn(2, 3, 8)
        torch.testing.assert_close(loaded(h), head(h))


def test_ppo_runs_and_writes_outputs(tmp_path):
    cfg = tiny_config(tmp_path, value_head="linear", value_site="blocks.0.hook_resid_post")
    summary = train_ppo(cfg, tmp_path / "out")
    out = tmp_path / "out"
    for name in ("policy/config.json", "policy/model.safetensors", "value_head.safetensors", "config.json",
                 "metrics.jsonl", "samples.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists() and not (out / "adapter").exists()  # removed once finished; no LoRA
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["phase"] for m in metrics] == [0, 1]
    for m in metrics:
        assert m["first_ratio_max_dev"] <= 1e-4  # sampling and scoring agree
        for key in ("reward_mean", "reward_std", "kl_exact", "entropy", "clipfrac", "approx_kl",
                    "value_explained_variance", "grad_norm", "samples_per_s", "tokens_per_s",
                    "gen_seconds", "learn_seconds"):
            assert math.isfinite(m[key]), key
    assert metrics[0]["kl_exact"] < 1e-5  # the first phase samples from the reference itself
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted({s["phase"] for s in samples}) == [0, 1]  # history kept, not overwritten
    for key in ("reward_base", "reward_base_std", "reward_policy", "kl_exact", "seconds"):
        assert math.isfinite(summary[key]), key
    assert read_json(out / "summary.json")["reward_policy"] == summary["reward_policy"]
    assert load_value_head(out).site == "blocks.0.hook_resid_post"


def test_rollout_is_the_sampling_loop(tmp_path, monkeypatch):
    """PPO's rollout runs `sampling.sample_tokens` (the same tokens as `sampling.generate` from the same
    seed), and the loop's log-probs of its samples equal PPO's scoring of them by a full forward pass."""
    from rewardlab import sampling
    from rewardlab.rl import rollout as rollout_module
    from rewardlab.rl.inputs import load_policy_and_tokenizer
    from rewardlab.rl.rollout import completion_logprobs_from_logits, position_ids, rollout
    from rewardlab.text import encode_prompts

    model, tok = load_policy_and_tokenizer(make_tiny_lm(tmp_path / "lm"))
    prompts = ["the movie was", "a film", "the acting was very", "the plot is"] * 2
    ids, mask, _ = encode_prompts(tok, prompts, "cpu")
    settings = dict(max_new_tokens=8, temperature=0.9, top_k=8, top_p=0.95)
    calls = []
    monkeypatch.setattr(rollout_module, "sample_tokens",
                        lambda *a, **kw: calls.append(kw) or sampling.sample_tokens(*a, **kw))
    ro = rollout(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 generator=torch.Generator().manual_seed(0), **settings)
    assert len(calls) == 1

    decoded = sampling.sample_tokens(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                     generator=torch.Generator().manual_seed(0), return_logprobs=True, **settings)
    T = decoded.tokens.shape[1]
    assert torch.equal(ro.completion_ids[:, :T], decoded.tokens) and torch.equal(ro.mask[:, :T], decoded.mask)
    assert (ro.mask[:, T:] == 0).all()
    logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                   position_ids=position_ids(ro.attention_mask)).logits
    scored, _ = completion_logprobs_from_logits(logits, ro.completion_ids, ids.shape[1], **{
        k: settings[k] for k in ("temperature", "top_k", "top_p")})
    real = decoded.mask.bool()
    torch.testing.assert_close(scored[:, :T][real], decoded.logprobs[real], atol=1e-5, rtol=1e-5)

    samples = sampling.generate(model, tok, prompts, generator=torch.Generator().manual_seed(0), **settings)
    assert [s.completion_ids for s in samples] == [row[m.bool()].tolist() for row, m in zip(ro.completion_ids, ro.mask)]


def test_recorded_rollout_scores_as_a_full_forward_pass(tmp_path):
    """The decoding loop's recorded log-probs and value-site activations equal a full forward pass over
    the sampled sequences at every real token, so PPO scores a recorded rollout as it scores one by a
    second pass (old log-probs, values, KL, advantages), and recording changes no sampled token."""
    from rewardlab.rl.inputs import load_policy_and_tokenizer
    from rewardlab.rl.ppo import PolicyWithValue, score_rollout
    from rewardlab.rl.rollout import completion_logprobs_from_logits, position_ids, rollout
    from rewardlab.sites import capture
    from rewardlab.text import encode_prompts

    model, tok = load_policy_and_tokenizer(make_tiny_lm(tmp_path / "lm"))
    ref, _ = load_policy_and_tokenizer(make_tiny_lm(tmp_path / "ref", seed=1))
    site = "blocks.1.hook_resid_post"
    policy = PolicyWithValue(model, ValueHead(32, "mlp", site))
    prompts = ["the movie was", "a film", "the acting was very", "the plot is"] * 2
    ids, mask, _ = encode_prompts(tok, prompts, "cpu")
    settings = dict(max_new_tokens=8, temperature=0.9, top_k=8, top_p=0.95)
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, **settings)
    recorded = rollout(model, ids, mask, generator=torch.Generator().manual_seed(0), record_site=site, **kw)
    plain = rollout(model, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert plain.logp_all is None and plain.site_acts is None
    assert torch.equal(recorded.completion_ids, plain.completion_ids) and torch.equal(recorded.mask, plain.mask)
    assert recorded.logp_all.shape == (8, 8, len(tok)) and recorded.site_acts.shape == (8, 8, 32)

    with torch.no_grad(), capture(model, site) as acts:
        logits = model(input_ids=plain.input_ids, attention_mask=plain.attention_mask,
                       position_ids=position_ids(plain.attention_mask)).logits
    _, full = completion_logprobs_from_logits(logits, plain.completion_ids, ids.shape[1], **{
        k: settings[k] for k in ("temperature", "top_k", "top_p")})
    real = plain.mask.bool()
    assert torch.equal(torch.isfinite(recorded.logp_all[real]), torch.isfinite(full[real]))  # the same support
    finite = torch.isfinite(full[real])
    torch.testing.assert_close(recorded.logp_all[real][finite], full[real][finite], atol=1e-5, rtol=1e-5)
    P = ids.shape[1]
    torch.testing.assert_close(recorded.site_acts[real], acts[site][:, P - 1:P - 1 + 8][real], atol=1e-5, rtol=1e-5)

    cfg = PPOConfig(base="unused", prompts="unused", top_k=8, top_p=0.95, temperature=0.9, kl_estimator="k3")
    scores = torch.linspace(-1, 1, 8)
    a, b = score_rollout(policy, ref, recorded, scores, cfg, 0.3), score_rollout(policy, ref, plain, scores, cfg, 0.3)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        torch.testing.assert_close(x[real] if x.ndim == 2 else x, y[real] if y.ndim == 2 else y, atol=1e-5, rtol=1e-4)


def test_learning_prepares_a_sparse_backward_for_a_tied_embedding_only(tmp_path):
    """`prepare_for_learning` makes a tied, trainable input embedding's backward sparse: the tied weight's
    gradient stays dense and equals the dense backward's; an untied embedding (whose gradient would then
    be sparse, which Adam refuses) and a frozen one are left as they are. The optimizer is fused on CPU."""
    from accelerate import Accelerator
    from transformers import GPT2LMHeadModel

    from rewardlab.rl.inputs import load_policy_and_tokenizer
    from rewardlab.rl.ppo import policy_with_value, prepare_for_learning

    cfg = PPOConfig(base="unused", prompts="unused")
    policy, tok = load_policy_and_tokenizer(make_tiny_lm(tmp_path / "lm"))
    model, optimizer = policy_with_value(policy, cfg, "cpu")
    assert optimizer.defaults["fused"]
    ids = torch.tensor([[3, 4, 5, 6, 7, 3], [8, 9, 3, 4, 10, 11]])
    mask = torch.ones_like(ids)

    def tied_gradient() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        logits, values = model(ids, mask, 3)
        (logits.log_softmax(-1)[..., 5].sum() + values.sum()).backward()
        return policy.get_output_embeddings().weight.grad

    dense = tied_gradient().clone()
    assert not policy.get_input_embeddings().sparse
    model, optimizer = prepare_for_learning(Accelerator(cpu=True), model, optimizer)
    assert policy.get_input_embeddings().sparse
    sparse = tied_gradient()
    assert sparse.layout == torch.strided and policy.get_input_embeddings().weight.grad is sparse
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-6)

    config = GPT2LMHeadModel.from_pretrained(make_tiny_lm(tmp_path / "untied")).config
    config.tie_word_embeddings = False
    untied = GPT2LMHeadModel(config)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    prepare_for_learning(Accelerator(cpu=True), *policy_with_value(untied, cfg, "cpu"))
    assert not untied.get_input_embeddings().sparse
    frozen, _ = load_policy_and_tokenizer(make_tiny_lm(tmp_path / "frozen"))
    frozen.requires_grad_(False)
    prepare_for_learning(Accelerator(cpu=True), *policy_with_value(frozen, cfg, "cpu"))
    assert not frozen.get_input_embeddings().sparse


@pytest.mark.parametrize("estimator,kl_in,target,top_k", [("k3", "loss", None, 8), ("exact", "reward", 4.0, 8),
                                                           ("exact_reverse", "loss", None, 0)])
def test_ppo_kl_variants_run(tmp_path, estimator, kl_in, target, top_k):
    cfg = tiny_config(tmp_path, phases=1, kl_estimator=estimator, kl_in=kl_in, kl_target=target, eval_samples=4,
                      top_k=top_k, temperature=0.9)
    train_ppo(cfg, tmp_path / "out")
    (m,) = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert m["first_ratio_max_dev"] <= 1e-4 and math.isfinite(m[f"kl_{estimator}"])


def test_resume_matches_uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path, phases=3)
    full = train_ppo(cfg, tmp_path / "full")
    # "interrupted" after phase 1: the checkpoint kept as an unfinished run keeps it
    train_ppo(dataclasses.replace(cfg, phases=1, keep_checkpoint=True), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint" / "state.json").is_file()
    resumed = train_ppo(dataclasses.replace(cfg, keep_checkpoint=True), tmp_path / "resumed")
    a = load_file(tmp_path / "full" / "policy" / "model.safetensors")  # Hugging Face files
    b = load_file(tmp_path / "resumed" / "policy" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / "full" / "checkpoint").exists()  # removed once the run finished (the default)
    ckpt, _ = load_tensors(tmp_path / "resumed" / "checkpoint" / "model.safetensors")  # kept when asked
    assert read_json(tmp_path / "resumed" / "checkpoint" / "state.json")["phase"] == 3
    assert any(k.startswith("value_head.") for k in ckpt) and any(k.startswith("policy.") for k in ckpt)
    assert full["reward_policy"] == resumed["reward_policy"]
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in rows]
    assert strip(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))


def test_tail_average_is_the_uniform_mean_of_the_weights_from_its_start_phase():
    from rewardlab.rl.ppo import TailAverage

    w = torch.nn.Parameter(torch.zeros(3))
    average = TailAverage([w], start=2)
    seen = []
    for phase in range(5):
        with torch.no_grad():
            w.copy_(torch.randn(3))
        seen.append(w.detach().clone())
        average.update(phase)
    assert average.n == 3
    average.apply()
    torch.testing.assert_close(w.detach(), torch.stack(seen[2:]).mean(0), atol=1e-6, rtol=0)
    off = TailAverage([w], start=None)
    before = w.detach().clone()
    for phase in range(3):
        off.update(phase)
    off.apply()
    assert off.n == 0 and torch.equal(w.detach(), before)


def test_the_run_policy_is_the_mean_of_the_second_halfs_weights(tmp_path):
    """A 4-phase run with average_from 0.5 saves the mean of the weights after phases 2 and 3 (0-based), which
    are the policies of runs of 3 and 4 phases without averaging (a run's first phases do not depend on its
    length)."""
    cfg = tiny_config(tmp_path, phases=4, eval_samples=4)
    averaged = train_ppo(dataclasses.replace(cfg, average_from=0.5), tmp_path / "averaged")
    assert averaged["phases_averaged"] == 2
    for phases in (3, 4):  # last: the last phase's weights, no averaging
        off = dataclasses.replace(cfg, phases=phases, average_from="last")
        assert train_ppo(off, tmp_path / f"off-{phases}")["phases_averaged"] == 0
    mean = load_file(tmp_path / "averaged" / "policy" / "model.safetensors")
    w2 = load_file(tmp_path / "off-3" / "policy" / "model.safetensors")
    w3 = load_file(tmp_path / "off-4" / "policy" / "model.safetensors")
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # the two phases' weights differ
    for k in mean:
        torch.testing.assert_close(mean[k], (w2[k] + w3[k]) / 2, atol=1e-6, rtol=0)


def test_resume_continues_the_weights_mean(tmp_path):
    # average_from 0.34 starts at phase 1 for 3 phases and for 4: a 3-phase run resumed to 4 keeps its mean
    cfg = tiny_config(tmp_path, phases=4, eval_samples=4, average_from=0.34)
    full = train_ppo(cfg, tmp_path / "full")
    train_ppo(dataclasses.replace(cfg, phases=3, keep_checkpoint=True), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint" / "average.safetensors").is_file()
    resumed = train_ppo(cfg, tmp_path / "resumed")
    assert full["phases_averaged"] == resumed["phases_averaged"] == 3
    a = load_file(tmp_path / "full" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "policy" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_accepts_a_checkpoint_written_before_a_setting_existed(tmp_path):
    cfg = tiny_config(tmp_path, phases=1, eval_samples=4, keep_checkpoint=True)
    train_ppo(cfg, tmp_path / "out")
    state_path = tmp_path / "out" / "checkpoint" / "state.json"
    state = read_json(state_path)
    del state["config"]["average_from"]  # as written before average_from existed: that code did not average
    state_path.write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"different config \(average_from\)"):  # today's default, auto, averages
        train_ppo(dataclasses.replace(cfg, phases=2), tmp_path / "out")
    assert train_ppo(dataclasses.replace(cfg, phases=2, average_from="last"), tmp_path / "out")["phases"] == 2
    assert [m["phase"] for m in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [0, 1]  # resumed
    state["config"]["average_from"] = None  # the next version wrote no averaging as None
    state_path.write_text(json.dumps(state))
    assert train_ppo(dataclasses.replace(cfg, phases=3, average_from="last"), tmp_path / "out")["phases"] == 3


def test_average_from_auto_averages_small_models_only_and_records_the_choice(tmp_path, capsys):
    from rewardlab.rl.config import AUTO_AVERAGE_FROM_SMALL, SMALL_MODEL_PARAMS, auto_average_from

    assert PPOConfig().average_from == "auto"
    assert auto_average_from(SMALL_MODEL_PARAMS - 1)[0] == AUTO_AVERAGE_FROM_SMALL == 0.5
    assert auto_average_from(134_515_008) == (None, "134.5M parameters: the last phase's weights "
                                                    "(averaging is not measured at this size)")
    summary = train_ppo(tiny_config(tmp_path, phases=4, eval_samples=4), tmp_path / "auto")
    assert summary["phases_averaged"] == 2 and summary["average_from"] == 0.5
    assert summary["average_from_source"].startswith("average_from auto: 0.0M parameters, under 50M")
    assert "PPO policy saved: the mean of the weights from 0.5 of the phases on (average_from auto: " \
        in capsys.readouterr().err
    off = train_ppo(tiny_config(tmp_path, phases=4, eval_samples=4, average_from="last"), tmp_path / "off")
    assert (off["phases_averaged"], off["average_from"], off["average_from_source"]) == (0, None, "set in the config")
    with pytest.raises(InputError, match="average_from must be in \\[0, 1\\), auto or last, got 'never'"):
        PPOConfig(base="b", average_from="never").validate()


def test_resume_refuses_other_config(tmp_path):
    from rewardlab.errors import InputError

    cfg = tiny_config(tmp_path, phases=1, eval_samples=4, keep_checkpoint=True)
    train_ppo(cfg, tmp_path / "out")
    with pytest.raises(InputError, match="different config"):
        train_ppo(dataclasses.replace(cfg, lr=5e-4), tmp_path / "out")


def test_resume_accepts_the_same_files_named_relatively(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, phases=1, eval_samples=4, keep_checkpoint=True)
    train_ppo(cfg, tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    relative = dataclasses.replace(cfg, phases=2, prompts="prompts.jsonl", base=str(Path(cfg.base).relative_to(tmp_path)))
    assert train_ppo(relative, tmp_path / "out")["phases"] == 2
    assert [m["phase"] for m in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [0, 1]  # resumed


def test_a_step_size_that_wrecks_the_policy_is_reported_loudly(tmp_path, capsys):
    from rewardlab.rl.ppo import STEP_SIZE_LIMITS, step_size_warning

    summary = train_ppo(tiny_config(tmp_path, phases=2, eval_samples=4, lr=0.5), tmp_path / "out")
    rows = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    over = [r["phase"] for r in rows if r["approx_kl"] > STEP_SIZE_LIMITS["approx_kl"]
            or r["clipfrac"] > STEP_SIZE_LIMITS["clipfrac"]]
    assert over and summary["phases_over_step_size_limits"] == over
    assert "lower --lr (now 0.5)" in capsys.readouterr().err
    calm = {"phase": 0, "approx_kl": 0.008, "clipfrac": 0.05}  # the tuned review world's values
    assert step_size_warning(calm, tiny_config(tmp_path)) is None


def test_nan_reward_is_input_error(tmp_path, monkeypatch):
    from rewardlab import rewards
    from rewardlab.errors import InputError

    class NaNReward(rewards.Reward):
        name = "nan"

        def _score(self, texts):
            return [float("nan")] * len(texts)

    monkeypatch.setattr(rewards, "get_reward", lambda spec, device=None: NaNReward())
    with pytest.raises(InputError, match="returned nan for text"):
        train_ppo(tiny_config(tmp_path, phases=1), tmp_path / "out")


def test_kl_sweep_writes_frontier(tmp_path):
    from rewardlab.rl.sweep import sweep_kl
    from rewardlab.stages.sweep import save_frontier

    cfg = tiny_config(tmp_path, phases=1, eval_samples=4)
    table = sweep_kl(cfg, [0.0, 0.5], tmp_path / "sweep")
    rows = read_jsonl(tmp_path / "sweep" / "frontier.jsonl")
    assert [r["kl_coef"] for r in rows] == [0.0, 0.5]
    for r in rows:
        s = read_json(tmp_path / "sweep" / f"kl_{r['kl_coef']:g}" / "summary.json")
        assert r["kl_exact"] == s["kl_exact"] and r["reward_policy"] == s["reward_policy"]
    assert table.count("\n") == 3
    section = save_frontier(tmp_path / "sweep")  # as the sweep stage and `train sweep` do
    assert [p.kl_exact for p in section.points] == [r["kl_exact"] for r in rows]
    assert section.optimum == [] and not (tmp_path / "sweep" / "optimum.jsonl").exists()  # optimum_prompts 0: none
    assert (tmp_path / "sweep" / "frontier.png").stat().st_size > 1000


def test_kl_sweep_draws_the_rewards_kl_optimal_curve(tmp_path):
    from rewardlab.rl.sweep import OPTIMUM_BETAS, sweep_kl
    from rewardlab.stages.sweep import save_frontier

    cfg = tiny_config(tmp_path, phases=1, eval_samples=4)
    sweep_kl(cfg, [0.0, 0.5], tmp_path / "sweep", optimum_prompts=3, optimum_samples=16)
    section = save_frontier(tmp_path / "sweep")
    assert [o.beta for o in section.optimum] == sorted(set(OPTIMUM_BETAS) | {0.5})  # kl_coef 0 has no optimum
    kls = [o.kl.value for o in section.optimum]
    tilted = [o.reward.value for o in section.optimum]
    # a larger beta tilts less: both the KL and the tilted mean reward fall (weakly) as beta grows
    assert all(a >= b - 1e-12 for a, b in zip(kls, kls[1:])) and all(a >= b - 1e-12 for a, b in zip(tilted, tilted[1:]))
    assert all(0 <= k <= math.log(16) for k in kls) and all(1 <= o.ess <= 16 for o in section.optimum)
    assert all(o.kl.n == 3 and o.kl.ci[0] <= o.kl.value <= o.kl.ci[1] for o in section.optimum)
    assert all(o.grammatical is None for o in section.optimum)  # not a review world's model
    with pytest.raises(InputError, match="optimum_samples must be at least 2"):
        sweep_kl(cfg, [0.5], tmp_path / "bad", optimum_prompts=3, optimum_samples=1)


def test_kl_sweep_runs_in_parallel_processes_give_the_same_numbers(tmp_path):
    from rewardlab.rl.sweep import sweep_kl

    cfg = tiny_config(tmp_path, phases=2, eval_samples=4, threads=1)
    timing = {"seconds", "train_seconds", "gen_seconds", "learn_seconds", "tokens_per_s", "samples_per_s"}

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    sweep_kl(cfg, [0.0, 0.5, 2.0], tmp_path / "one")
    sweep_kl(cfg, [0.0, 0.5, 2.0], tmp_path / "par", parallel_runs=2)
    assert untimed(read_jsonl(tmp_path / "one" / "frontier.jsonl")) == \
        untimed(read_jsonl(tmp_path / "par" / "frontier.jsonl"))
    for coef in ("0", "0.5", "2"):
        assert untimed(read_jsonl(tmp_path / "one" / f"kl_{coef}" / "metrics.jsonl")) == \
            untimed(read_jsonl(tmp_path / "par" / f"kl_{coef}" / "metrics.jsonl"))
        assert (tmp_path / "par" / f"kl_{coef}.log").is_file()
    # a run that refuses its input in its own process is the same one clear error here
    bad = dataclasses.replace(cfg, prompts=str(tmp_path / "empty.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError) as in_process:
        sweep_kl(bad, [0.0, 0.5], tmp_path / "bad-one")
    with pytest.raises(InputError) as in_worker:
        sweep_kl(bad, [0.0, 0.5], tmp_path / "bad-par", parallel_runs=2)
    assert str(in_worker.value) == str(in_process.value)
    with pytest.raises(InputError, match="repeat one"):
        sweep_kl(cfg, [0.1, 0.1], tmp_path / "dup")


def test_checkpoints_come_by_time_after_the_last_phase_and_every_n_phases_when_set():
    from types import SimpleNamespace

    from rewardlab.rl.ppo import checkpoint_due

    one = SimpleNamespace(num_processes=1)
    cfg = PPOConfig(base="x", phases=10)  # defaults: by time only, every 10 minutes
    assert cfg.checkpoint_every is None and cfg.checkpoint_minutes == 10.0
    assert not checkpoint_due(cfg, 3, seconds_since=599.0, accelerator=one)
    assert checkpoint_due(cfg, 3, seconds_since=600.0, accelerator=one)
    assert checkpoint_due(cfg, 9, seconds_since=0.0, accelerator=one)  # the last phase always
    every = dataclasses.replace(cfg, checkpoint_every=4)
    assert [p for p in range(10) if checkpoint_due(every, p, 0.0, one)] == [3, 7, 9]
    assert [p for p in range(10) if checkpoint_due(dataclasses.replace(cfg, checkpoint_minutes=0), p, 0.0, one)] \
        == list(range(10))


def test_lr_auto_picks_by_size_and_lora_and_records_the_rate(tmp_path, capsys):
    from rewardlab.rl.config import (AUTO_LR_FULL, AUTO_LR_LORA, AUTO_LR_SMALL, SMALL_MODEL_PARAMS, auto_lr)

    assert PPOConfig().lr == "auto"
    small = SMALL_MODEL_PARAMS - 1
    assert auto_lr(small, lora=False)[0] == auto_lr(small, lora=True)[0] == AUTO_LR_SMALL == 3e-4
    smollm2 = 134_515_008  # SmolLM2-135M's parameters (embeddings tied)
    assert auto_lr(smollm2, lora=True) == (AUTO_LR_LORA, "134.5M parameters, LoRA adapter")
    assert auto_lr(smollm2, lora=False)[0] == AUTO_LR_FULL < AUTO_LR_LORA

    summary = train_ppo(tiny_config(tmp_path, phases=1, eval_samples=4, lr="auto"), tmp_path / "auto")
    assert summary["lr"] == AUTO_LR_SMALL and summary["lr_source"].startswith("lr auto: 0.0M parameters")
    assert [r["lr"] for r in read_jsonl(tmp_path / "auto" / "metrics.jsonl")] == [AUTO_LR_SMALL]
    assert "PPO policy learning rate 0.0003 (lr auto: " in capsys.readouterr().err
    assert read_json(tmp_path / "auto" / "config.json")["lr"] == "auto"
    summary = train_ppo(tiny_config(tmp_path, phases=1, eval_samples=4, lr=2e-3), tmp_path / "set")
    assert (summary["lr"], summary["lr_source"]) == (2e-3, "set in the config")
    with pytest.raises(InputError, match="lr must be above 0 or auto"):
        PPOConfig(base="b", lr=0.0).validate()

