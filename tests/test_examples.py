"""The `examples/` configs: each validates as written, and its pipeline runs end to end with the
models swapped for tiny random models of the same architecture family (GPT-2, GPT-NeoX, Mistral, Llama;
a chat model's tokenizer gets a chat template),
the reward for a tiny local model of the same kind, and the sizes shrunk.

Checking a config reads no data and loads no model, but the prompts files must exist: the tests
write them into a temporary working directory under the names the examples use.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rewardlab.pipeline import plan_run, run_plan
from tiny_lm import WORDS, word_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# example -> (model family, the stages its plan runs)
CASES = {
    "gpt2-ppo-sentiment.yaml": ("gpt2", ["prompts", "ppo", "diffing", "probes", "sae"]),
    "pythia70m-rlhf.yaml": ("gpt_neox", ["prompts", "ppo", "diffing", "probes", "sae"]),
    "zephyr-dpo.yaml": ("mistral", ["prompts", "diffing", "probes", "sae"]),
    "smollm2-utility.yaml": ("llama", ["prompts", "ppo", "diffing", "probes", "sae", "value"]),
}
CHAT_TEMPLATE = "{% for m in messages %}review : {{ m['content'] }} {% endfor %}"
PROMPTS = [f"{a} {b}" for a in ("the film", "the movie", "review : the plot", "the acting")
           for b in ("was", "is", "is very", "was quite")]
# every example's sections shrunk to seconds (keys the examples set are overridden, others added)
SMALL = {
    "models": {"max_new_tokens": 6, "dtype": "float32", "device": "cpu"},
    "ppo": {"device": "cpu", "threads": 1, "phases": 2, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 1, "eval_samples": 8},
    "diffing": {"n_samples": 12, "n_divergent": 6, "batch_size": 8},
    "probes": {"n_prompts": 13, "samples_per_prompt": 3, "sites": "blocks.1.hook_resid_post,ln_final.hook_out",
               "n_steer_prompts": 3, "steer_alphas": [-1.0, 0.0, 1.0], "n_random": 2, "n_boot": 50, "batch_size": 16},
    "sae": {"n_layers": 1, "n_top_features": 4, "train": {"n_tokens": 2000, "batch_size": 32}},
    "value": {"n_prompts": 10, "samples_per_prompt": 2, "positions": ["last_prompt", 0, 2], "k": 2,
              "sites": "blocks.1.hook_resid_post", "steer_prompts": 2, "n_random": 1, "bon_prompts": 2,
              "bon_ns": [1, 2], "n_boot": 50, "batch_size": 8},
}


def _load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _write_prompts(config: dict, folder: Path) -> None:
    for key in ("prompts", "heldout_prompts"):
        if config["models"].get(key):
            path = folder / config["models"][key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_validates_as_written(name, tmp_path, monkeypatch):
    config = _load(name)
    header = (EXAMPLES / name).read_text().split("\nname:")[0]
    assert f"rewardlab run examples/{name}" in header and "Resources" in header and "Answers" in header
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="models.prompts: file not found"):
        plan_run(config, tmp_path / "run", where=name)
    _write_prompts(config, tmp_path)
    plan = plan_run(config, tmp_path / "run", where=name)
    assert [s.name for s in plan.stages] == CASES[name][1]
    assert plan.models["base"] == config["models"]["base"]


def _tiny_causal_lm(family: str, seed: int):
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig

    ids = dict(vocab_size=len(WORDS), bos_token_id=2, eos_token_id=3, pad_token_id=0)
    configs = {
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **ids),
        "gpt_neox": lambda: GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=64, **ids),
        "mistral": lambda: MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                                         sliding_window=None, **ids),
        "llama": lambda: LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                     intermediate_size=64, max_position_embeddings=64, **ids),
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(configs[family]()).eval()


def _tiny_reward_model(folder: Path, labels: list[str]) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(WORDS), pad_token_id=0, bos_token_id=2,
                     eos_token_id=3, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    with torch.random.fork_rng():
        torch.manual_seed(7)
        GPT2ForSequenceClassification(cfg).eval().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)


def _offline(config: dict, family: str, folder: Path) -> dict:
    """The example with tiny local models, an offline reward of the same kind, and SMALL sizes."""
    models = config["models"]
    tok = word_tokenizer()
    if models.get("chat_template") == "on":
        tok.chat_template = CHAT_TEMPLATE
    for key, seed in (("base", 0), ("post", 1)):
        if models.get(key):
            _tiny_causal_lm(family, seed).save_pretrained(folder / key)
            tok.save_pretrained(folder / key)
            models[key] = str(folder / key)
    kind = models["reward"].split(":")[0]
    if kind == "classifier":  # same label by name as the example
        _tiny_reward_model(folder / "classifier", ["NEGATIVE", models["reward"].rsplit(":", 1)[1]])
        models["reward"] = f"classifier:{folder / 'classifier'}:{models['reward'].rsplit(':', 1)[1]}"
    elif kind == "rm":
        _tiny_reward_model(folder / "rm", ["score"])
        models["reward"] = f"rm:{folder / 'rm'}"
    for section, values in SMALL.items():
        if config.get(section) is not None:
            config[section] = {**config[section], **values}
            if section == "sae":
                config["sae"]["train"] = {**config["sae"].get("train", {}), **values["train"]}
    return config


def _finite(x) -> bool:
    x = x["value"] if isinstance(x, dict) else x
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_pipeline_on_tiny_models(name, tmp_path, monkeypatch, one_thread):
    family, stages = CASES[name]
    config = _offline(_load(name), family, tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    _write_prompts(config, tmp_path)
    results = run_plan(plan_run(config, tmp_path / "run", where=name), log=lambda _: None)

    assert (tmp_path / "run" / "report.html").is_file()
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == json.loads(json.dumps(results))
    if _load(name)["models"].get("heldout_prompts"):  # both files hold PROMPTS
        assert results["prompts"] == {"train": 16, "heldout": 16, "heldout_from": "file"}
    else:
        assert results["prompts"] == {"train": 13, "heldout": 3, "heldout_from": "split"}
    if "ppo" in stages:
        assert _finite(results["ppo"]["reward_policy"]) and _finite(results["ppo"]["kl_exact"])
    policy = "ppo" if "ppo" in stages else "post"
    fit = results["implicit_reward"]["by_policy"][policy]
    assert fit["spearman_true"]["n"] == 12 and _finite(results["implicit_reward"]["spearman_true"])
    divergent = results["divergent"]
    assert divergent["alphas"] == _load(name)["diffing"]["alphas"] and "grammatical_rate" not in divergent
    assert all(_finite(r) for r in divergent["reward_mean"]) and all(_finite(p) for p in divergent["base_perplexity"])
    assert results["params"]["top_layers"] and results["audit"] == {"skipped": results["audit"]["skipped"]}
    probe, steering = results["probe"], results["steering"]
    headline = steering["directions"][steering["direction"]]
    assert _finite(probe["spearman"]) and len(headline["reward_mean"]) == 3
    assert all(_finite(r) for r in headline["reward_mean"]) and _finite(steering["random_max_abs_effect"])
    assert "grammatical_rate" not in headline and all(_finite(p) for p in headline["perplexity"])
    for key in ("fvu", "l0", "mmcs", "mmcs_random"):
        assert _finite(results["sae"][key]), key
    assert {"post_only", "base_only", "shared"} <= set(results["crosscoder"])
    assert ("value_probe" in results) == ("value" in stages)
    assert all((tmp_path / "run" / path).is_file() for path in results["artifacts"].values())
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Not run: the minimal-pair audit needs the review world" in page
    assert "could not read this section's evidence" not in page
