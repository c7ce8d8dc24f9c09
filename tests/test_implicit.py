import pytest
import torch

from rewardlab.diff.implicit import ScoreConfig, implicit_reward_records, implicit_rewards
from rewardlab.diff.logprobs import completion_logprobs, reduce_logprobs
from rewardlab.errors import InputError
from rewardlab.text import encode, set_chat_template
from tiny_lm import COMPLETIONS, PROMPTS, tiny_pair


def _reference_logprobs(model, tokenizer, prompt, completion):
    """One sequence, no padding, float64 log-softmax: the ground truth."""
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return torch.stack([logp[len(p) - 1 + t, tok] for t, tok in enumerate(c)])


def test_completion_logprobs_batched_equals_one_at_a_time_and_reference():
    base, post, tok = tiny_pair()
    batched = completion_logprobs(post, tok, PROMPTS, COMPLETIONS, batch_size=4)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        single = completion_logprobs(post, tok, [p], [c], batch_size=1)[0]
        assert len(batched[i]) == len(tok(c, add_special_tokens=False)["input_ids"])
        assert torch.allclose(batched[i], single, atol=1e-5)
        assert torch.allclose(batched[i].double(), _reference_logprobs(post, tok, p, c), atol=1e-5)
        assert batched[i].dtype == torch.float32


def test_implicit_reward_is_beta_times_log_ratio_and_zero_for_identical_models():
    base, post, tok = tiny_pair()
    rows = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS, ScoreConfig(beta=0.1, batch_size=3, per_token=True))
    for row, p, c in zip(rows, PROMPTS, COMPLETIONS):
        ratio = _reference_logprobs(post, tok, p, c) - _reference_logprobs(base, tok, p, c)
        assert row["implicit_reward"] == pytest.approx(0.1 * float(ratio.sum()), abs=1e-5)
        assert row["implicit_reward_mean"] == pytest.approx(0.1 * float(ratio.mean()), abs=1e-5)
        assert row["log_ratio"] == pytest.approx(ratio.tolist(), abs=1e-5)
        assert row["n_tokens"] == len(ratio)
    same = implicit_rewards(base, base, tok, PROMPTS, COMPLETIONS)
    assert all(r["implicit_reward"] == 0.0 for r in same)


def test_implicit_reward_records_hold_reference_and_rewards():
    from rewardlab.rewards import get_reward

    base, post, tok = tiny_pair()
    records = [{"prompt": p, "completion": c, "id": i} for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS))]
    rows = implicit_reward_records(base, post, tok, records, reward=get_reward("utility"), base_name="B", post_name="P")
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["ref_model"] == "B" and rows[0]["model"] == "P" and rows[0]["chat_template"] is None
    assert rows[0]["reward"] == pytest.approx(get_reward("utility")([COMPLETIONS[0]])[0])


def test_reference_free_reductions_and_errors():
    logp = torch.tensor([-1.0, -2.0, -2.0])
    assert reduce_logprobs(logp, "sum") == -5.0
    assert reduce_logprobs(logp, "mean") == pytest.approx(-5 / 3)
    assert reduce_logprobs(logp, "norm") == pytest.approx(-3.0)
    with pytest.raises(InputError):
        reduce_logprobs(logp, "max")
    _, _, tok = tiny_pair()
    with pytest.raises(InputError, match="no tokens"):
        encode(tok, [""], ["great"])
    with pytest.raises(InputError, match="at most 64"):
        completion_logprobs(tiny_pair()[1], tok, ["review :"], [" good" * 70])
    with pytest.raises(InputError, match="no chat template"):
        set_chat_template(tok, "on")


# TRL (the peer) still sets and reads transformers' renamed gradient_checkpointing fields itself
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*deprecated:FutureWarning")
def test_equals_trl_dpo_logprobs(tmp_path):
    """Sequence log-probs equal TRL DPOTrainer's for the same models and pairs (policy and reference)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    base, post, tok = tiny_pair()
    rejected = [" bad .", " the plot", " is awful", " quite good ."]
    rows = {"prompt": PROMPTS, "chosen": COMPLETIONS, "rejected": rejected}
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, max_length=None, disable_tqdm=True, bf16=False)
    trainer = DPOTrainer(model=post, ref_model=base, args=args, train_dataset=Dataset.from_dict(rows),
                         processing_class=tok)
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    eos = tok.eos_token  # TRL appends EOS to non-conversational completions
    for model in (base, post):
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(model, batch)
        ours_chosen = completion_logprobs(model, tok, PROMPTS, [c + eos for c in COMPLETIONS], batch_size=3)
        ours_rejected = completion_logprobs(model, tok, PROMPTS, [r + eos for r in rejected], batch_size=3)
        assert torch.allclose(torch.stack([x.sum() for x in ours_chosen]), trl_chosen, atol=1e-5)
        assert torch.allclose(torch.stack([x.sum() for x in ours_rejected]), trl_rejected, atol=1e-5)
    # under append_eos always, the implicit reward is TRL's DPO reward beta * (logp_post - logp_ref)
    trl_post, trl_ref = trainer.compute_ref_log_probs(post, batch)[0], trainer.compute_ref_log_probs(base, batch)[0]
    ours = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS, ScoreConfig(beta=0.1, append_eos="always"))
    expected = (0.1 * (trl_post - trl_ref)).tolist()
    assert [r["implicit_reward"] for r in ours] == pytest.approx(expected, abs=1e-5)
    as_given = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS, ScoreConfig(beta=0.1))
    assert max(abs(a["implicit_reward"] - b) for a, b in zip(as_given, expected)) > 1e-4  # the EOS term matters


def test_append_eos_finished_follows_each_record(tmp_path):
    base, post, tok = tiny_pair()
    finished = [True, False, True, False]
    cfg = ScoreConfig(append_eos="finished")
    rows = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS, cfg, finished=finished)
    always = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS, ScoreConfig(append_eos="always"))
    never = implicit_rewards(base, post, tok, PROMPTS, COMPLETIONS)
    for row, flag, a, n in zip(rows, finished, always, never):
        assert row == (a if flag else n)
    records = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]
    with pytest.raises(InputError, match="record 0"):
        implicit_reward_records(base, post, tok, records, cfg)


def test_score_cli(tmp_path):
    import json

    from rewardlab.cli import main
    from tiny_lm import save_pair, write_records

    base, post = save_pair(tmp_path)
    records = write_records(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    assert main(["score", "--base", base, "--post", post, "--in", records, "--out", str(out), "--beta", "0.1",
                 "--reward", "utility", "--per-token"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    _, post_model, tok = tiny_pair()
    base_model = tiny_pair()[0]
    expected = implicit_rewards(base_model, post_model, tok, PROMPTS, COMPLETIONS, ScoreConfig(beta=0.1))
    assert [r["implicit_reward"] for r in rows] == pytest.approx([e["implicit_reward"] for e in expected], abs=1e-5)
    assert rows[0]["ref_model"] == "base" and "reward" in rows[0] and len(rows[0]["log_ratio"]) == rows[0]["n_tokens"]
    assert main(["score", "--base", base, "--post", str(tmp_path / "nope"), "--in", records, "--out", str(out)]) == 2


def test_chat_template_is_applied_once_and_recorded():
    base, post, tok = tiny_pair()
    tok.chat_template = "{% for m in messages %}<s> review : {{ m['content'] }}{% endfor %}"
    set_chat_template(tok, "on")
    enc = encode(tok, ["the film was"], [" good ."])[0]
    assert tok.convert_ids_to_tokens(enc.ids) == ["<s>", "review", ":", "the", "film", "was", "good", "."]
    assert enc.prompt_len == 6
    rows = implicit_reward_records(base, post, tok, [{"prompt": "the film was", "completion": " good ."}],
                                   ScoreConfig())
    assert rows[0]["chat_template"] == tok.chat_template
