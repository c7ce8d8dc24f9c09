"""Chat templates: one auto | on | off setting carried by the tokenizer, applied by the one prompt encoder
(`rewardlab.text.prompt_token_ids`) that every command goes through; BOS never doubled or dropped;
generation stops at the template's end-of-turn token; prompts given as messages."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rewardlab import text
from rewardlab.errors import InputError
from rewardlab.io import read_jsonl
from rewardlab.sampling import generate
from rewardlab.text import (conversation_prompt, encode, encode_prompts, messages_of, prompt_token_ids,
                            set_chat_template, stop_ids, uses_chat_template)

WORDS = ["the", "movie", "was", "good", "bad", "great", "plot", ".", "be", "brief", "<|user|>", "<|assistant|>",
         "<|system|>", "<|end|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def chat_tokenizer(template: str | None = TEMPLATE):
    """The review world's word-level tokenizer (it puts <bos> before plain text) with role and
    end-of-turn special tokens and, unless None, a chat template."""
    from rewardlab.world.tokenizer import build_tokenizer

    tok = build_tokenizer(WORDS)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]})
    tok.chat_template = template
    return tok


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_the_template_is_rendered_with_exactly_one_bos():
    tok = chat_tokenizer()
    assert uses_chat_template(tok)  # auto, nobody set it
    # the template has no BOS, the tokenizer puts one before text: added once
    assert tokens(tok, prompt_token_ids(tok, ["the movie"])[0]) == ["<bos>", "<|user|>", "the", "movie", "<|end|>",
                                                                    "<|assistant|>"]
    # the template writes its own BOS: not doubled
    tok = chat_tokenizer("{{ bos_token }}" + TEMPLATE)
    assert tokens(tok, prompt_token_ids(tok, ["the movie"])[0]) == ["<bos>", "<|user|>", "the", "movie", "<|end|>",
                                                                    "<|assistant|>"]
    enc = encode(tok, ["the movie"], ["was good ."])[0]
    assert enc.prompt_len == 6 and tokens(tok, enc.ids[6:]) == ["was", "good", "."]


def test_auto_on_off():
    plain = chat_tokenizer(template=None)
    assert not uses_chat_template(set_chat_template(plain, "auto"))
    with pytest.raises(InputError, match="no chat template"):
        set_chat_template(plain, "on")
    with pytest.raises(InputError, match="unknown chat_template"):
        set_chat_template(plain, "yes")
    tok = set_chat_template(chat_tokenizer(), "off")
    assert prompt_token_ids(tok, ["the movie"]) == [tok("the movie")["input_ids"]]  # the plain path, BOS included
    assert stop_ids(tok) == [tok.eos_token_id]
    set_chat_template(tok, "on")
    assert stop_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    ids, mask, _ = encode_prompts(tok, ["the movie", "the plot was great"])
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]  # left-padded, both rendered
    assert tokens(tok, ids[1].tolist())[-2:] == ["<|end|>", "<|assistant|>"]


def test_prompts_given_as_messages():
    tok = chat_tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the plot"}]
    prompt = conversation_prompt(messages)
    assert messages_of(prompt) == messages and messages_of("the plot") is None
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert prompt_token_ids(tok, [prompt])[0] == [tok.bos_token_id] + list(expected["input_ids"])
    with pytest.raises(InputError, match="needs a chat template"):
        prompt_token_ids(set_chat_template(tok, "off"), [prompt])
    with pytest.raises(InputError, match="ends with the assistant"):
        conversation_prompt(messages + [{"role": "assistant", "content": "ok"}])
    with pytest.raises(InputError, match="role"):
        conversation_prompt([{"role": "narrator", "content": "x"}])


def test_prompt_files_may_hold_messages(tmp_path):
    path = tmp_path / "prompts.jsonl"
    user = [{"role": "user", "content": "the plot"}]
    rows = [{"prompt": "the movie"}, {"messages": user},
            {"messages": user + [{"role": "assistant", "content": "was good ."}]},
            {"prompt": user, "completion": [{"role": "assistant", "content": "was bad ."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_jsonl(path, required=("prompt",))
    assert [r["prompt"] for r in read] == ["the movie"] + [conversation_prompt(user)] * 3
    assert [r.get("completion") for r in read] == [None, None, "was good .", "was bad ."]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(InputError, match=r"prompts.jsonl:1"):
        read_jsonl(path, required=("prompt",))


def tiny_chat_model(tok, seed: int = 0):
    from conftest import tiny_config

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tok))).eval()


def test_generation_stops_at_the_end_of_turn_token():
    tok = chat_tokenizer()
    model = tiny_chat_model(tok)
    end = tok.convert_tokens_to_ids("<|end|>")

    def end_of_turn_after_two(logits, state):  # the model says "the the <|end|> the ..." whatever it is fed
        forced = torch.full_like(logits, -1e4)
        forced[:, end if state.step == 2 else tok.convert_tokens_to_ids("the")] = 0.0
        return forced

    kw = dict(max_new_tokens=6, generator=torch.Generator().manual_seed(0), logits_fn=end_of_turn_after_two)
    on = generate(model, set_chat_template(tok, "on"), ["the movie", "the plot"], **kw)
    assert [tokens(tok, s.completion_ids) for s in on] == [["the", "the", "<|end|>"]] * 2
    assert all(s.finished and s.completion == "the the" for s in on)
    off = generate(model, set_chat_template(tok, "off"), ["the movie"], **kw)
    assert len(off[0].completion_ids) == 6 and not off[0].finished  # <|end|> is only a word without the template


@pytest.fixture(scope="module")
def chat_folders(tmp_path_factory):
    """base/ and post/ folders: a tiny Llama with the chat tokenizer, post a perturbed copy; prompts and records."""
    root = tmp_path_factory.mktemp("chat")
    tok = chat_tokenizer()
    for name, seed in (("base", 0), ("post", 1)):
        tiny_chat_model(tok, seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    prompts = ["the movie", "the plot", "the movie was", "the plot was"] * 2
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (root / "records.jsonl").write_text("".join(
        json.dumps({"prompt": p, "completion": c, "reward": float(i),
                    "tone": float("good" in c or "great" in c)}) + "\n"
        for i, (p, c) in enumerate(zip(prompts, ["was good .", "was bad .", "great .", "bad ."] * 2))))
    many = [f"the {a} was {b}" for a in ("movie", "plot") for b in ("good", "bad", "great", "good .", "bad .")]
    (root / "many_records.jsonl").write_text("".join(  # ten prompts: a probe sweep's validation split varies
        json.dumps({"prompt": p, "completion": c, "reward": float(2 * i + j)}) + "\n"
        for i, p in enumerate(many) for j, c in enumerate(["good .", "bad ."])))
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": p, "chosen": "was good .", "rejected": "was bad ."}) + "\n" for p in prompts))
    return root


def _commands(root, out):
    pair = ["--base", str(root / "base"), "--post", str(root / "post")]
    records, prompts = str(root / "records.jsonl"), str(root / "prompts.jsonl")
    many = str(root / "many_records.jsonl")
    return {
        "score": ["score", *pair, "--in", records, "--out", str(out / "score.jsonl")],
        "diff kl": ["diff", "kl", *pair, "--in", records, "--out", str(out / "kl")],
        "sample divergent": ["sample", "divergent", *pair, "--prompts", prompts, "--out", str(out / "div.jsonl"),
                             "--max-new-tokens", "3", "--alphas", "0,1"],
        "acts cache": ["acts", "cache", "--model", str(root / "base"), "--in", records, "--out", str(out / "acts"),
                       "--sites", "blocks.1.hook_resid_post"],
        "data pairs": ["data", "pairs", "--model", str(root / "base"), "--prompts", prompts, "--out",
                       str(out / "pairs.jsonl"), "--n-prompts", "4", "--max-new-tokens", "3"],
        "audit dpo": ["audit", "--rm", f"dpo:{root / 'post'}", "--ref", str(root / "base"), "--pairs",
                      str(root / "pairs.jsonl"), "--out", str(out / "audit")],
        "train dpo": ["train", "dpo", "--base", str(root / "base"), "--pairs", str(root / "pairs.jsonl"),
                      "--prompts", prompts, "--out", str(out / "dpo"), "--epochs", "1", "--batch-size", "4",
                      "--max-new-tokens", "3", "--eval-samples", "4", "--held-out", "0.25"],
        "steer": ["steer", "--model", str(root / "base"), "--direction", "mean-diff", "--site",
                  "blocks.1.hook_resid_post", "--records", records, "--target", "tone", "--prompts", prompts,
                  "--alphas", "0,1", "--n-random", "1", "--max-new-tokens", "3", "--n-boot", "20", "--out", str(out / "steer")],
        "probe sweep": ["probe", "sweep", "--model", str(root / "post"), "--base", str(root / "base"), "--in", many,
                        "--out", str(out / "sweep"), "--sites", "blocks.1.hook_resid_post", "--positions",
                        "last_completion", "--n-boot", "20"],
        "sae train": ["sae", "train", "--model", str(root / "base"), "--in", many, "--site",
                      "blocks.1.hook_resid_post", "--expansion", "1", "--k", "4", "--n-tokens", "256",
                      "--batch-size", "8", "--no-progress", "--out", str(out / "sae")],
        "sae compare": ["sae", "compare", *pair, "--in", many, "--out", str(out / "compare"), "--layers", "1",
                        "--k", "4", "--expansions", "1,2", "--headline-expansion", "1", "--crosscoder-expansion", "1",
                        "--n-top-features", "2", "--n-tokens", "256", "--batch-size", "8"],
        "sae crosscoder": ["sae", "crosscoder", *pair, "--in", many, "--out", str(out / "crosscoder"), "--site",
                           "blocks.1.hook_resid_post", "--k", "4", "--crosscoder-expansion", "1", "--n-tokens", "256",
                           "--batch-size", "8"],
        "sae diffdict": ["sae", "diffdict", *pair, "--in", many, "--out", str(out / "diffdict"), "--site",
                         "blocks.1.hook_resid_post", "--k", "4", "--diffdict-expansion", "1", "--n-tokens", "256",
                         "--batch-size", "8"],
        "train ppo": ["train", "ppo", "--base", str(root / "base"), "--prompts", prompts, "--out", str(out / "ppo"),
                      "--phases", "1", "--batch-size", "4", "--minibatch-size", "4", "--ppo-epochs", "1",
                      "--max-new-tokens", "3", "--eval-samples", "4"],
    }


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_every_command_renders_its_prompts_by_the_setting(chat_folders, tmp_path, monkeypatch, mode):
    """Each command loads its tokenizer with --chat-template and encodes every prompt through
    `format_prompt`: rendered by the template under auto (the tokenizer has one), raw under off."""
    from rewardlab.cli import main

    seen: list[str] = []
    render = text.format_prompt

    def spy(tokenizer, prompt):
        seen.append(render(tokenizer, prompt))
        return seen[-1]

    monkeypatch.setattr(text, "format_prompt", spy)
    for name, argv in _commands(chat_folders, tmp_path).items():
        seen.clear()
        assert main([*argv, "--chat-template", mode]) == 0, name
        assert seen, name
        rendered = [s.startswith("<|user|> ") and s.endswith("<|assistant|> ") for s in seen]
        assert all(rendered) if mode == "auto" else not any(rendered), (name, seen[:2])


def test_the_models_section_sets_every_stage(tmp_path):
    from rewardlab.pipeline import plan_run

    (tmp_path / "p.jsonl").write_text('{"prompt": "the movie"}\n{"prompt": "the plot"}\n')
    models = {"base": "some/model", "prompts": str(tmp_path / "p.jsonl"), "chat_template": "off"}
    plan = plan_run({"models": models, "pairs": {}, "dpo": {}}, tmp_path / "run")
    configs = {s.name: s.config for s in plan.stages}
    assert configs["ppo"].chat_template == configs["pairs"].chat_template == configs["dpo"].chat_template == "off"
    with pytest.raises(InputError, match="models.chat_template"):
        plan_run({"models": {**models, "chat_template": "yes"}}, tmp_path / "run")
